"""Step `litert_quantize`: apply one component's ai-edge-quantizer recipe (plus regex-scoped
overrides) to that component's float graphs."""

from __future__ import annotations

from modelforge.steps.base import StepContext
from modelforge.steps.litert.worker import MODULE
from modelforge.steps.workers import job_request, run_job

KIND = "litert_quantize"
VERSION = 1
TOOLS = ("ai-edge-quantizer", "ai-edge-litert")


def run(context: StepContext) -> None:
    """params: {recipe, overrides: [{regex, recipe}], files: [...]}. The component's name is not a
    parameter: it changes no byte, and the step's name in the plan already says which it is."""
    params = context.params
    request = job_request(
        context, "quantize", input_dir=str(context.input_dir("models")), recipe=params["recipe"],
        overrides=params["overrides"], files=params["files"],
    )
    run_job(context, request, f"quantize {', '.join(params['files'])} ({params['recipe']})", MODULE)
