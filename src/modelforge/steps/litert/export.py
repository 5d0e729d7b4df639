"""Step `litert_export`: trace and convert one part of the model (the text decoder with its
prefill/decode signatures, or the vision encoder and adapter) to float .tflite with litert-torch.
Quantization is a later step, so a recipe change never re-traces."""

from __future__ import annotations

import json

from modelforge.steps.base import StepContext
from modelforge.steps.litert.worker import MODULE
from modelforge.steps.workers import job_request, run_job

KIND = "litert_export"
VERSION = 2
TOOLS = ("litert-torch", "litert-converter", "torch", "transformers", "tensorflow-cpu")
KEEP = True  # only a full re-export (the model in memory) makes its outputs again: a store budget drops them last
# ExportableModuleConfig's own defaults, for the vision part whose graphs do not depend on them.
VISION_PLACEHOLDER = {"prefill_lengths": [128], "cache_length": 4096}


def run(context: StepContext) -> None:
    """params: {part: text|vision, task, hoists}; for the text part only, {prefill_lengths,
    cache_length}; for the vision part, image_input: 'runtime' (the graph takes the LiteRT-LM
    runtime's [0, 1] pixels and applies the source's image processor normalization itself; see
    image_input.py)."""
    params = context.params
    request = job_request(
        context, "export", checkpoint=str(context.input_dir("checkpoint")), part=params["part"], task=params["task"],
        # The vision exportables (litert_torch/generative/export_hf/model_ext/gemma3/vision_exportable.py)
        # never read these; the worker's config still wants values, so it gets litert-torch's defaults.
        prefill_lengths=params.get("prefill_lengths", VISION_PLACEHOLDER["prefill_lengths"]),
        cache_length=params.get("cache_length", VISION_PLACEHOLDER["cache_length"]),
        hoists=params["hoists"], image_input=params.get("image_input"),
    )
    result = run_job(context, request, f"export {params['part']}", MODULE)
    # The report is an output (hoists are tested through it), so it holds no timings: bytes must repeat.
    report = {"hoists": result["hoists"]}
    if "image_input" in result:  # the affine map put in front of the vision tower
        report["image_input"] = result["image_input"]
    context.output("export_report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
