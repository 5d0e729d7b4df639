"""Planning `runtime: onnxruntime_web` web variants (targets/web_bundle.py): they ship the onnx target's
package as it is (its own nodes, so its parity check covers these graphs) plus the source's tokenizer
and chat template; the planner refuses a variant with a tensor onnxruntime-web cannot size. Planned
offline against the real MedGemma 4B manifest's reference tensor list (no weights)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from pydantic import ValidationError

from conftest import MANIFESTS
from modelforge.errors import PlanError
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.manifest.targets.onnx import OnnxPrecisionSpec
from modelforge.manifest.targets.web_bundle import WebVariantSpec
from modelforge.planner import make_plan
from modelforge.testing.reference import reference_facts
from modelforge.web import limits

REAL = MANIFESTS / "medgemma-1.5-litertlm.yaml"
RUNTIME = {"version": "0.10.29", "files": {}, "onnxruntime_web": {"versions": {"onnxruntime-web": "1.30.0"}, "files": {}}}


def _plan(manifest, runtime=RUNTIME):
    return make_plan(manifest, replace(reference_facts(), web_runtime=runtime), "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))


def test_the_4b_image_variant_ships_the_onnx_targets_package():
    """MedGemma 4B's image variant: the onnx target's package node itself (int4 text, its embedding
    int4 too: 0.42 GB, the largest tensor; the float table would be 2.69 GB) and the source files. Its
    vision graph computes attention 2 heads at a time: 128 MiB of scores, WebGPU's default binding
    size, where all 16 heads would hold 1 GiB, all of SwiftShader's largest buffer."""
    plan = _plan(load_manifest(REAL))
    web = next(step for step in plan.steps if step.name == "web")
    inputs = {ref.name: ref.node for ref in web.inputs}
    assert inputs["variant.medgemma-int4-images.graphs"] == "onnx.package"
    assert inputs["variant.medgemma-int4-images.source"] == "source"
    params = json.loads(web.params_json)
    variant = next(v for v in params["variants"] if v["name"] == "medgemma-int4-images")
    assert variant["runtime"] == "onnxruntime_web" and variant["max_tokens"] == 4096
    assert variant["generation"]["image"] == {"soft_tokens": 256, "image_token_id": 262144, "start_of_image_id": 255999, "end_of_image_id": 256000,
                                              "attention_bytes": 2 * 4096 * 4096 * 4}
    vision = next(step for step in plan.steps if step.name == "onnx.export_vision")
    assert json.loads(vision.params_json)["attention_heads_per_group"] == 2
    assert params["onnxruntime_web"] == RUNTIME["onnxruntime_web"] and "litertjs" not in params
    fact = plan.facts["web"]["web.medgemma-int4-images"]["largest_tensor"]
    # 262,208 rows of 80 blocks: 16 bytes of int4 and a float32 scale each (the measured data file: 419,543,040 B)
    assert fact == {"tensor": "language_model.model.embed_tokens.weight", "bytes": 262_208 * 80 * (16 + 4)}


def test_a_float_text_decoder_is_refused_with_the_way_out():
    """A float32 embedding table of 2.69 GB overflows onnxruntime-web's 32-bit tensor sizes
    (measured: "SafeIntOnOverflow() Integer overflow" at session creation)."""
    manifest = load_manifest(REAL)
    onnx = manifest.targets["onnx"]
    float_onnx = onnx.model_copy(update={"precision": {**onnx.precision, "text_decoder": OnnxPrecisionSpec(precision="fp32")}})
    manifest = manifest.model_copy(update={"targets": {**manifest.targets, "onnx": float_onnx}})
    with pytest.raises(PlanError, match=r"largest tensor, language_model\.model\.embed_tokens\.weight at 2\.69 GB, is above the 2 GiB "
                                         r"onnxruntime-web can size\. Set the onnx target 'onnx''s text_decoder precision to int4"):
        _plan(manifest)


def test_int8_text_keeps_a_float_embedding_and_is_refused_at_4b():
    assert limits.predict_ortweb_largest({"m.embed_tokens.weight": (262_208, 2560), "m.layers.0.mlp.up_proj.weight": (10240, 2560)}, "int8") == \
        ("m.embed_tokens.weight", 262_208 * 2560 * 4)


def test_an_unvendored_runtime_is_refused():
    with pytest.raises(PlanError, match=r"the onnxruntime-web runtime is not vendored; run `npm ci --prefix web`"):
        _plan(load_manifest(REAL), runtime={"version": "0.10.29", "files": {}})


def test_the_manifest_refuses_what_an_onnxruntime_web_variant_cannot_take(tmp_path):
    with pytest.raises(ValidationError, match="ships its onnx target's graphs as they are"):
        WebVariantSpec.model_validate({"name": "x", "label": "x", "from": "onnx", "runtime": "onnxruntime_web", "recipe": "dynamic_wi8_afp32"})
    text = REAL.read_text().replace("        from: onnx\n        runtime: onnxruntime_web", "        from: bundle\n        runtime: onnxruntime_web")
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(Exception, match=r"'from: bundle' is not an onnx target of this manifest \(runtime onnxruntime_web runs an onnx target's graphs\)"):
        load_manifest(tmp_path / "m.yaml")


def test_a_variant_names_the_template_the_page_applies():
    """By default the page applies the source's chat_template.jinja; a variant may name another source
    file (a base model's plain-text template), which the plan then requires of the source."""
    def with_template(**fields):
        manifest = load_manifest(REAL)
        variant = WebVariantSpec.model_validate({"name": "x", "label": "x", "from": "onnx", "runtime": "onnxruntime_web", **fields})
        web = manifest.targets["web"].model_copy(update={"variants": (variant,)})
        return _plan(manifest.model_copy(update={"targets": {**manifest.targets, "web": web}}))

    web = next(step for step in with_template().steps if step.name == "web")
    assert json.loads(web.params_json)["variants"][0]["files"]["chat_template"] == "chat_template.jinja"
    with pytest.raises(PlanError, match=r"variant 'x' needs the source's completion_template\.jinja"):
        with_template(chat_template="completion_template.jinja")
