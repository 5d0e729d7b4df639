"""The litertlm target on the tiny model, for real: litert-torch export, ai-edge-quantizer,
litert-lm-builder packaging, the LiteRT-LM runtime and the parity check. No mocks."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from conftest import MANIFEST_LITERTLM as MANIFEST
from modelforge import api
from modelforge.errors import ManifestError, PlanError, StepFailed

pytestmark = pytest.mark.slow


def _bundle(result) -> Path:
    return result.out_dir / "bundle" / "tiny-medgemma.litertlm"


def test_bundle_has_the_sections_the_manifest_promised(litertlm_build):
    import litert_lm_builder

    text = io.StringIO()
    litert_lm_builder.peek_litertlm_file(str(_bundle(litertlm_build)), None, text)
    listing = text.getvalue()
    for section in ("LlmMetadata", "HF_Tokenizer", "prefill_decode", "embedder", "vision_encoder", "vision_adapter"):
        assert section.lower() in listing.lower(), section
    assert 'token_str: "<end_of_turn>"' in listing and 'token_str: "<eos>"' in listing
    assert 'start_token' in listing and "max_num_tokens: 256" in listing
    assert "image_tensor_height: 56" in listing


def test_runtime_generates_from_a_chat_prompt_and_from_an_image(litertlm_build, tmp_path):
    import litert_lm
    import numpy as np
    from PIL import Image

    bundle = tmp_path / "model.litertlm"
    shutil.copyfile(_bundle(litertlm_build), bundle)
    engine = litert_lm.Engine(
        str(bundle), backend=litert_lm.Backend.CPU(thread_count=1), vision_backend=litert_lm.Backend.CPU(),
        max_num_images=1, cache_dir=":nocache",
    )
    conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=12)
    reply = str(conversation.send_message("What are the symptoms of pneumonia?"))
    assert reply.strip()
    image = tmp_path / "xray.png"
    pixels = (np.indices((56, 56)).sum(axis=0) % 32 * 8).astype("uint8")
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(image)
    conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=12)
    reply = conversation.send_message({"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": "Describe the findings."}]})
    assert str(reply).strip()


def test_two_builds_in_two_empty_stores_give_a_byte_identical_bundle(litertlm_build, litertlm_second_build):
    second = litertlm_second_build
    assert _bundle(second).read_bytes() == _bundle(litertlm_build).read_bytes()
    assert second.project.lock_path.read_bytes() == litertlm_build.project.lock_path.read_bytes()


def test_source_date_epoch_is_honoured_and_keyed(litertlm_build, litertlm_store, monkeypatch):
    manifest = litertlm_build.project.manifest_path
    before = {s.name: s.key for s in api.plan(manifest, store_dir=litertlm_store).statuses}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    after = {s.name: (s.key, s.cached) for s in api.plan(manifest, store_dir=litertlm_store).statuses}
    assert after["bundle.package"][0] != before["bundle.package"] and not after["bundle.package"][1]
    assert after["bundle.export_text"] == (before["bundle.export_text"], True)


def test_lock_records_toolchain_stage_outputs_and_parity(litertlm_build):
    from modelforge.lock import read_lock

    lock = read_lock(litertlm_build.project.lock_path)
    for tool in ("litert-torch", "ai-edge-quantizer", "litert-lm-builder", "ai-edge-litert", "torch", "transformers"):
        assert lock.toolchain[tool] not in ("", "absent"), tool
    assert {"bundle.export_text", "bundle.export_vision", "bundle.quantize.text_decoder", "bundle.package"} <= set(lock.steps)
    assert set(lock.targets["bundle"].files) == {"tiny-medgemma.litertlm"}
    parity = lock.checks["bundle.parity"]
    assert parity["passed"] is True
    assert parity["top1_agreement"] >= 0.75 and parity["vision_cosine"] >= 0.99
    # The gate has margin: the measured figures sit well clear of the thresholds (see the manifest).
    assert parity["steps"] == 8 * 24
    assert parity["top1_agreement"] - parity["thresholds"]["min_top1_agreement"] >= 0.08
    assert parity["mean_kl"] <= parity["thresholds"]["max_kl"] / 2
    # Images went through the LiteRT-LM runtime, on the bundle as shipped.
    assert parity["image_prompts"] == 2 and parity["image_token_agreement"] >= 0.1
    assert parity["thresholds"]["min_image_token_agreement"] == 0.1


def test_the_lock_records_the_parity_of_each_litertjs_web_variant(litertlm_build):
    """The browser variants' own graphs, checked in the interpreter under the bundle's thresholds:
    the float one reproduces PyTorch's greedy tokens at every step, the int8 one ships the bundle's
    int8 text graphs (so their text figures agree) with float vision."""
    from modelforge.lock import read_lock

    checks = read_lock(litertlm_build.project.lock_path).checks
    bundle = checks["bundle.parity"]
    float_web, int8_web = checks["web.parity.tiny-float"], checks["web.parity.tiny-int8-images"]
    assert float_web["passed"] and int8_web["passed"]
    assert float_web["top1_agreement"] == 1.0 and float_web["greedy_identical_steps"] == [24] * 8
    assert float_web["max_abs_logit"] <= 1e-3 and float_web["vision_cosine"] >= 0.9999  # bounds: figures.py
    assert {key: int8_web[key] for key in ("top1_agreement", "mean_kl", "max_abs_logit")} == {key: bundle[key] for key in ("top1_agreement", "mean_kl", "max_abs_logit")}
    assert "image_token_agreement" not in float_web and "min_image_token_agreement" not in float_web["thresholds"]


def test_hoists_put_the_modules_where_the_manifest_says(litertlm_build, litertlm_store):
    import json

    from modelforge.plan import compute_keys
    from modelforge.store import Store

    report = api.plan(litertlm_build.project.manifest_path, store_dir=litertlm_store)
    keys = compute_keys(report.plan, report.toolchain)
    store = Store(litertlm_store)
    record = store.get_record(keys["bundle.export_vision"]["key"])
    hoists = json.loads(store.object_path(record.outputs["export_report.json"].sha256).read_text())["hoists"]
    assert hoists["vision_tower"] == {"path": "model.vision_tower", "to": "vision_tower", "class": "SiglipVisionModel", "same_object": True}
    assert hoists["multi_modal_projector"]["class"] == "Gemma3MultiModalProjector"


def test_changing_the_vision_recipe_reruns_only_vision_quantization_packaging_and_parity(litertlm_build, litertlm_store):
    manifest = litertlm_build.project.manifest_path
    text = manifest.read_text()
    manifest.write_text(text.replace("vision_encoder: {recipe: weight_only_wi8_afp32}", "vision_encoder: {recipe: dynamic_wi8_afp32}"))
    try:
        statuses = {s.name: s for s in api.plan(manifest, store_dir=litertlm_store).statuses}
    finally:
        manifest.write_text(text)
    rerun = sorted(name for name, status in statuses.items() if not status.cached)
    assert rerun == ["bundle.package", "bundle.parity", "bundle.quantize.vision_encoder"]
    assert statuses["bundle.quantize.vision_encoder"].reason == "parameters changed"


@pytest.fixture(scope="module")
def float_build(litertlm_build, litertlm_store):
    """The tiny manifest without quantization, with float-tight thresholds: image answers through
    the runtime must be identical to PyTorch's (min_image_token_agreement 1.0)."""
    import re

    manifest = litertlm_build.project.manifest_path.with_name("tiny-float.yaml")
    text = litertlm_build.project.manifest_path.read_text().replace("name: tiny-medgemma-litertlm", "name: tiny-float")
    text = text.split("\n  web:\n")[0] + "\n"  # the web runtime takes no float graphs
    text = re.sub(r"    quantization:\n(      .*\n)+?    metadata:", "    metadata:", text)
    text = text.replace("      min_top1_agreement: 0.75\n      max_kl: 0.1\n", "      max_abs_logit: 0.001\n      min_top1_agreement: 1.0\n")
    text = text.replace("min_image_token_agreement: 0.1", "min_image_token_agreement: 1.0")
    manifest.write_text(text)
    return api.build(manifest, store_dir=litertlm_store)


