"""The onnx target on the tiny model, for real: onnxruntime-genai's model builder with modelforge's
shims, torch.onnx's dynamo exporter, onnxruntime's MatMulNBits quantizer, onnxruntime-genai's
runtime and onnxruntime itself, against PyTorch. No mocks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import TINY, copy_project, session_uses
from modelforge import api
from modelforge.errors import StepFailed

pytestmark = pytest.mark.slow

MANIFEST = "tiny-medgemma-onnx.yaml"
PROMPT = "What are the signs of pneumonia on a chest X-ray?"
STEPS = 16


@pytest.fixture(scope="module")
def onnx_store(request, tmp_path_factory):
    """When the session builds the tiny litertlm manifest anyway (conftest's litertlm_build), its store:
    that manifest's onnx target is this one, step for step (the same keys), so onnx_build below
    only lays it out. Else a store of this module's own."""
    if session_uses(request, "litertlm_build"):
        request.getfixturevalue("litertlm_build")
        return request.getfixturevalue("litertlm_store")
    return tmp_path_factory.mktemp("onnx-store")


@pytest.fixture(scope="module")
def onnx_build(tmp_path_factory, onnx_store):
    """One real build of the tiny onnx manifest (builder, dynamo export, package, parity): ~40 s."""
    project = copy_project(tmp_path_factory.mktemp("onnx-project"))
    return api.build(project / "manifests" / MANIFEST, store_dir=onnx_store)


def _target(result) -> Path:
    return result.out_dir / "onnx"


def _pytorch_greedy(ids: list[int], steps: int, checkpoint: Path = TINY, **images) -> list[int]:
    import torch
    import transformers

    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0, **images)
    return generated[0, len(ids):].tolist()


def _genai_greedy(model, prompt_length: int, feed) -> list[int]:
    """STEPS greedy tokens from onnxruntime-genai, after `feed(generator)` hands it the prompt."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=prompt_length + STEPS, min_length=prompt_length + STEPS)
    generator = og.Generator(model, params)
    feed(generator)
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_target_has_onnxruntime_genai_layout(onnx_build):
    from modelforge.provenance import SIGNATURE_FILES

    files = sorted(path.name for path in _target(onnx_build).iterdir() if path.name not in SIGNATURE_FILES)
    assert files == [
        "chat_template.jinja", "embedding.onnx", "embedding.onnx.data", "genai_config.json", "model.onnx", "model.onnx.data",
        "tokenizer.json", "tokenizer_config.json", "vision.onnx", "vision.onnx.data",
    ]
    config = json.loads((_target(onnx_build) / "genai_config.json").read_text())["model"]
    assert config["type"] == "gemma3" and config["context_length"] == 1024
    assert config["vision"]["filename"] == "vision.onnx" and config["embedding"]["filename"] == "embedding.onnx"
    assert config["image_token_id"] == json.loads((TINY / "config.json").read_text())["image_token_index"]
    # 4 image tokens per image, not the 256 onnxruntime-genai's Gemma 3 pipeline puts in a prompt:
    # no image preprocessing for onnxruntime-genai (test_onnxruntime_genai_generates_..._from_an_image).
    assert "config_filename" not in config["vision"]


def test_onnxruntime_genai_generates_pytorchs_answer_from_a_chat_prompt(onnx_build):
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    model = og.Model(str(_target(onnx_build)))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": PROMPT}]), add_generation_prompt=True)
    ids = [int(token) for token in tokenizer.encode(prompt)]
    reference_ids = AutoTokenizer.from_pretrained(TINY).apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(reference_ids)
    tokens = _genai_greedy(model, len(ids), lambda generator: generator.append_tokens(ids))
    assert tokens == _pytorch_greedy(ids, STEPS)
    assert tokenizer.decode(tokens)


def test_image_prompt_through_onnxruntime_gives_pytorchs_answer(onnx_build, tmp_path):
    """vision.onnx → embedding.onnx → the decoder, driven by hand in onnxruntime, against PyTorch
    attending causally inside the image block as the builder's decoder does (no token_type_ids)."""
    from PIL import Image
    from transformers import AutoProcessor

    from modelforge.steps.onnx.worker import OnnxGemma
    from modelforge.steps.parity_phases import test_cards

    processor = AutoProcessor.from_pretrained(TINY)
    card = test_cards((56, 56), tmp_path)[1]
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}],
                                         add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        inputs = processor(text=text, images=image.convert("RGB"), return_tensors="np", add_special_tokens=False)
    ids = inputs["input_ids"][0].tolist()
    runner = OnnxGemma(_target(onnx_build))
    features = runner.features(inputs["pixel_values"]).reshape(-1, runner.hidden)
    runner.start()
    tokens = [int(runner.step(ids, features).argmax())]
    for _ in range(STEPS - 1):
        tokens.append(int(runner.step([tokens[-1]]).argmax()))
    import torch

    reference = _pytorch_greedy(ids, STEPS, pixel_values=torch.from_numpy(inputs["pixel_values"]))
    assert tokens == reference


