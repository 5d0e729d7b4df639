"""The onnx target's plan without building: `diff` of a precision change, the manifest's
precision rules, and the memory prediction of the real MedGemma manifest (fast; no export)."""

from __future__ import annotations

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
    weights: steps/genai_builder.py)."""
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-onnx.yaml")
    plan = make_plan(manifest, reference_facts(), "manifests/medgemma-1.5-onnx.yaml", manifest_digest(manifest))
    predicted = plan.facts["memory"]
    assert set(predicted) == {"onnx.export_text", "onnx.export_vision", "onnx.quantize.vision", "onnx.parity"}
    assert predicted["onnx.export_text"] == memory.predict("onnx_export_text", memory.F32_BYTES * 3_880_263_168)
    assert all(peak < 20 * 2**30 for peak in predicted.values())
