"""Step `onnx_parity`: the onnx target's graphs in onnxruntime (CPU) against the source transformers
model on fixed chat prompts (teacher-forced next-token logits: max |Δlogit|, top-1 agreement, mean
KL, and the greedy tokens reproduced), and for a multimodal target the vision graph's image
embeddings on two generated test cards by cosine; fails the build when the manifest's thresholds
are missed. The report is an output, recorded in the lock. Phases run in separate worker
processes (the PyTorch references, then the graphs), as litert_parity's do."""

from __future__ import annotations

from modelforge.outputs import link_or_copy
from modelforge.steps.base import StepContext
from modelforge.steps.onnx.worker import MODULE
from modelforge.steps.parity import gate, run_phases, take_reference

KIND = "onnx_parity"
VERSION = 3  # 2: reads the parity_reference step's outputs; 3: p99 KL and the perplexity ratio
TOOLS = ("onnxruntime", "pillow", "torch", "transformers")
REPORT = "parity.json"  # recorded in the lock under `checks`


def run(context: StepContext) -> None:
    """params: {prompts, steps, multimodal, thresholds: {max_abs_logit, min_top1_agreement, max_kl,
    min_vision_cosine}}; inputs: checkpoint, reference (the parity_reference step's outputs), target
    (the packaged directory)."""
    params = context.params
    models = context.scratch_dir / "models"
    models.mkdir()
    for relative, item in context.inputs["target"].items():
        # Linked, not symlinked: onnxruntime refuses external data that resolves outside the model's directory.
        link_or_copy(item.path, models / relative)
    request = {
        "action": "parity", "checkpoint": str(context.input_dir("checkpoint")), "models_dir": str(models),
        "prompts": params["prompts"], "steps": params["steps"], "stop_tokens": [], "bundle": None,
        "scratch_dir": str(context.scratch_dir),
    }
    report, measurements = run_phases(request | take_reference(context, request), ["onnx_graphs"], context.scratch_dir, context.progress, MODULE)
    context.measurements.update(measurements)
    gate(context, report, params["thresholds"], "use a lighter precision (fp32 or int8) or relax the thresholds under parity")