GENAI_IMAGE_SIZE = 64  # 16 × 16 patches of 4 pixels, one image token each: the 256 onnxruntime-genai expects


def tiny_with_256_image_tokens(directory: Path) -> Path:
    """The tiny fixture with the image geometry onnxruntime-genai 0.18's Gemma 3 pipeline fixes
    (256 image tokens per image, as every real Gemma 3): 64-pixel images in 4-pixel patches, pooled
    1:1. The two tensors whose shape changes get seeded random values; every other byte of the
    weights is the fixture's."""
    import torch
    from safetensors.torch import load_file, save_file

    directory.mkdir(parents=True)
    weights = {}
    for shard in sorted(TINY.glob("model-*.safetensors")):
        weights.update(load_file(shard))
    config = json.loads((TINY / "config.json").read_text())
    config["mm_tokens_per_image"] = 256
    config["vision_config"].update(image_size=GENAI_IMAGE_SIZE, patch_size=4)
    hidden = config["vision_config"]["hidden_size"]
    generator = torch.Generator().manual_seed(0)
    prefix = "vision_tower.vision_model.embeddings."
    weights[prefix + "patch_embedding.weight"] = torch.randn(hidden, 3, 4, 4, generator=generator) * 0.02
    weights[prefix + "position_embedding.weight"] = torch.randn(256, hidden, generator=generator) * 0.02
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in TINY.iterdir():
        if not path.name.startswith("model") and path.name != "config.json":
            (directory / path.name).write_bytes(path.read_bytes())
    for name in ("preprocessor_config.json", "processor_config.json"):
        settings = json.loads((TINY / name).read_text())
        settings["image_seq_length"] = 256
        if "size" in settings:
            settings["size"] = {"height": GENAI_IMAGE_SIZE, "width": GENAI_IMAGE_SIZE}
        (directory / name).write_text(json.dumps(settings, indent=2) + "\n")
    return directory


@pytest.fixture(scope="module")
def genai_image_build(tmp_path_factory, onnx_store):
    """The onnx target (no parity step, context 512) on the 256-image-token tiny model: ~30 s."""
    project = copy_project(tmp_path_factory.mktemp("genai-image-project"))
    tiny_with_256_image_tokens(project / "fixtures" / "tiny-256")
    text = (project / "manifests" / MANIFEST).read_text()
    text = text[: text.index("    parity:")].replace("../fixtures/tiny-medgemma", "../fixtures/tiny-256")
    path = project / "manifests" / "tiny-256-onnx.yaml"
    path.write_text(text.replace("name: tiny-medgemma-onnx", "name: tiny-256-onnx").replace("context_length: 1024", "context_length: 512"))
    return api.build(path, store_dir=onnx_store)


