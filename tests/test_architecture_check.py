"""The text-only checkpoint is checked against its own config's architecture before it is published:
each way a manifest or a source can make it not fit (a tensor missing, an extra tensor, a wrong
shape, an unsafe name, a duplicate config key) fails the build naming the tensor or key."""

from __future__ import annotations

import json
import re

import pytest

from modelforge import api
from modelforge.errors import ModelforgeError, PlanError, StepFailed
from modelforge.lock import read_lock

MANIFEST = "tiny-medgemma-text-only.yaml"
RENAME = "  - kind: rename_prefix\n    prefix: language_model.\n    to: \"\"\n"


def _manifest(project, old: str = "", new: str = ""):
    manifest = project / "manifests" / MANIFEST
    text = manifest.read_text()
    if old:
        assert old in text
        manifest.write_text(text.replace(old, new))
    return manifest


def _build(project, tmp_path, manifest):
    return api.build(manifest, store_dir=tmp_path / "store")


def test_a_valid_checkpoint_passes_and_the_lock_records_the_check(tmp_project, tmp_path):
    result = _build(tmp_project, tmp_path, _manifest(tmp_project))
    assert "text.check" in result.ran
    check = read_lock(result.project.lock_path).checks["text.check"]
    assert check == {"architecture": "Gemma3ForCausalLM", "dtype": "F32", "tensors": 28, "tied_absent": ["lm_head.weight"]}
    assert not (result.out_dir / "text" / "architecture.json").exists()  # the report is not part of the target


def test_a_dropped_tensor_fails_the_build_naming_it(tmp_project, tmp_path):
    manifest = _manifest(tmp_project, RENAME, RENAME + "  - kind: drop\n    match: [model.layers.1.mlp.down_proj.weight]\n")
    with pytest.raises(StepFailed, match=r"target text: .*Gemma3ForCausalLM: missing tensors model\.layers\.1\.mlp\.down_proj\.weight;"):
        _build(tmp_project, tmp_path, manifest)
    assert not (tmp_project / "dist").exists()  # nothing was published


def test_a_rename_rule_that_makes_a_wrong_name_fails_naming_both_names(tmp_project, tmp_path):
    rule = "  - kind: rename_regex\n    pattern: 'model\\.layers\\.1\\.mlp\\.up_proj\\.weight'\n    to: model.layers.1.mlp.upproj.weight\n"
    manifest = _manifest(tmp_project, RENAME, RENAME + rule)
    with pytest.raises(
        StepFailed, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight; unexpected tensors model\.layers\.1\.mlp\.upproj\.weight"
    ):
        _build(tmp_project, tmp_path, manifest)


