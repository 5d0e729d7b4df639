"""Step `litert_quantize`: apply one component's ai-edge-quantizer recipe (plus regex-scoped
overrides) to that component's float graphs."""

from __future__ import annotations

import shutil

from modelforge.steps.base import StepContext
from modelforge.steps.litert_worker import launch

KIND = "litert_quantize"
VERSION = 1
TOOLS = ("ai-edge-quantizer", "ai-edge-litert")


def run(context: StepContext) -> None:
    """params: {component, recipe, overrides: [{regex, recipe}], files: [...]}."""
    params = context.params
    work = context.scratch_dir / "quantized"
    work.mkdir()
    request = {
        "action": "quantize",
        "input_dir": str(context.input_dir("models")),
        "work_dir": str(work),
        "recipe": params["recipe"],
        "overrides": params["overrides"],
        "files": params["files"],
    }
    result = launch(request, context.scratch_dir, context.progress, f"quantize {params['component']} ({params['recipe']})")
    for name, path in sorted(result["files"].items()):
        shutil.move(path, context.output(name))
    context.measurements.update({"seconds": result["seconds"], "peak_rss_bytes": result["peak_rss_bytes"]})