def test_onnxruntime_genai_generates_pytorchs_answer_from_an_image_and_a_chat_prompt(genai_image_build, tmp_path):
    """onnxruntime-genai's own multimodal pipeline (MultiModalProcessor: chat template, image
    decode, resize, normalize, prompt expansion; then vision.onnx → embedding.onnx → decoder)
    against transformers' processor and PyTorch. The card is not the model's size, so the resize
    (PIL bilinear in transformers, its port in onnxruntime-extensions) is compared too. PyTorch
    attends causally inside the image block, as the builder's decoder does (no token_type_ids)."""
    import numpy as np
    import onnxruntime_genai as og
    import torch
    from PIL import Image
    from transformers import AutoProcessor

    from modelforge.steps.parity_phases import test_cards

    target = _target(genai_image_build)
    assert json.loads((target / "genai_config.json").read_text())["model"]["vision"]["config_filename"] == "processor_config.json"
    checkpoint = genai_image_build.project.root / "fixtures" / "tiny-256"
    card = test_cards((97, 131), tmp_path)[1]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image."}]}]
    model = og.Model(str(target))
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    inputs = model.create_multimodal_processor()(prompt, images=og.Images.open(str(card)))

    processor = AutoProcessor.from_pretrained(checkpoint)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == text
    with Image.open(card) as image:
        reference = processor(text=text, images=image.convert("RGB"), return_tensors="np", add_special_tokens=False)
    ids = inputs["input_ids"].as_numpy()[0].tolist()
    assert ids == reference["input_ids"][0].tolist() and ids.count(json.loads((checkpoint / "config.json").read_text())["image_token_index"]) == 256
    assert np.abs(inputs["pixel_values"].as_numpy() - reference["pixel_values"]).max() < 1e-6

    tokens = _genai_greedy(model, len(ids), lambda generator: generator.set_inputs(inputs))
    assert tokens == _pytorch_greedy(ids, STEPS, checkpoint=checkpoint, pixel_values=torch.from_numpy(reference["pixel_values"]))


def test_a_second_build_in_an_empty_store_is_byte_identical(onnx_build, tmp_path, request):
    project = copy_project(tmp_path / "again")
    store = tmp_path / "empty-store"
    if session_uses(request, "litertlm_second_build"):
        # That second build of the litertlm manifest ran this target's steps in a store that was
        # empty (its onnx target has these keys): this build lays them out and writes the lock.
        request.getfixturevalue("litertlm_second_build")
        store = request.getfixturevalue("litertlm_second_store")
    second = api.build(project / "manifests" / MANIFEST, store_dir=store)
    from modelforge.provenance import SIGNATURE_FILES  # the signed provenance carries the build's times

    first_files = {path.name: path.read_bytes() for path in _target(onnx_build).iterdir() if path.name not in SIGNATURE_FILES}
    assert {path.name: path.read_bytes() for path in _target(second).iterdir() if path.name not in SIGNATURE_FILES} == first_files
    assert second.project.lock_path.read_bytes() == onnx_build.project.lock_path.read_bytes()
    # No absolute path of this checkout or virtualenv (torch.onnx's stack traces) in a graph.
    assert not any(b"/site-packages/" in data or b"modelforge/steps" in data for data in first_files.values())


def test_decoder_is_stamped_with_the_wheels_commit_not_the_enclosing_repository(onnx_build):
    """The builder stamps `git rev-parse HEAD` of the directory five levels above itself: in a
    virtualenv inside a checkout, that checkout's commit (genai_builder's wheel_commit shim)."""
    import onnx
    import onnxruntime_genai

    decoder = onnx.load(str(_target(onnx_build) / "model.onnx"), load_external_data=False)
    assert decoder.producer_version == f"{onnxruntime_genai.__version__}+{onnxruntime_genai.__commit__[:7]}"


def test_lock_records_the_toolchain_steps_and_parity(onnx_build):
    from modelforge.lock import read_lock

    lock = read_lock(onnx_build.project.lock_path)
    for tool in ("onnxruntime-genai", "onnxruntime", "onnx", "onnxscript", "torch", "transformers"):
        assert lock.toolchain[tool] not in ("", "absent"), tool
    assert {"onnx.export_text", "onnx.export_vision", "onnx.package", "onnx.parity", "reference"} == set(lock.steps)
    parity = lock.checks["onnx.parity"]
    assert parity["passed"] and parity["top1_agreement"] == 1.0 and parity["greedy_identical_steps"] == [24, 24]
    assert parity["max_abs_logit"] <= 1e-3 and parity["vision_cosine"] >= 0.9999  # bounds: figures.py
    rope = lock.checks["onnx.export_text"]["rope_check"]
    assert rope["positions"] == 1024 and set(rope["max_abs"]) == {"cos_cache_global", "sin_cache_global", "cos_cache_local", "sin_cache_local"}