def test_an_extra_source_tensor_carried_into_the_component_fails_naming_it(tmp_project, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    source = tmp_project / "fixtures" / "tiny-medgemma"
    shard = source / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["language_model.model.extra_scale"] = torch.ones(4)
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((source / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.extra_scale"] = shard.name
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(StepFailed, match=r"unexpected tensors model\.extra_scale;"):
        _build(tmp_project, tmp_path, _manifest(tmp_project))


def test_a_config_edit_that_changes_a_shape_fails_naming_the_tensors(tmp_project, tmp_path):
    manifest = _manifest(tmp_project, "      max_position_embeddings: 512\n", "      max_position_embeddings: 512\n      intermediate_size: 96\n")
    with pytest.raises(StepFailed, match=r"wrong shapes model\.layers\.0\.mlp\.down_proj\.weight \[64, 128\] \(expected \[64, 96\]\), .* and \d+ more"):
        _build(tmp_project, tmp_path, manifest)


def test_untying_the_embeddings_without_an_output_head_fails_naming_lm_head(tmp_project, tmp_path):
    manifest = _manifest(tmp_project, "      max_position_embeddings: 512\n", "      max_position_embeddings: 512\n      tie_word_embeddings: false\n")
    with pytest.raises(StepFailed, match=r"missing tensors lm_head\.weight;"):
        _build(tmp_project, tmp_path, manifest)


def test_a_dtype_other_than_the_config_says_fails_naming_the_tensors(tmp_project, tmp_path):
    manifest = _manifest(tmp_project, "      max_position_embeddings: 512\n", "      max_position_embeddings: 512\n      torch_dtype: bfloat16\n")
    with pytest.raises(StepFailed, match=r"wrong dtypes model\.embed_tokens\.weight F32 \(config\.json says bfloat16\)"):
        _build(tmp_project, tmp_path, manifest)


@pytest.mark.parametrize("to", ["../model.norm.weight", "model/../norm.weight", "model..norm.weight", "model.norm weight"])
def test_a_rename_to_an_unsafe_name_is_refused_before_anything_runs(tmp_project, to):
    rule = f"  - kind: rename_regex\n    pattern: 'model\\.norm\\.weight'\n    to: '{to}'\n"
    manifest = _manifest(tmp_project, RENAME, RENAME + rule)
    with pytest.raises(PlanError, match=r"tensor 'language_model\.model\.norm\.weight' becomes " + re.escape(repr(to)) + ", an unsafe name"):
        api.plan(manifest)


def test_an_unsafe_source_tensor_name_is_refused_naming_it(tmp_project):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    source = tmp_project / "fixtures" / "tiny-medgemma"
    shard = source / "model-00002-of-00002.safetensors"
    tensors = load_file(shard)
    tensors["language_model.model.layers.0/../../evil"] = torch.ones(4)
    save_file(tensors, shard, metadata={"format": "pt"})
    index = json.loads((source / "model.safetensors.index.json").read_text())
    index["weight_map"]["language_model.model.layers.0/../../evil"] = shard.name
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelforgeError, match=r"evil"):
        api.plan(_manifest(tmp_project))


def test_a_duplicate_text_config_key_fails_the_build_naming_the_key(tmp_project, tmp_path):
    config = tmp_project / "fixtures" / "tiny-medgemma" / "config.json"
    text = config.read_text()
    first = json.loads(text)["text_config"]
    decoy = json.dumps({**first, "hidden_size": 32})
    # Two `text_config` objects: json.loads would silently keep the second.
    config.write_text(text.replace('"text_config": {', f'"text_config": {decoy}, "text_config": {{', 1))
    with pytest.raises(ModelforgeError, match=r"repeats the key 'text_config'"):
        _build(tmp_project, tmp_path, _manifest(tmp_project))


def test_the_comparison_lets_a_tied_weight_be_absent_only_when_its_partner_is_present():
    from modelforge.safetensors_io import TensorInfo
    from modelforge.steps.checkpoint.check_architecture import compare

    def info(name, shape):
        return TensorInfo(name, "F32", shape, "model.safetensors", 0, 4 * shape[0] * shape[1])

    expected = {"embed.weight": (8, 4), "lm_head.weight": (8, 4)}
    tied = {"lm_head.weight": "embed.weight"}
    assert compare(expected, tied, {"embed.weight": info("embed.weight", (8, 4))}, "float32")["problems"] == []
    assert compare(expected, {}, {"embed.weight": info("embed.weight", (8, 4))}, "float32")["problems"] == ["missing tensors lm_head.weight"]
    assert compare(expected, tied, {"lm_head.weight": info("lm_head.weight", (8, 4))}, None)["problems"] == ["missing tensors embed.weight"]


REFERENCE_TEXT_CONFIGS = {
    # MedGemma 4B's text_config names four fields; every other one is Gemma3TextConfig's default.
    "medgemma-4b": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34, "sliding_window": 1024,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
    "defaults": {},
    "biased-untied": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "attention_bias": True, "tie_word_embeddings": False},
}


@pytest.mark.parametrize("name", ["tiny-medgemma", *REFERENCE_TEXT_CONFIGS])
def test_the_gemma3_layout_written_out_is_transformers_own(name):
    """The state dict check_architecture expects without torch is the one transformers' own
    Gemma3ForCausalLM has, on the meta device, for the tiny fixture's, MedGemma 4B's and odd configs."""
    torch = pytest.importorskip("torch")
    import transformers

    from modelforge.steps.checkpoint.check_architecture import GEMMA3_TEXT_DEFAULTS, _tied, gemma3_text_layout

    if name == "tiny-medgemma":
        from pathlib import Path
        text = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "tiny-medgemma" / "config.json").read_text())["text_config"]
    else:
        text = REFERENCE_TEXT_CONFIGS[name]
    raw = {**text, "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text"}
    config = transformers.Gemma3TextConfig(**{key: value for key, value in text.items() if key != "model_type"})
    assert {key: getattr(config, key) for key in GEMMA3_TEXT_DEFAULTS if key not in text} == {
        key: value for key, value in GEMMA3_TEXT_DEFAULTS.items() if key not in text}
    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(config)
    expected, tied = gemma3_text_layout("text", raw)
    assert expected == {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert tied == _tied(model)


def test_the_text_only_check_never_imports_torch(tmp_project, tmp_path):
    """The text-only build's architecture check reads shapes: it must not take the build process to
    torch's ~450 MB of RSS (issue #26). Run in a fresh interpreter, which has not imported torch."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from modelforge import api\n"
        f"result = api.build({str(_manifest(tmp_project))!r}, store_dir={str(tmp_path / 'store')!r})\n"
        "assert 'text.check' in result.ran, result.ran\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_project, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_an_impossible_size_in_the_config_fails_naming_the_field(tmp_project, tmp_path):
    config = tmp_project / "fixtures" / "tiny-medgemma" / "config.json"
    data = json.loads(config.read_text())
    data["text_config"]["head_dim"] = 0
    config.write_text(json.dumps(data))
    with pytest.raises(ModelforgeError, match=r"head_dim"):
        _build(tmp_project, tmp_path, _manifest(tmp_project))
