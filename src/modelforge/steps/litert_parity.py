"""Step `litert_parity`: run the exported graphs against the source transformers model on fixed
prompts (and an image) and fail the build when the manifest's thresholds are missed. The report
is an output, recorded in the lock."""

from __future__ import annotations

import json
import math

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.litert_worker import launch

KIND = "litert_parity"
VERSION = 1
TOOLS = ("ai-edge-litert", "torch", "transformers")


def run(context: StepContext) -> None:
    """params: {prompts, steps, thresholds: {max_abs_logit, min_top1_agreement, max_kl, min_vision_cosine}}."""
    params = context.params
    models = context.scratch_dir / "models"
    models.mkdir()
    for name, files in context.inputs.items():
        for relative, item in files.items():
            if name != "checkpoint" and relative.endswith(".tflite"):
                (models / relative).symlink_to(item.path.resolve())
    request = {
        "action": "parity",
        "checkpoint": str(context.input_dir("checkpoint")),
        "models_dir": str(models),
        "prompts": params["prompts"],
        "steps": params["steps"],
    }
    report = launch(request, context.scratch_dir, context.progress, "parity check")["report"]
    report = {key: (round(value, 9) if isinstance(value, float) else value) for key, value in report.items()}
    thresholds = params["thresholds"]
    failures = []
    checks = (
        ("max_abs_logit", "max_abs_logit", lambda value, limit: value <= limit, "≤"),
        ("min_top1_agreement", "top1_agreement", lambda value, limit: value >= limit, "≥"),
        ("max_kl", "mean_kl", lambda value, limit: value <= limit, "≤"),
        ("min_vision_cosine", "vision_cosine", lambda value, limit: value >= limit, "≥"),
    )
    for threshold, metric, passes, sign in checks:
        limit = thresholds.get(threshold)
        if limit is None:
            continue
        value = report.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)) or not passes(value, limit):
            failures.append(f"{metric} = {value} (required {sign} {limit})")
    report["thresholds"] = thresholds
    report["passed"] = not failures
    context.output("parity.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    if failures:
        measured = ", ".join(f"{key} {report[key]}" for key in ("max_abs_logit", "top1_agreement", "mean_kl", "vision_cosine") if key in report)
        raise StepFailed(
            f"parity check failed: {'; '.join(failures)} (measured: {measured}); "
            "use a lighter quantization recipe or relax the thresholds under parity"
        )