def test_rope_check_catches_the_builders_local_rope_bug(tmp_path):
    """Without the shim, onnxruntime-genai 0.18.0 builds the sliding layers' RoPE with the global
    layers' linear factor 8: the check must refuse it (and accept the shimmed build)."""
    from modelforge.steps.onnx import genai_builder

    with pytest.raises(genai_builder.RopeMismatch, match=r"differ from transformers' \(cos_cache_local \(max \|Δ\| 1\.9\d\), sin_cache_local \(max \|Δ\| 1\.9\d\), tolerance"):
        genai_builder.build(TINY, tmp_path / "bug", tmp_path / "cache", precision="fp32", block_size=32, context_length=64,
                            exclude_embeds=False, fix_local_rope=False)
    report = genai_builder.build(TINY, tmp_path / "fixed", tmp_path / "cache", precision="fp32", block_size=32, context_length=64,
                                 exclude_embeds=False)
    assert report["rope_check"]["positions"] == 64 and max(report["rope_check"]["max_abs"].values()) <= genai_builder.TOLERANCE


def _bf16_text_checkpoint(directory: Path) -> Path:
    """A 2-layer Gemma3ForCausalLM in bfloat16, random weights (seed 0) with RMSNorm weights of
    ~0.1 (Gemma's init is zeros: 1 + 0 is exact in bf16) and hidden 72 (√72 = 8.485…, which the
    builder rounds to 8.49); tokenizer files from the tiny fixture."""
    import shutil

    import torch
    import transformers

    from modelforge.testing.gemma3_checkpoint import _FIXTURE_FILES

    config = transformers.Gemma3TextConfig(
        vocab_size=1024, hidden_size=72, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=32, query_pre_attn_scalar=32, sliding_window=32, layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=1024, initializer_range=0.1, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    config.architectures = ["Gemma3ForCausalLM"]
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.normal_(0.0, 0.1)
    model.to(torch.bfloat16).save_pretrained(directory)
    for name in _FIXTURE_FILES:
        shutil.copyfile(TINY / name, directory / name)
    return directory


def test_builder_graph_of_a_bf16_checkpoint_computes_pytorchs_float32_logits(tmp_path):
    """The builder adds Gemma's RMSNorm offset in the checkpoint's bf16 and rounds the embedding scale
    to 2 decimals; with genai_builder's float32_gains shim the fp32 graph holds transformers' float32
    gains (1 + fp32(w)) and scale (√hidden) exactly, and its logits are PyTorch's float32 ones.
    Measured: max |Δlogit| 1.2e-6 with the shim, 1.0e-2 without (the builder's own graph)."""
    import numpy as np
    import onnx
    import torch
    import transformers
    from onnx import numpy_helper
    from safetensors.torch import load_file

    from modelforge.steps.onnx import genai_builder
    from modelforge.steps.onnx.worker import OnnxGemma

    checkpoint = _bf16_text_checkpoint(tmp_path / "bf16")
    model = transformers.Gemma3ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    ids = [2, 105, 236, 107, 368, 563, 506, 11, 106, 107]
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0, -1].double().numpy()
    weights = load_file(str(checkpoint / "model.safetensors"))
    expected_gains = {name: (weight.float() + 1).numpy() for name, weight in weights.items() if name.endswith("norm.weight")}

    def built(fix_gains: bool):
        out = tmp_path / ("fixed" if fix_gains else "builder")
        arguments = dict(precision="fp32", block_size=32, context_length=64, exclude_embeds=False, fix_gains=fix_gains)
        if fix_gains:
            report = genai_builder.build(checkpoint, out, tmp_path / "cache", **arguments)
            assert report["gain_check"] == {"gains": 13, "max_abs": 0.0}
        else:  # the build-time check refuses the builder's own gains; the graph it wrote is measured below
            with pytest.raises(genai_builder.GainMismatch, match=r"model\.layers\.0\.attn\.k_norm\.layernorm\.weight \(max \|Δ\| "):
                genai_builder.build(checkpoint, out, tmp_path / "cache", **arguments)
        runner = OnnxGemma(out)
        runner.start()
        delta = float(np.abs(runner.step(ids) - reference).max())
        graph = onnx.load(str(out / "model.onnx"))
        gains = {item.name: numpy_helper.to_array(item) for item in graph.graph.initializer if "norm" in item.name}
        scales = [numpy_helper.to_array(node.attribute[0].t) for node in graph.graph.node
                  if node.op_type == "Constant" and node.output[0].startswith("/model/constants/FLOAT/")
                  and any("embed_tokens/Mul" in other.name and node.output[0] in other.input for other in graph.graph.node)]
        return delta, gains, scales

    delta, gains, scales = built(fix_gains=True)
    names = {name: "model.norm.weight" if "final_norm" in name else name.replace(".attn.", ".self_attn.").replace(".layernorm.weight", ".weight")
             for name in gains}
    assert len(gains) == 13 and set(names.values()) == set(expected_gains)
    for name, gain in gains.items():
        assert gain.dtype == np.float32 and np.array_equal(gain, expected_gains[names[name]]), name
    assert scales == [np.float32(72**0.5)]
    assert delta < 1e-5
    unshimmed, _, old_scales = built(fix_gains=False)
    assert old_scales == [np.float32(8.49)] and unshimmed > 1e-3  # what the shim fixes: the builder's own graph