def test_float_export_matches_pytorch_and_greedy_tokens_agree(float_build):
    assert "bundle.export_text" not in float_build.ran  # the float graphs are the ones the int8 build already traced
    from modelforge.lock import read_lock

    parity = read_lock(float_build.project.lock_path).checks["bundle.parity"]
    assert parity["max_abs_logit"] <= 1e-3  # the lock records bounds (figures.py): at most 1e-3, at least 0.9999
    assert parity["greedy_identical_steps"] == [24] * 8
    assert parity["vision_cosine"] >= 0.9999
    # Through the LiteRT-LM runtime, on two generated images: PyTorch's greedy answer, every token.
    assert parity["image_identical_tokens"] == parity["image_tokens"] == [24, 24]
    assert parity["image_token_agreement"] == 1.0


def _test_card(path: Path, size: int = 56) -> Path:
    """An RGB PNG of exactly the processor's size (no resize on either side), different per channel."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * 9 + y * 4) % 256, (y * 13 + x * x) % 256, ((x // 3 + y // 6) % 2) * 180 + 40], axis=-1)
    Image.fromarray(pixels.astype("uint8"), mode="RGB").save(path)
    return path


def _runtime_image_answer(bundle: Path, image: Path, prompt: str, steps: int) -> str:
    import litert_lm

    engine = litert_lm.Engine(
        str(bundle), backend=litert_lm.Backend.CPU(thread_count=1), vision_backend=litert_lm.Backend.CPU(),
        max_num_images=1, cache_dir=":nocache",
    )
    conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=steps)
    reply = str(conversation.send_message({"role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": prompt}]}))
    conversation.close()
    engine.close()
    return reply


def _pytorch_image_answer(checkpoint: Path, image: Path, prompt: str, steps: int, pixels: str = "processor") -> str:
    """transformers' Gemma3ForConditionalGeneration, greedy, on the processor's own input_ids and
    pixel_values (from the checkpoint's preprocessor_config.json), attending causally as the
    runtime does; pixels='unit' feeds raw [0, 1] pixels instead (what the runtime hands the graph)."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(image) as picture:
        rgb = picture.convert("RGB")
        inputs = processor(text=text, images=rgb, return_tensors="pt", add_special_tokens=False)
        unit = torch.tensor(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    stops = [processor.tokenizer.convert_tokens_to_ids(token) for token in ("<eos>", "<end_of_turn>")]
    with torch.no_grad():
        generated = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            pixel_values=inputs["pixel_values"] if pixels == "processor" else unit,
            max_new_tokens=steps, do_sample=False, eos_token_id=stops,
        )
    tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
    tokens = tokens[: next((index for index, token in enumerate(tokens) if token in stops), len(tokens))]
    return processor.tokenizer.decode(tokens)


def test_runtime_image_answer_equals_pytorch_with_the_processors_preprocessing(float_build, tmp_path):
    from conftest import TINY

    image = _test_card(tmp_path / "card.png")
    prompt = "Describe the findings."
    runtime = _runtime_image_answer(_bundle(float_build), image, prompt, 24)
    assert runtime == _pytorch_image_answer(TINY, image, prompt, 24)
    # The answer depends on the normalization: [0, 1] pixels (the unfolded bundle's input) answer otherwise.
    assert runtime != _pytorch_image_answer(TINY, image, prompt, 24, pixels="unit")


def test_parity_catches_a_bundle_whose_vision_graph_expects_normalized_pixels(float_build, tmp_path):
    """The old behaviour: the vision graph exported as the source model is (expecting [-1, 1]
    pixels), packed in an otherwise identical float bundle. The runtime feeds it [0, 1]; the parity
    check must see the answers and embeddings differ from PyTorch's."""
    import litert_lm_builder

    from conftest import TINY
    from modelforge.steps.litert.parity import phases_for
    from modelforge.steps.litert.worker import MODULE
    from modelforge.steps.parity import run_phases
    from modelforge.steps.reference.worker import MODULE as REFERENCE
    from modelforge.steps.workers import launch

    progress = lambda done, total, message: None  # noqa: E731
    export = launch({
        "action": "export", "checkpoint": str(TINY), "work_dir": str(tmp_path), "part": "vision", "task": "image_text_to_text",
        "prefill_lengths": [32, 128], "cache_length": 256, "hoists": [], "image_input": None,
    }, tmp_path / "scratch-export", progress, "export vision", MODULE)
    assert "image_input" not in export
    unpacked = tmp_path / "unpacked"
    litert_lm_builder.unpack(str(_bundle(float_build)), str(unpacked))
    models = tmp_path / "models"
    models.mkdir()
    for section, name in (("prefill_decode", "model.tflite"), ("embedder", "embedder.tflite")):
        shutil.copyfile(next(unpacked.glob(f"*_tf_lite_{section}.tflite")), models / name)
    for name in ("vision_encoder.tflite", "vision_adapter.tflite"):
        shutil.copyfile(export["files"][name], models / name)
        shutil.copyfile(export["files"][name], next(unpacked.glob(f"*_tf_lite_{name.removesuffix('.tflite')}.tflite")))
    bundle = tmp_path / "unfolded.litertlm"
    litert_lm_builder.pack(str(unpacked / "model.toml"), str(bundle))
    # The parity_reference step's job, its files where the parity phases read them (scratch_dir).
    reference = launch({
        "action": "reference", "checkpoint": str(TINY), "work_dir": str(tmp_path), "prompts": ["Describe the findings."], "steps": 24,
        "multimodal": True, "answers": {"stop_tokens": ["<eos>", "<end_of_turn>"]},
    }, tmp_path / "scratch-reference", progress, "reference", REFERENCE)
    handoff = json.loads(Path(reference["files"]["reference.json"]).read_text())
    handoff["cards"] = sorted(path for name, path in reference["files"].items() if name.endswith(".png"))
    report, _ = run_phases({
        "action": "parity", "checkpoint": str(TINY), "models_dir": str(models), "prompts": ["Describe the findings."], "steps": 24,
        "stop_tokens": ["<eos>", "<end_of_turn>"], "bundle": str(bundle), "scratch_dir": str(tmp_path), **handoff,
    }, phases_for(multimodal=True, bundle=True), tmp_path / "scratch-parity", progress, MODULE)
    assert report["top1_agreement"] == 1.0  # the text graphs are the float ones
    assert report["image_token_agreement"] < 1.0 and report["vision_cosine"] < 0.99  # both image gates fail
    # Why: the runtime hands the graph [0, 1] pixels, so this bundle answers as PyTorch does on those.
    card, prompt = _test_card(tmp_path / "card.png"), "Describe the findings."
    answer = _runtime_image_answer(bundle, card, prompt, 24)
    assert answer == _pytorch_image_answer(TINY, card, prompt, 24, pixels="unit")
    assert answer != _pytorch_image_answer(TINY, card, prompt, 24)


def test_missed_parity_threshold_fails_the_build_with_the_numbers(litertlm_build, litertlm_store):
    manifest = litertlm_build.project.manifest_path.with_name("strict.yaml")
    manifest.write_text(
        litertlm_build.project.manifest_path.read_text()
        .replace("name: tiny-medgemma-litertlm", "name: strict")
        .replace("min_top1_agreement: 0.75", "min_top1_agreement: 1.0")
    )
    with pytest.raises(StepFailed, match=r"parity check failed: top1_agreement = 0\.\d+ \(required ≥ 1\.0\).*measured"):
        api.build(manifest, store_dir=litertlm_store)


@pytest.mark.parametrize("recipe", ["dynamic_wi4b32_afp32"])
def test_a_broken_quantization_fails_the_int8_gate(litertlm_build, litertlm_store, recipe):
    """The gate still catches a real quantization bug: the same thresholds with the text decoder
    quantized to int4 (top-1 agreement about 0.23, mean KL about 2.6 on this model) fail the build."""
    manifest = litertlm_build.project.manifest_path.with_name("broken.yaml")
    text = litertlm_build.project.manifest_path.read_text().replace("name: tiny-medgemma-litertlm", "name: broken")
    text = text.split("\n  web:\n")[0] + "\n"
    assert "text_decoder: {recipe: dynamic_wi8_afp32}" in text
    manifest.write_text(text.replace("text_decoder: {recipe: dynamic_wi8_afp32}", f"text_decoder: {{recipe: {recipe}}}"))
    with pytest.raises(StepFailed, match=r"parity check failed: top1_agreement = 0\.[0-5]\d* \(required ≥ 0\.75\); mean_kl = \d"):
        api.build(manifest, store_dir=litertlm_store)


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        ("text_decoder: {recipe: dynamic_wi8_afp32}", "text_decoder: {recipe: dynamic_wi8_afp3}", r"unknown quantization recipe 'dynamic_wi8_afp3'; did you mean 'dynamic_wi8_afp32'\? valid recipes: none, "),
        ("cache_length: 256", "cache_length: 64", r"prefill length 128 is larger than cache_length 64"),
        ("      projector: {recipe: weight_only_wi8_afp32}\n", "      projector: {recipe: weight_only_wi8_afp32}\n      audio: {recipe: none}\n", r"quantization names component 'audio'"),
    ],
)
def test_bad_litertlm_manifests_are_clear_errors(tmp_project, change, error, pattern):
    manifest = tmp_project / "manifests" / MANIFEST
    manifest.write_text(manifest.read_text().replace(change, error))
    with pytest.raises(ManifestError, match=pattern):
        api.plan(manifest)


