"""What every toolchain's parity step shares: the figures a parity report may carry with their
thresholds (FIGURES, also what `build` prints), running the phases of parity_phases.PHASES each in
its own worker process, and the gate that records parity.json and fails the build on a missed
threshold. Light: imports only the standard library, `errors`, `steps.base` and `steps.workers`
(the phases themselves, with numpy and torch, run in the workers)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.workers import launch

# (figure in the report, what the screen calls it, its threshold under `parity`, the comparison the
# threshold makes, the format it is printed with; a figure without a threshold is reported only).
# The screen shows what the lock records (figures.py): agreements as they are, errors and ratios as
# upper bounds, similarities as lower bounds.
FIGURES = (
    ("top1_agreement", "top-1 agreement", "min_top1_agreement", "≥", ".4g"),
    ("mean_kl", "mean KL", "max_kl", "≤", ".2g"),
    ("p99_kl", "p99 KL", None, "≤", ".2g"),
    ("perplexity_ratio", "perplexity ratio", None, "≤", ".5g"),
    ("max_abs_logit", "max |logit difference|", "max_abs_logit", "≤", ".2g"),
    ("vision_cosine", "vision cosine", "min_vision_cosine", "≥", ".4g"),
    ("image_token_agreement", "image answers through the runtime", "min_image_token_agreement", "≥", ".4g"),
)


def references_dir(request: dict) -> Path:
    """Where a parity job finds the reference's files (the parity_reference step's outputs)."""
    directory = Path(request["scratch_dir"]) / "references"
    directory.mkdir(exist_ok=True)
    return directory


def take_reference(context: StepContext, request: dict) -> dict:
    """Put the parity_reference step's outputs (input `reference`) where the phases read them;
    returns what the phases are handed: the test cards and, where computed, PyTorch's image answers."""
    directory = references_dir(request)
    handoff: dict = {"cards": []}
    for relative, item in sorted(context.inputs["reference"].items()):
        if relative == "reference.json":
            handoff |= json.loads(item.path.read_text())
        elif relative.endswith(".png"):
            handoff["cards"].append(str(item.path.resolve()))
        else:
            (directory / relative).symlink_to(item.path.resolve())
    return handoff


def run_phases(request: dict, phases: list[str], scratch: Path, progress, module: str) -> tuple[dict, dict]:
    """Each phase in its own worker process (parity_phases.PHASES), each handed what the earlier ones
    returned: (the report, the measurements: seconds summed, peaks of the largest phase). Shared by
    the toolchains' parity steps."""
    report, handoff, seconds, peaks = {}, {}, 0.0, {"peak_rss_bytes": 0, "peak_anonymous_bytes": 0}
    for phase in phases:
        result = launch(request | handoff | {"phase": phase}, scratch, progress, f"parity check ({phase.replace('_', ' ')})", module)
        report.update(result.get("report", {}))
        handoff.update(result.get("handoff", {}))
        seconds += result["seconds"]
        peaks = {key: max(value, result.get(key, 0)) for key, value in peaks.items()}
    return report, peaks | {"seconds": round(seconds, 3)}


def gate(context: StepContext, report: dict, thresholds: dict, advice: str) -> None:
    """Write parity.json (the report, rounded, with the thresholds and the verdict) and raise
    StepFailed naming each missed threshold. Shared by the toolchains' parity steps."""
    failures = []
    for metric, _label, threshold, sign, _style in FIGURES:
        limit = thresholds.get(threshold)
        if limit is None:
            continue
        value = report.get(metric)
        passes = value is not None and not (isinstance(value, float) and math.isnan(value)) and (value <= limit if sign == "≤" else value >= limit)
        if not passes:
            failures.append(f"{metric} = {value} (required {sign} {limit})")
    # Recorded to 4 significant digits: the figures move in the 6th digit from run to run on one
    # machine (thread scheduling in the float reductions) while the graphs are byte-identical, and
    # the report is an output whose bytes must repeat. The gate above uses the full values.
    recorded = {key: (float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else value) for key, value in report.items()}
    recorded |= {"thresholds": thresholds, "passed": not failures}
    context.output("parity.json").write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    if failures:
        measured = ", ".join(f"{key} {report[key]}" for key, *_ in FIGURES if key in report)
        raise StepFailed(
            f"parity check failed: {'; '.join(failures)} (measured: {measured}); "
            f"{advice}"
        )