def _variant(tmp_path: Path, precision: str, thresholds: str) -> Path:
    project = copy_project(tmp_path)
    text = (project / "manifests" / MANIFEST).read_text()
    text = text.replace("    context_length: 1024\n", "    context_length: 1024\n    precision:\n"
                        f"      text_decoder: {{precision: {precision}}}\n"
                        f"      vision_encoder: {{precision: {precision}, block_size: 32}}\n"
                        f"      projector: {{precision: {precision}, block_size: 32}}\n")
    text = re.sub(r"      max_abs_logit: .*\n      min_top1_agreement: .*\n      min_vision_cosine: .*\n", thresholds, text)
    path = project / "manifests" / f"tiny-{precision}.yaml"
    path.write_text(text.replace("name: tiny-medgemma-onnx", f"name: tiny-{precision}"))
    return path


QUANTIZED = "      min_top1_agreement: 0.75\n      max_kl: 0.1\n      min_vision_cosine: 0.98\n"


def test_int8_passes_the_quantized_gate_and_is_recorded(tmp_path, onnx_store):
    """Measured on the tiny model's random weights: int8 top-1 0.94, KL 0.009; vision cosine 1.0."""
    import onnx

    result = api.build(_variant(tmp_path, "int8", QUANTIZED), store_dir=onnx_store)
    graph = onnx.load(str(_target(result) / "vision.onnx"), load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in graph.graph.node)
    decoder = onnx.load(str(_target(result) / "model.onnx"), load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in decoder.graph.node)
    from modelforge.lock import read_lock

    parity = read_lock(result.project.lock_path).checks["onnx.parity"]
    assert parity["passed"] and 0.75 <= parity["top1_agreement"] < 1.0


def test_int4_fails_the_quantized_gate(tmp_path, onnx_store):
    """int4 on the tiny model's random weights (decoder and, since onnx.quantize.embedding, its
    embedding): top-1 0.29, KL 1.9: below the int8 gate."""
    with pytest.raises(StepFailed, match=r"parity check failed: top1_agreement = 0\.29.*mean_kl = 1\.9"):
        api.build(_variant(tmp_path, "int4", QUANTIZED), store_dir=onnx_store)


@pytest.fixture(scope="module")
def int4_decoders(tmp_path_factory):
    """The tiny decoder in int4 (blocks of 32) built twice, by the builder's own to_nbits and by the
    streamed one, with the initializer bytes of the ModelProto each handed onnxruntime's quantizer
    (recorded on the way through, the quantizer itself unchanged): ~10 s."""
    import sys

    from modelforge.steps.onnx import genai_builder

    genai_builder._builder_modules()  # imports the builder's modules as it does (builders.base)
    base = sys.modules["builders.base"]
    original = base.MatMulNBitsQuantizer
    handed: list[int] = []

    class Recorded(original):
        def __init__(self, model, *args, **kwargs):
            handed.append(sum(len(item.raw_data) for item in model.graph.initializer))
            super().__init__(model, *args, **kwargs)

    root = tmp_path_factory.mktemp("int4-decoders")
    built = {}
    base.MatMulNBitsQuantizer = Recorded
    try:
        for streamed in (False, True):
            out = root / ("streamed" if streamed else "builder")
            genai_builder.build(TINY, out, root / "cache", precision="int4", block_size=32, context_length=64,
                                exclude_embeds=True, stream_weights=streamed)
            built[streamed] = (out, handed.pop())
    finally:
        base.MatMulNBitsQuantizer = original
    return built