def test_changing_only_the_prefill_and_cache_lengths_keeps_the_vision_export_and_its_quantization(tmp_project):
    """The vision graphs have no prefill signatures and no KV cache (litert-torch's Gemma 3 vision
    exportables never read either), so the lengths are no parameters of the vision export."""
    manifest = tmp_project / "manifests" / MANIFEST
    before = {status.name: status.key for status in api.plan(manifest).statuses}
    manifest.write_text(manifest.read_text().replace("prefill_lengths: [32, 128]", "prefill_lengths: [16, 64]").replace("cache_length: 256", "cache_length: 384"))
    after = {status.name: status.key for status in api.plan(manifest).statuses}
    unchanged = sorted(name for name in before if before[name] == after[name])
    assert {"bundle.export_vision", "bundle.quantize.vision_encoder", "bundle.quantize.projector"} <= set(unchanged)
    assert before["bundle.export_text"] != after["bundle.export_text"]


def test_the_component_name_is_no_parameter_of_a_quantization(tmp_project):
    plan = api.plan(tmp_project / "manifests" / MANIFEST).plan
    quantizations = [step for step in plan.steps if step.kind == "litert_quantize"]
    assert quantizations and all(set(step.params) == {"recipe", "files", "overrides"} for step in quantizations)


def test_an_architecture_the_exporter_cannot_handle_is_refused_before_building(tmp_project):
    import json

    source = tmp_project / "fixtures" / "tiny-medgemma"
    config = json.loads((source / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(PlanError, match=r"LlamaForCausalLM is not one litert-torch's export_hf handles"):
        api.plan(tmp_project / "manifests" / MANIFEST)


def test_quantizer_recipe_list_matches_the_installed_quantizer():
    import inspect

    from ai_edge_quantizer import recipe

    from modelforge.manifest.parts import QUANTIZER_RECIPES

    provided = {name for name, value in inspect.getmembers(recipe, inspect.isfunction) if not name.startswith("_")}
    # Calibration recipes need data modelforge does not take yet; gemma4_* return per-section dicts.
    usable = {name for name in provided if not name.startswith(("static_", "gemma4_"))}
    assert set(QUANTIZER_RECIPES) == usable


def test_a_regex_scoped_override_quantizes_only_the_ops_it_names(litertlm_build, litertlm_store):
    from modelforge.plan import compute_keys
    from modelforge.store import Store

    manifest = litertlm_build.project.manifest_path.with_name("override.yaml")
    manifest.write_text(
        litertlm_build.project.manifest_path.read_text()
        .replace("name: tiny-medgemma-litertlm", "name: override")
        .replace("min_top1_agreement: 0.75", "min_top1_agreement: 0.3")  # int4 MLPs cost accuracy on this tiny model
        .replace("max_kl: 0.1", "max_kl: 1.0")
        .replace("min_image_token_agreement: 0.1", "min_image_token_agreement: 0.0")
        .replace(
            "text_decoder: {recipe: dynamic_wi8_afp32}",
            "text_decoder: {recipe: dynamic_wi8_afp32, overrides: [{regex: '.*Gemma3MLP_mlp.*', recipe: dynamic_wi4b32_afp32}]}",
        )
    )
    result = api.build(manifest, store_dir=litertlm_store)
    assert "bundle.quantize.text_decoder" in result.ran and "bundle.export_text" not in result.ran
    store = Store(litertlm_store)
    sizes = {}
    for name, build in (("int8", litertlm_build), ("mixed", result)):
        report = api.plan(build.project.manifest_path, store_dir=litertlm_store)
        record = store.get_record(compute_keys(report.plan, report.toolchain)["bundle.quantize.text_decoder"]["key"])
        sizes[name] = record.outputs["model.tflite"].size
    # int4 MLP weights: the mixed graph is smaller than the all-int8 one, but not float-sized.
    assert sizes["mixed"] < sizes["int8"]


def test_the_pixel_map_is_the_source_processors_own_normalization(tmp_path):
    """Not hard-coded to Gemma: ImageNet mean/std and a different rescale give the map under which
    the runtime's [0, 1] pixels become exactly what transformers' processor makes of the image."""
    import json

    import numpy as np
    from transformers import AutoImageProcessor

    from conftest import TINY
    from modelforge.steps.image_input import processor_affine

    config = json.loads((TINY / "preprocessor_config.json").read_text())
    for changes in ({}, {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
                    {"rescale_factor": 1 / 127.5, "do_normalize": False}):
        directory = tmp_path / str(len(list(tmp_path.iterdir())))
        directory.mkdir()
        (directory / "preprocessor_config.json").write_text(json.dumps({**config, **changes}))
        processor = AutoImageProcessor.from_pretrained(directory)
        image = (np.arange(56 * 56 * 3).reshape(56, 56, 3) * 37 % 256).astype(np.uint8)
        expected = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        affine = processor_affine(processor)
        mapped = image / 255.0 * np.array(affine["scale"]) + np.array(affine["offset"])
        assert np.abs(mapped - expected).max() < 1e-5, changes


def test_the_vision_export_records_the_map_it_put_in_front_of_the_vision_tower(litertlm_build, litertlm_store):
    import json

    from modelforge.plan import compute_keys
    from modelforge.store import Store

    report = api.plan(litertlm_build.project.manifest_path, store_dir=litertlm_store)
    steps = {step.name: step for step in report.plan.steps}
    assert steps["bundle.export_vision"].params["image_input"] == "runtime"
    assert "image_input" not in steps["bundle.export_text"].params  # the text export keeps its key
    store = Store(litertlm_store)
    record = store.get_record(compute_keys(report.plan, report.toolchain)["bundle.export_vision"]["key"])
    image_input = json.loads(store.object_path(record.outputs["export_report.json"].sha256).read_text())["image_input"]
    # Gemma 3: rescale 1/255, mean 0.5, std 0.5 → [-1, 1] = 2 · runtime pixel − 1.
    assert image_input["pixel_range"] == [0.0, 1.0]
    assert image_input["scale"] == pytest.approx([2.0] * 3) and image_input["offset"] == pytest.approx([-1.0] * 3)
