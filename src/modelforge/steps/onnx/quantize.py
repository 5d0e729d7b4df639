"""Step `onnx_quantize`: weight-only int8 / int4 (onnxruntime's MatMulNBits, symmetric, in blocks)
of one exported ONNX graph, in the worker process (steps/onnx/worker.py). The text decoder is not
quantized here: onnxruntime-genai's builder quantizes it while building (steps/onnx/export.py)."""

from __future__ import annotations

import shutil

from modelforge.steps.base import StepContext
from modelforge.steps.onnx.worker import MODULE
from modelforge.steps.workers import job_request, run_job

KIND = "onnx_quantize"
VERSION = 1
TOOLS = ("onnx", "onnxruntime")


def run(context: StepContext) -> None:
    """params: {file, precision: int8|int4, block_size}; input `graph`: the float graph and its data."""
    params = context.params
    files = context.inputs["graph"]
    source = context.scratch_dir / "input"
    source.mkdir()
    for relative, item in files.items():
        # A copy: onnx refuses external data that resolves outside the model's directory (a symlink
        # into the store) or that has more than one hard link (a linked store object).
        shutil.copyfile(item.path, source / relative)
    request = job_request(context, "quantize", input_dir=str(source), **params)
    run_job(context, request, f"onnx quantize {params['file']}", MODULE)