def test_streamed_int4_quantization_writes_the_builders_bytes_without_its_float_graph(int4_decoders):
    """The builder serializes every float32 MatMul weight at once before quantizing (21.2 GiB at
    MedGemma 4B); the streamed quantizer is handed each weight only when it quantizes it, and
    writes the same bytes."""
    import onnx

    (builder_out, builder_handed), (streamed_out, streamed_handed) = int4_decoders[False], int4_decoders[True]
    for name in ("model.onnx", "model.onnx.data", "genai_config.json"):
        assert (streamed_out / name).read_bytes() == (builder_out / name).read_bytes(), name
    graph = onnx.load(str(streamed_out / "model.onnx"), load_external_data=False).graph
    quantized = [node for node in graph.node if node.op_type == "MatMulNBits"]
    float_weights = sum(4 * {a.name: a.i for a in node.attribute}["K"] * {a.name: a.i for a in node.attribute}["N"] for node in quantized)
    assert len(quantized) == 2 * 5 + 1  # qkv, o, gate, up, down in each of 2 layers; the output head
    others = sum(int({entry.key: entry.value for entry in item.external_data}["length"]) for item in graph.initializer
                 if not item.name.endswith(("_Q4", "_scales")))
    assert builder_handed == float_weights + others
    assert streamed_handed == others  # the norms and the RoPE caches; no MatMul weight


def test_rope_check_reads_only_the_caches_of_the_data_file(int4_decoders, tmp_path):
    """The check reads the four cos/sin caches, not the whole decoder (2.7 GB at 4B): it passes on a
    data file cut short after the last cache."""
    import shutil

    import onnx

    from modelforge.steps.onnx import genai_builder

    out = tmp_path / "decoder"
    shutil.copytree(int4_decoders[True][0], out)
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    spans = {item.name: {entry.key: int(entry.value) for entry in item.external_data if entry.key in ("offset", "length")} for item in graph.initializer}
    end = max(spans[name]["offset"] + spans[name]["length"] for name in genai_builder.CACHES)
    data = out / "model.onnx.data"
    assert end < data.stat().st_size
    with open(data, "r+b") as handle:
        handle.truncate(end)
    report = genai_builder.check_rope_caches(out / "model.onnx", TINY)
    assert set(report["rope_check"]["max_abs"]) == set(genai_builder.CACHES)
    assert max(report["rope_check"]["max_abs"].values()) <= genai_builder.TOLERANCE


@pytest.fixture(scope="module")
def int4_build(tmp_path_factory, onnx_store):
    """The tiny onnx target in int4 (text in blocks of 32, vision and projector int8), no parity step
    (int4 on random weights fails the gate, above): ~40 s."""
    project = copy_project(tmp_path_factory.mktemp("int4-project"))
    text = (project / "manifests" / MANIFEST).read_text()
    text = text[: text.index("    parity:")].replace("    context_length: 1024\n", "    context_length: 1024\n    precision:\n"
                                                     "      text_decoder: {precision: int4, block_size: 32}\n"
                                                     "      vision_encoder: {precision: int8, block_size: 32}\n"
                                                     "      projector: {precision: int8, block_size: 32}\n")
    path = project / "manifests" / "tiny-int4-onnx.yaml"
    path.write_text(text.replace("name: tiny-medgemma-onnx", "name: tiny-int4-onnx"))
    return api.build(path, store_dir=onnx_store)


def _int4_rows(packed, scales, block: int):
    """Rows of an int4 table as MatMulNBits and GatherBlockQuantized read it: two values a byte, low
    nibble first, symmetric around 8, one float32 scale per block."""
    import numpy as np

    low, high = packed & 0x0F, packed >> 4
    values = np.stack([low, high], axis=-1).reshape(packed.shape[0], -1).astype(np.float32) - 8
    return (values.reshape(packed.shape[0], -1, block) * scales.reshape(packed.shape[0], -1, 1)).reshape(packed.shape[0], -1)


