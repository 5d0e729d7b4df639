"""Step `litert_parity`: run the exported graphs against the source transformers model on fixed
prompts, and for a multimodal bundle the vision graphs and the packaged .litertlm (through the
LiteRT-LM runtime) on generated test-card images; fail the build when the manifest's thresholds
are missed. The report is an output, recorded in the lock."""

from __future__ import annotations

import json
import math
from pathlib import Path

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.litert_worker import launch

KIND = "litert_parity"
VERSION = 4
TOOLS = ("ai-edge-litert", "litert-lm-api", "pillow", "torch", "transformers")


def phases_for(multimodal: bool, bundle: bool) -> list[str]:
    """The phases of parity_impl.PHASES a check runs, in order (named here so that the build
    process does not import numpy for them)."""
    return ["text_reference", *(["image_reference"] if multimodal else []), *(["runtime"] if multimodal and bundle else []), "graphs"]


def run_phases(request: dict, phases: list[str], scratch: Path, progress, module: str = "modelforge.steps.litert_worker") -> tuple[dict, dict]:
    """Each phase in its own worker process (parity_impl.PHASES), each handed what the earlier ones
    returned: (the report, the measurements: seconds summed, peaks of the largest phase). Shared
    with onnx_parity."""
    report, handoff, seconds, peaks = {}, {}, 0.0, {"peak_rss_bytes": 0, "peak_anonymous_bytes": 0}
    for phase in phases:
        result = launch(request | handoff | {"phase": phase}, scratch, progress, f"parity check ({phase.replace('_', ' ')})", module)
        report.update(result.get("report", {}))
        handoff.update(result.get("handoff", {}))
        seconds += result["seconds"]
        peaks = {key: max(value, result.get(key, 0)) for key, value in peaks.items()}
    return report, peaks | {"seconds": round(seconds, 3)}


def run(context: StepContext) -> None:
    """params: {prompts, steps, stop_tokens, thresholds: {max_abs_logit, min_top1_agreement, max_kl,
    min_vision_cosine, min_image_token_agreement}}; inputs: checkpoint, the final graphs, and for a
    multimodal bundle `bundle` (the packaged .litertlm, run through the runtime)."""
    params = context.params
    models = context.scratch_dir / "models"
    models.mkdir()
    bundle = None
    for name, files in context.inputs.items():
        for relative, item in files.items():
            if name != "checkpoint" and relative.endswith(".tflite"):
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
    report, measurements = run_phases(request, phases, context.scratch_dir, context.progress)
    context.measurements.update(measurements)
    gate(context, report, params["thresholds"], "use a lighter quantization recipe or relax the thresholds under parity")


def gate(context: StepContext, report: dict, thresholds: dict, advice: str) -> None:
    """Write parity.json (the report, rounded, with the thresholds and the verdict) and raise
    StepFailed naming each missed threshold. Shared with onnx_parity."""
    failures = []
    checks = (
        ("max_abs_logit", "max_abs_logit", lambda value, limit: value <= limit, "≤"),
        ("min_top1_agreement", "top1_agreement", lambda value, limit: value >= limit, "≥"),
        ("max_kl", "mean_kl", lambda value, limit: value <= limit, "≤"),
        ("min_vision_cosine", "vision_cosine", lambda value, limit: value >= limit, "≥"),
        ("min_image_token_agreement", "image_token_agreement", lambda value, limit: value >= limit, "≥"),
    )
    for threshold, metric, passes, sign in checks:
        limit = thresholds.get(threshold)
        if limit is None:
            continue
        value = report.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)) or not passes(value, limit):
            failures.append(f"{metric} = {value} (required {sign} {limit})")
    # Recorded to 4 significant digits: the figures move in the 6th digit from run to run on one
    # machine (thread scheduling in the float reductions) while the graphs are byte-identical, and
    # the report is an output whose bytes must repeat. The gate above uses the full values.
    recorded = {key: (float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else value) for key, value in report.items()}
    recorded |= {"thresholds": thresholds, "passed": not failures}
    context.output("parity.json").write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    if failures:
        measured = ", ".join(f"{key} {report[key]}" for key in ("max_abs_logit", "top1_agreement", "mean_kl", "vision_cosine", "image_token_agreement") if key in report)
        raise StepFailed(
            f"parity check failed: {'; '.join(failures)} (measured: {measured}); "
            f"{advice}"
        )
