"""The example target of docs/adding-a-target.md, `hf_cast`: an hf_text_only checkpoint cast to
float16 or bfloat16, built end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from modelforge import api
from modelforge.errors import ManifestError, StepFailed
from modelforge.lock import read_lock
from modelforge.safetensors_io import read_header, write_tensors

torch = pytest.importorskip("torch")


def _manifest(project, targets: dict, source: str | None = None):
    manifest = project / "manifests" / "tiny-medgemma-text-only.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["targets"].update(targets)
    if source:
        data["source"]["path"] = source
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return manifest


@pytest.fixture(scope="module")
def cast_build(tmp_path_factory):
    from conftest import copy_project

    project = copy_project(tmp_path_factory.mktemp("cast"))
    manifest = _manifest(project, {
        "text-fp16": {"kind": "hf_cast", "checkpoint": "text", "dtype": "float16"},
        "text-bf16": {"kind": "hf_cast", "checkpoint": "text", "dtype": "bfloat16"},
    })
    return api.build(manifest, store_dir=tmp_path_factory.mktemp("store"))


@pytest.mark.parametrize("target, dtype, safetensors_dtype", [("text-fp16", torch.float16, "F16"), ("text-bf16", torch.bfloat16, "BF16")])
def test_cast_checkpoint_loads_in_its_dtype_and_answers_as_the_float32_one(cast_build, target, dtype, safetensors_dtype):
    from transformers import AutoModelForCausalLM

    out, text = cast_build.out_dir / target, cast_build.out_dir / "text"
    assert sorted(p.name for p in out.iterdir() if p.name != "provenance") == sorted(p.name for p in text.iterdir() if p.name != "provenance")
    for shard in out.glob("*.safetensors"):
        tensors, _ = read_header(shard)
        assert {info.dtype for info in tensors.values()} == {safetensors_dtype}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(info.nbytes for shard in out.glob("*.safetensors") for info in read_header(shard)[0].values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == str(dtype).removeprefix("torch.")
    assert (out / "tokenizer.json").read_bytes() == (text / "tokenizer.json").read_bytes()
    cast = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).eval()
    reference = AutoModelForCausalLM.from_pretrained(text, dtype=torch.float32).eval()
    for name, parameter in reference.state_dict().items():
        assert torch.equal(cast.state_dict()[name], parameter.to(dtype)), name  # round to nearest, as torch casts
    tokens = torch.tensor([[2, 5, 17, 42, 99, 7, 3, 250, 11, 60]])
    with torch.no_grad():
        assert torch.equal(cast.float()(input_ids=tokens).logits.argmax(-1), reference(input_ids=tokens).logits.argmax(-1))


def test_cast_is_byte_identical_in_a_second_store_and_pinned_by_the_lock(cast_build, tmp_path):
    second = api.build(cast_build.project.manifest_path, store_dir=tmp_path / "store")
    for target in ("text-fp16", "text-bf16"):
        for path in sorted((cast_build.out_dir / target).glob("*.*")):
            assert path.read_bytes() == (second.out_dir / target / path.name).read_bytes(), path.name
    locked = read_lock(cast_build.project.lock_path).targets["text-fp16"]
    assert locked.kind == "hf_cast" and locked.files["model-00001-of-00002.safetensors"].sha256


def test_float16_cast_refuses_a_weight_it_would_turn_into_infinity(tmp_project, tmp_path):
    import shutil

    from conftest import TINY

    source = tmp_path / "source"
    shutil.copytree(TINY, source)
    shard = source / "model-00001-of-00002.safetensors"
    tensors, metadata = read_header(shard)
    raw = shard.read_bytes()
    big = next(name for name, info in sorted(tensors.items()) if name.startswith("language_model.") and info.dtype == "F32")
    entries = []
    for name, info in sorted(tensors.items(), key=lambda item: item[1].begin):
        data = raw[info.begin:info.end]
        if name == big:
            data = torch.full(info.shape, 1e5, dtype=torch.float32).numpy().tobytes()
        entries.append((name, info.dtype, info.shape, data))
    write_tensors(shard, entries, metadata)
    manifest = _manifest(tmp_project, {"text-fp16": {"kind": "hf_cast", "checkpoint": "text", "dtype": "float16"}}, str(source))
    with pytest.raises(StepFailed, match=rf"tensor '{big.removeprefix('language_model.')}' holds 100000, above float16's largest value 65504; cast to bfloat16"):
        api.build(manifest, store_dir=tmp_path / "store")


def test_cast_of_a_target_that_is_not_hf_text_only_is_refused_in_one_line(tmp_project):
    manifest = _manifest(tmp_project, {"text-fp16": {"kind": "hf_cast", "checkpoint": "nope", "dtype": "float16"}})
    with pytest.raises(ManifestError, match="targets.text-fp16.checkpoint 'nope' is not an hf_text_only target of this manifest"):
        api.plan(manifest)