def test_int4_embedding_is_the_decoders_tied_head_gathered(int4_build):
    """With an int4 text decoder, embedding.onnx gathers the token table in int4 blocks
    (GatherBlockQuantized), quantized as the decoder's tied output head is: byte for byte the same
    table and scales, so a token goes in as the row the head scores it by. Image features pass
    through untouched. At 4B this is 0.42 GB instead of 2.69 GB, and the only form onnxruntime-web
    loads (docs/evidence/ortweb_4b)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    target = _target(int4_build)
    graph = onnx.load(str(target / "embedding.onnx"))
    ops = [node.op_type for node in graph.graph.node]
    assert "GatherBlockQuantized" in ops and "Gather" not in ops
    tables = {item.name: numpy_helper.to_array(item) for item in graph.graph.initializer}
    packed = next(v for k, v in tables.items() if k.endswith("_Q4"))
    scales = next(v for k, v in tables.items() if k.endswith("_scales"))
    decoder = onnx.load(str(target / "model.onnx"))
    head = next(node for node in decoder.graph.node if node.op_type == "MatMulNBits" and "lm_head" in node.name)
    weights = {item.name: item for item in decoder.graph.initializer}
    head_packed = numpy_helper.to_array(weights[head.input[1]])
    head_scales = numpy_helper.to_array(weights[head.input[2]])
    assert np.array_equal(head_packed.reshape(packed.shape), packed)
    assert np.array_equal(head_scales.reshape(scales.shape), scales)

    config = json.loads((TINY / "config.json").read_text())
    hidden = config["text_config"]["hidden_size"]
    image = config["image_token_index"]
    ids = np.array([[2, 17, image, image, 300, 5]], np.int64)
    features = np.random.default_rng(0).standard_normal((2, hidden)).astype(np.float32)
    session = ort.InferenceSession(str(target / "embedding.onnx"), providers=["CPUExecutionProvider"])
    embeds = session.run(None, {"input_ids": ids, "image_features": features})[0][0]
    rows = _int4_rows(packed, scales, 32)
    text = [0, 1, 4, 5]
    np.testing.assert_allclose(embeds[text], rows[ids[0, text]] * np.float32(hidden ** 0.5), rtol=1e-6, atol=1e-6)
    assert np.array_equal(embeds[2:4], features)


def test_vision_attention_in_head_groups_is_siglips_attention(tmp_path):
    """vision.onnx computes the vision tower's attention a group of heads at a time, so that no tensor
    is above WebGPU's default binding size (MedGemma: 8 groups of 2 heads, 128 MiB of scores instead of
    1 GiB). Exported one head at a time, the tiny model's vision graph has a softmax per head and still
    gives PyTorch's (eager, all heads at once) image features."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    import transformers

    from modelforge.reference import reference_dir
    from modelforge.steps.onnx import worker as onnx_worker
    from modelforge.targets.onnx import vision_attention

    medgemma = vision_attention(json.loads((reference_dir() / "mlx-community_gemma-3-4b-it-bf16-config.json").read_text()))
    assert medgemma == {"heads_per_group": 2, "bytes": 128 * 2**20, "heads": 16}
    config = json.loads((TINY / "config.json").read_text())
    assert vision_attention(config)["heads_per_group"] == 2  # the tiny model's 2 heads fit in one group

    onnx_worker.export_vision(TINY, tmp_path, heads_per_group=1)
    graph = onnx.load(tmp_path / "graphs" / "vision.onnx", load_external_data=False)
    softmaxes = sum(node.op_type == "Softmax" for node in graph.graph.node)
    assert softmaxes == config["vision_config"]["num_hidden_layers"] * config["vision_config"]["num_attention_heads"]

    size = config["vision_config"]["image_size"]
    pixels = np.random.default_rng(0).uniform(-1, 1, (1, 3, size, size)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "graphs" / "vision.onnx"), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"pixel_values": pixels})
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32).eval()
    model.model.vision_tower.set_attn_implementation("eager")
    with torch.no_grad():
        expected = model.model.get_image_features(pixel_values=torch.from_numpy(pixels))
    expected = getattr(expected, "pooler_output", expected).reshape(features.shape).numpy()
    assert np.abs(features - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
