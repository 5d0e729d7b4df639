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
from modelforge.manifest.models import WebVariantSpec
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


def test_a_variant_with_the_targets_recipes_reuses_its_nodes():
    float_variant = _variant("float", runtime="litertjs", recipe="none")
    own = _variant("own", runtime="litertjs", vision_recipe="weight_only_wi8_afp32")  # the target's recipes
    plan = _plan(float_variant, own)
    inputs, params = _inputs(plan)
    assert inputs["variant.float.text"] == "bundle.export_text"
    assert inputs["variant.float.vision_encoder"] == inputs["variant.float.projector"] == "bundle.export_vision"
    assert inputs["variant.own.text"] == "bundle.quantize.text_decoder"
    assert inputs["variant.own.vision_encoder"] == "bundle.quantize.vision_encoder"
    assert inputs["variant.own.projector"] == "bundle.quantize.projector"
    assert inputs["variant.own.source"] == "source"
    # No step of its own besides the bundle: every graph is the litertlm target's.
    assert not [step.name for step in plan.steps if step.name.startswith("web.")]
    assert "runtime" not in params and params["litertjs"]["versions"] == {"@litertjs/core": "2.5.3"}
    [first, _] = params["variants"]
    assert first["generation"]["image"] == {"soft_tokens": 256, "image_token_id": 262144, "start_of_image_id": 255999, "end_of_image_id": 256000}
    assert first["generation"]["cache_length"] == load_manifest(REAL).targets["bundle"].cache_length


def test_a_variant_with_another_recipe_gets_its_own_quantize_step():
    plan = _plan(_variant("int4", runtime="litertjs", recipe="dynamic_wi4b32_afp32"))
    inputs, _ = _inputs(plan)
    assert inputs["variant.int4.text"] == "web.quantize.int4.text_decoder"
    step = next(step for step in plan.steps if step.name == "web.quantize.int4.text_decoder")
    assert json.loads(step.params_json)["recipe"] == "dynamic_wi4b32_afp32"
    assert [ref.node for ref in step.inputs] == ["bundle.export_text"]  # the target's export, not a second one


def test_manifest_refusals():
    with pytest.raises(ValidationError, match="MediaPipe web runtime rejects float embedding tables.*runtime: litertjs"):
        _variant("x", recipe="none")
    with pytest.raises(ValidationError, match="vision_recipe applies to runtime: litertjs variants only"):
        _variant("x", vision_recipe="weight_only_wi8_afp32")
    with pytest.raises(ValidationError, match="runtime"):
        _variant("x", runtime="onnx")


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
