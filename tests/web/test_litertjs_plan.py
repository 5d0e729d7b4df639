"""Planning `runtime: litertjs` web variants (targets/web_bundle.py): they ship the litertlm target's
own graphs — the very export and quantize nodes when the recipe is the target's — plus the source's
tokenizer and chat template; the manifest refuses what cannot run. Planned offline against the real
MedGemma 4B manifest's reference tensor list (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import ValidationError

from conftest import MANIFESTS
from modelforge.errors import PlanError
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.manifest.targets.web_bundle import WebVariantSpec
from modelforge.planner import make_plan
from modelforge.testing.reference import reference_facts

REAL = MANIFESTS / "medgemma-1.5-litertlm.yaml"
RUNTIME = {"version": "0.10.29", "files": {}, "litertjs": {"versions": {"@litertjs/core": "2.5.3"}, "files": {}}}


def _variant(name: str, **fields) -> WebVariantSpec:
    return WebVariantSpec.model_validate({"name": name, "label": name, "from": "bundle", **fields})


def _plan(*variants, manifest=None):
    manifest = manifest or load_manifest(REAL)
    web = manifest.targets["web"].model_copy(update={"variants": tuple(variants)})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "web": web}})
    return make_plan(manifest, replace(reference_facts(), web_runtime=RUNTIME), "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))


def _inputs(plan, name="web"):
    step = next(step for step in plan.steps if step.name == name)
    return {ref.name: ref.node for ref in step.inputs}, json.loads(step.params_json)


def test_a_variant_with_the_targets_recipes_reuses_its_nodes(tmp_path):
    """On the tiny manifest (whose graphs fit the browser as float or int8): a float variant ships
    the target's exports, one with the target's recipes its quantize nodes; no step of its own."""
    from modelforge import api

    report = api.plan(MANIFESTS / "tiny-medgemma-litertlm.yaml", store_dir=tmp_path / "store")
    plan = report.plan
    inputs, params = _inputs(plan)
    assert inputs["variant.tiny-float.text"] == "bundle.export_text"
    assert inputs["variant.tiny-float.vision_encoder"] == inputs["variant.tiny-float.projector"] == "bundle.export_vision"
    assert inputs["variant.tiny-int8-images.text"] == "bundle.quantize.text_decoder"
    assert inputs["variant.tiny-int8-images.vision_encoder"] == "bundle.export_vision"  # vision float by default
    assert inputs["variant.tiny-int8-images.source"] == "source"
    assert not [step.name for step in plan.steps if step.name.startswith("web.") and "litertjs" in step.kind]
    assert not [step.name for step in plan.steps if step.name.startswith("web.quantize.tiny-float") or step.name.startswith("web.quantize.tiny-int8-images")]
    [first, *_] = [variant for variant in params["variants"] if variant.get("runtime") == "litertjs"]
    assert "stream_weights" not in first  # absent, not false, where off: those variants keep their step keys
    assert first["generation"]["cache_length"] == load_manifest(MANIFESTS / "tiny-medgemma-litertlm.yaml").targets["bundle"].cache_length
    # Each variant's graphs get their own parity check (the bundle's thresholds, no runtime phase),
    # against the very PyTorch reference the bundle's parity reads.
    parity = next(step for step in plan.steps if step.name == "web.parity.tiny-float")
    assert {ref.name: ref.node for ref in parity.inputs} == {
        "checkpoint": "source", "reference": "reference", "text": "bundle.export_text", "vision_encoder": "bundle.export_vision",
        "projector": "bundle.export_vision"}
    bundle_parity = next(step for step in plan.steps if step.name == "bundle.parity")
    assert {ref.name: ref.node for ref in bundle_parity.inputs}["reference"] == "reference"
    assert "min_image_token_agreement" not in json.loads(parity.params_json)["thresholds"]
    # The predicted graphs are a fact of the plan.
    assert plan.facts["web"]["web.tiny-float"]["total_bytes"] < 10 * 2**20


def test_at_4b_a_variant_with_another_recipe_gets_its_own_quantize_step_and_reuses_the_targets_vision(monkeypatch):
    """MedGemma 4B: int4 text (own step on the target's export) and the target's int8 vision (its
    very nodes): about 3.02 GB of graphs, and 6.85 GB of KV cache buffers at the cache length. LiteRT.js
    2.5.3 cannot take them (next test); planned here as if its heap were 16 GiB, to check the steps such a
    variant gets."""
    from modelforge.web import limits

    monkeypatch.setattr(limits, "MAX_LITERTJS_GRAPH_BYTES", 16 * 2**30)
    plan = _plan(_variant("int4", runtime="litertjs", recipe="dynamic_wi4b32_afp32", vision_recipe="weight_only_wi8_afp32"))
    inputs, params = _inputs(plan)
    assert inputs["variant.int4.text"] == "web.quantize.int4.text_decoder"
    assert inputs["variant.int4.vision_encoder"] == "bundle.quantize.vision_encoder"
    assert inputs["variant.int4.projector"] == "bundle.quantize.projector"
    step = next(step for step in plan.steps if step.name == "web.quantize.int4.text_decoder")
    assert json.loads(step.params_json)["recipe"] == "dynamic_wi4b32_afp32"
    assert [ref.node for ref in step.inputs] == ["bundle.export_text"]  # the target's export, not a second one
    assert "runtime" not in params and params["litertjs"]["versions"] == {"@litertjs/core": "2.5.3"}
    assert params["variants"][0]["generation"]["image"] == {"soft_tokens": 256, "image_token_id": 262144, "start_of_image_id": 255999, "end_of_image_id": 256000}
    graphs = plan.facts["web"]["web.int4"]
    # 34 layers × 1,024 key rows (4 KV heads × 256) × 4,096 positions × float32 × K, V in and out × 3 signatures
    assert graphs["graph_bytes"]["KV cache buffers"] == 34 * 1024 * 4096 * 4 * 4 * 3
    assert 2.9e9 < graphs["total_bytes"] - graphs["graph_bytes"]["KV cache buffers"] < 3 * 2**30


@pytest.mark.parametrize(("text", "vision", "total"), [
    ("none", "none", "26.76 GB"),
    ("dynamic_wi8_afp32", "weight_only_wi8_afp32", "11.87 GB"),
    ("dynamic_wi4b32_afp32", "none", "11.12 GB"),
    # the lightest combination: its int4 decoder alone (2.20 GB) is above LiteRT.js 2.5.3's 2 GiB heap
    ("dynamic_wi4b32_afp32", "weight_only_wi8_afp32", "9.86 GB"),
])
def test_at_4b_a_variant_whose_graphs_cannot_fit_litertjs_is_refused_at_plan_time(text, vision, total):
    with pytest.raises(PlanError, match=rf"variant 'x' \(runtime: litertjs; text {text}, vision {vision}\) cannot run in the browser: "
                                        rf"its graphs and KV cache would take about {total}.*loadAndCompile copies each graph into its wasm32 heap, "
                                        r"which @litertjs/core 2.5.3 caps at 2.15 GB \(2.00 GiB\)"):
        _plan(_variant("x", runtime="litertjs", recipe=text, vision_recipe=vision))


def test_at_4b_streamed_weights_leave_the_graphs_a_tenth_of_the_heap_but_not_the_kv_cache(monkeypatch):
    """The same int4 text + int8 vision variant, its decoder and embedder split (stream_weights): what
    stays in the heap is their flatbuffers (blockwise float16 scales, norms, structure), one scratch
    region as large as the largest int4 tensor (the 262,208 × 2,560 embedding table) and the vision
    graphs (1.08 GB), while the int4 matrices (2.2 GB) stream to the GPU; but the KV cache buffers of
    the 4,096-token cache (6.85 GB) still do not fit. Planned past the limit to read the prediction."""
    from modelforge.web import limits

    variant = _variant("int4", runtime="litertjs", recipe="dynamic_wi4b32_afp32", vision_recipe="weight_only_wi8_afp32", stream_weights=True)
    with pytest.raises(PlanError, match=r"with its weights streamed, it would still keep about 7\.92 GB .*\(KV cache buffers 6\.85 GB"):
        _plan(variant)
    monkeypatch.setattr(limits, "MAX_LITERTJS_GRAPH_BYTES", 16 * 2**30)
    plan = _plan(variant)
    _, params = _inputs(plan)
    assert params["variants"][0]["stream_weights"] is True
    fact = plan.facts["web"]["web.int4"]
    assert fact["largest_streamed"] == {"tensor": "language_model.model.embed_tokens.weight", "bytes": 262_208 * 2_560 // 2}
    assert fact["graph_bytes"]["scratch region"] == 262_208 * 2_560 // 2 + 2 * 65536
    assert 2.1e9 < fact["streamed_bytes"] < 2.3e9
    assert 1.0e9 < fact["total_bytes"] - fact["graph_bytes"]["KV cache buffers"] < 1.2e9


def test_streamed_weights_that_still_cannot_fit_are_refused():
    """int8 text streams 3.9 GB, but float vision (1.69 GB), the 0.67 GB scratch region and the KV cache
    still exceed the heap."""
    with pytest.raises(PlanError, match=r"variant 'x' .* cannot run in the browser: with its weights streamed, it would still keep about "
                                        r"9\.25 GB.* in LiteRT.js's wasm32 heap \(KV cache buffers 6\.85 GB.*vision graphs 1\.69 GB.*scratch region 0\.67 GB"
                                        r".*Shorten the litertlm target's cache_length"):
        _plan(_variant("x", runtime="litertjs", recipe="dynamic_wi8_afp32", stream_weights=True))


def test_streamed_weights_need_a_quantized_decoder():
    manifest = load_manifest(REAL)
    float_bundle = manifest.targets["bundle"].model_copy(update={"quantization": {}})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "bundle": float_bundle}})
    with pytest.raises(PlanError, match=r"variant 'x' streams its weights, but its text decoder would be float .*set the variant's recipe"):
        _plan(_variant("x", runtime="litertjs", stream_weights=True), manifest=manifest)


def test_manifest_refusals():
    with pytest.raises(ValidationError, match="stream_weights applies to runtime: litertjs variants only"):
        _variant("x", stream_weights=True, recipe="dynamic_wi8_afp32")
    with pytest.raises(ValidationError, match="stream_weights streams quantized weights only"):
        _variant("x", runtime="litertjs", recipe="none", stream_weights=True)
    with pytest.raises(ValidationError, match="MediaPipe web runtime rejects float embedding tables.*runtime: litertjs"):
        _variant("x", recipe="none")
    with pytest.raises(ValidationError, match="vision_recipe applies to runtime: litertjs variants only"):
        _variant("x", vision_recipe="weight_only_wi8_afp32")
    with pytest.raises(ValidationError, match="runtime"):
        _variant("x", runtime="onnx")
    with pytest.raises(ValidationError, match="chat_template applies to the page's own loop"):
        _variant("x", recipe="dynamic_wi8_afp32", chat_template="completion_template.jinja")
    with pytest.raises(ValidationError, match="relative"):
        _variant("x", runtime="litertjs", chat_template="/etc/passwd")


def test_a_litertjs_variant_needs_an_image_text_to_text_target():
    manifest = load_manifest(REAL)
    bundle = manifest.targets["bundle"]
    text_only = bundle.model_copy(update={"task": "text_generation"})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "bundle": text_only}})
    with pytest.raises(PlanError, match=r"targets\.web: variant 'x' \(runtime: litertjs\) needs the embedder graph of an image_text_to_text"):
        _plan(_variant("x", runtime="litertjs"), manifest=manifest)


def test_a_litertjs_variant_needs_the_vendored_runtime():
    manifest = load_manifest(REAL)
    web = manifest.targets["web"].model_copy(update={"variants": (_variant("x", runtime="litertjs"),)})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "web": web}})
    facts = replace(reference_facts(), web_runtime={"version": "0.10.29", "files": {}})
    with pytest.raises(PlanError, match=r"the LiteRT.js web runtime is not vendored; run `npm ci --prefix web`"):
        make_plan(manifest, facts, "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))


def _with_text_layers(facts, layers: int):
    """The reference 4B tensors with `layers` decoder layers and one vision layer (bench_web_4b.py `layers`)."""
    import re

    def kept(name: str) -> bool:
        match = re.search(r"\.layers\.(\d+)\.", name)
        return not match or int(match.group(1)) < (layers if name.startswith("language_model.") else 1)

    return replace(facts, tensors={name: info for name, info in facts.tensors.items() if kept(name)})


@pytest.mark.parametrize(("layers", "cache_length", "prefill_lengths", "loaded"), [
    # bench/RESULTS.md, bench:web_4b_streamed: int4 text streamed, int8 vision, in Chromium on WebGPU
    (2, 4096, (128, 1024), True),
    (8, 4096, (128, 1024), False),  # the decoder's compile ran the heap out (1.83 GiB)
    (8, 1024, (128,), True),
    (16, 1024, (128,), True),
    (34, 1024, (128,), False),  # all of MedGemma 4B, a quarter of its cache: out at 1.95 GiB
])
def test_the_heap_rule_tells_apart_the_measured_4b_wide_runs(layers, cache_length, prefill_lengths, loaded):
    """The planner's LiteRT.js heap rule (flatbuffers, scratch region, vision graphs, KV cache buffers,
    against 1.5 GiB) refuses exactly the streamed variants that could not load in Chromium."""
    manifest = load_manifest(REAL)
    bundle = manifest.targets["bundle"].model_copy(update={"cache_length": cache_length, "prefill_lengths": prefill_lengths})
    variant = _variant("x", runtime="litertjs", recipe="dynamic_wi4b32_afp32", vision_recipe="weight_only_wi8_afp32", stream_weights=True,
                       max_tokens=min(600, cache_length))
    web = manifest.targets["web"].model_copy(update={"variants": (variant,)})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "bundle": bundle, "web": web}})
    facts = replace(_with_text_layers(reference_facts(), layers), web_runtime=RUNTIME)

    def plan():
        return make_plan(manifest, facts, "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))

    if loaded:
        assert plan().facts["web"]["web.x"]["total_bytes"] < 1.5 * 2**30
    else:
        with pytest.raises(PlanError, match=r"with its weights streamed, it would still keep about .*KV cache buffers"):
            plan()
