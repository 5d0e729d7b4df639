"""The onnx target's plan without building: `diff` of a precision change, the manifest's
precision rules, and the memory prediction of the real MedGemma manifest (fast; no export)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import MANIFESTS
from modelforge import api, memory
from modelforge.errors import ManifestError
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.planner import make_plan
from modelforge.testing.reference import reference_facts

MANIFEST = "tiny-medgemma-onnx.yaml"


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_diff_of_a_vision_precision_change_reruns_only_what_depends_on_vision(tmp_project, snapshot):
    old = tmp_project / "manifests" / MANIFEST
    new = tmp_project / "manifests" / "new.yaml"
    new.write_text(old.read_text().replace(
        "    context_length: 1024\n",
        "    context_length: 1024\n    precision:\n      vision_encoder: {precision: int8}\n      projector: {precision: int8}\n",
    ))
    result = cli("diff", f"manifests/{MANIFEST}", "manifests/new.yaml", "--format", "text", cwd=tmp_project)
    assert result.returncode == 1, result.stderr
    lines = result.stdout
    assert "added       onnx.quantize.vision (onnx_quantize)" in lines
    assert "cached      onnx.export_text (onnx_export)" in lines and "cached      onnx.export_vision (onnx_export)" in lines
    assert lines == snapshot


@pytest.mark.parametrize(
    ("precision", "message"),
    [
        ("      text_decoder: {precision: fp32, block_size: 32}\n", "block_size applies to int8 and int4 only"),
        ("      vision_encoder: {precision: int8}\n", "vision_encoder and projector are one graph"),
        ("      text_decoder: {precision: int4, block_size: 48}\n", "block_size"),
        ("      text_decoder: {precision: int3}\n", "int3"),
        ("      audio: {precision: int8}\n", "does not contain"),
    ],
)
def test_precision_is_validated(tmp_project, precision, message):
    path = tmp_project / "manifests" / MANIFEST
    path.write_text(path.read_text().replace("    context_length: 1024\n", "    context_length: 1024\n    precision:\n" + precision))
    with pytest.raises(ManifestError, match=message):
        api.plan(path)


def test_the_real_manifest_predicts_memory_for_every_heavy_step(tmp_path):
    """MedGemma 4B's onnx steps, fitted on their 4B measurements (memory.py, bench/RESULTS.md "onnx
    export at 4B"): which steps get a prediction, and that each stays under the 20 GiB a step of the
    litertlm build is held to (the text export took 21.2 GiB before its quantizer streamed the
    weights: steps/onnx/genai_builder.py)."""
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-onnx.yaml")
    plan = make_plan(manifest, reference_facts(), "manifests/medgemma-1.5-onnx.yaml", manifest_digest(manifest))
    predicted = plan.facts["memory"]
    # The parity step reads the PyTorch reference (its own step, `reference`), which holds the float32 model.
    assert set(predicted) == {"onnx.export_text", "onnx.export_vision", "onnx.quantize.vision", "onnx.quantize.embedding", "reference"}
    assert predicted["onnx.export_text"] == memory.predict("onnx_export_text", memory.F32_BYTES * 3_880_263_168)
    assert all(peak < 20 * 2**30 for peak in predicted.values())


def _package(manifest_name: str, facts):
    manifest = load_manifest(MANIFESTS / manifest_name)
    plan = make_plan(manifest, facts, f"manifests/{manifest_name}", manifest_digest(manifest))
    return plan.node("onnx.package")


def test_the_real_manifest_hands_onnxruntime_genai_the_image_preprocessing():
    """MedGemma's 256 image tokens per image are the number onnxruntime-genai's Gemma 3 pipeline
    puts in a prompt: the package gets the source's preprocessor_config.json to write
    processor_config.json from."""
    package = _package("medgemma-1.5-onnx.yaml", reference_facts())
    assert package.params["genai_image_processor"] is True
    assert [(item.name, item.select) for item in package.inputs if item.name == "preprocessor"] == [("preprocessor", ("preprocessor_config.json",))]


def test_the_tiny_model_keeps_its_images_out_of_onnxruntime_genai(tmp_project):
    """4 image tokens per image: onnxruntime-genai would put 256 in the prompt; no processor config."""
    package = api.plan(tmp_project / "manifests" / MANIFEST).plan.node("onnx.package")
    assert package.params["genai_image_processor"] is False
    assert "preprocessor" not in {item.name for item in package.inputs}


def test_processor_config_repeats_gemma3s_preprocessing():
    from modelforge.reference import reference_dir
    from modelforge.steps.onnx.package import processor_config

    preprocessor = json.loads((reference_dir() / "medgemma-27b-it-preprocessor_config.json").read_text())
    transforms = [item["operation"] for item in processor_config(preprocessor, "preprocessor_config.json")["processor"]["transforms"]]
    assert [item["type"] for item in transforms] == ["DecodeImage", "Resize", "Rescale", "Normalize", "Permute3D"]
    assert transforms[1]["attrs"] == {"height": 896, "width": 896, "interpolation": "LINEAR", "keep_aspect_ratio": 0}
    assert transforms[2]["attrs"] == {"rescale_factor": 1 / 255} and transforms[3]["attrs"] == {"mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"do_pan_and_scan": True}, "do_pan_and_scan is true"),
        ({"resample": 4}, r"PIL filter 4 has no onnxruntime-extensions equivalent"),
        ({"size": {"shortest_edge": 896}}, r"resize to \{'shortest_edge': 896\}"),
        ({"rescale_factor": None}, "has no 'rescale_factor'"),
        ({"image_processor_type": "SiglipImageProcessor"}, "is not Gemma3ImageProcessor"),
    ],
)
def test_processor_config_refuses_what_onnxruntime_genai_cannot_repeat(change, message):
    from modelforge.errors import StepFailed
    from modelforge.reference import reference_dir
    from modelforge.steps.onnx.package import processor_config

    preprocessor = {**json.loads((reference_dir() / "medgemma-27b-it-preprocessor_config.json").read_text()), **change}
    with pytest.raises(StepFailed, match=message):
        processor_config(preprocessor, "preprocessor_config.json")
