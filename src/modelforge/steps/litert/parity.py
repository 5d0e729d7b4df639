"""Step `litert_parity`: run the exported graphs against the source transformers model on fixed
prompts, and for a multimodal bundle the vision graphs and the packaged .litertlm (through the
LiteRT-LM runtime) on generated test-card images; fail the build when the manifest's thresholds
are missed. The report is an output, recorded in the lock."""

from __future__ import annotations

from pathlib import Path

from modelforge.steps.base import StepContext
from modelforge.steps.litert.worker import MODULE
from modelforge.steps.parity import gate, run_phases, take_reference

KIND = "litert_parity"
VERSION = 6  # 5: reads the parity_reference step's outputs; 6: p99 KL and the perplexity ratio
TOOLS = ("ai-edge-litert", "litert-lm-api", "pillow", "torch", "transformers")
REPORT = "parity.json"  # recorded in the lock under `checks`


def phases_for(multimodal: bool, bundle: bool) -> list[str]:
    """The phases of parity_phases.PHASES a check runs, in order (named here so that the build
    process does not import numpy for them); the reference's are the parity_reference step's."""
    return [*(["runtime"] if multimodal and bundle else []), "graphs"]


def run(context: StepContext) -> None:
    """params: {prompts, steps, stop_tokens, thresholds: {max_abs_logit, min_top1_agreement, max_kl,
    min_vision_cosine, min_image_token_agreement}}; inputs: checkpoint, reference (the
    parity_reference step's outputs), the final graphs, and for a multimodal bundle `bundle` (the
    packaged .litertlm, run through the runtime)."""
    params = context.params
    models = context.scratch_dir / "models"
    models.mkdir()
    bundle = None
    for name, files in context.inputs.items():
        for relative, item in files.items():
            if name not in ("checkpoint", "reference") and relative.endswith(".tflite"):
                (models / relative).symlink_to(item.path.resolve())
            if name == "bundle" and relative.endswith(".litertlm"):
                # The runtime picks its loader by the file name's extension; store objects have none.
                bundle = models / Path(relative).name
                bundle.symlink_to(item.path.resolve())
    request = {
        "action": "parity",
        "checkpoint": str(context.input_dir("checkpoint")),
        "models_dir": str(models),
        "prompts": params["prompts"],
        "steps": params["steps"],
        "stop_tokens": params.get("stop_tokens", []),
        "bundle": str(bundle) if bundle else None,
        "scratch_dir": str(context.scratch_dir),
    }
    phases = phases_for((models / "vision_encoder.tflite").exists(), bundle is not None)
    report, measurements = run_phases(request | take_reference(context, request), phases, context.scratch_dir, context.progress, MODULE)
    context.measurements.update(measurements)
    gate(context, report, params["thresholds"], "use a lighter quantization recipe or relax the thresholds under parity")
