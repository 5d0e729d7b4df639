"""Step `onnx_export`: one part of a Gemma 3 checkpoint as ONNX, in the worker process
(steps/onnx/worker.py). Part `text`: the decoder with its KV cache through onnxruntime-genai's model
builder (model.onnx, model.onnx.data, genai_config.json, tokenizer files), its RoPE caches and norm gains
checked against transformers' (steps/onnx/genai_builder.py); the builder quantizes it itself (precision, block
size). Part `vision`: vision.onnx (tower + projector) and embedding.onnx, float, through
torch.onnx.export (dynamo), the vision attention computed in groups of heads (attention_heads_per_group,
targets/onnx.py: no tensor above WebGPU's default binding size); their quantization is a later step."""

from __future__ import annotations

import json

from modelforge.steps.base import StepContext
from modelforge.steps.onnx.worker import MODULE
from modelforge.steps.workers import job_request, run_job

KIND = "onnx_export"
VERSION = 4
TOOLS = ("onnxruntime-genai", "onnxruntime", "onnx", "onnx-ir", "onnxscript", "torch", "transformers")  # the builder quantizes with onnxruntime's MatMulNBits quantizer
KEEP = True  # only a full re-export (the model in memory) makes its outputs again: a store budget drops them last
REPORT = "export_report.json"  # recorded in the lock under `checks` (the text decoder's RoPE check; genai_builder.py)


def run(context: StepContext) -> None:
    """params: {part: text, precision: fp32|int8|int4, block_size, context_length, exclude_embeds}
    or {part: vision, attention_heads_per_group}."""
    params = context.params
    request = job_request(context, "export", checkpoint=str(context.input_dir("checkpoint")), **params)
    result = run_job(context, request, f"onnx export {params['part']}", MODULE)
    if result.get("report"):
        context.output("export_report.json").write_text(json.dumps(result["report"], indent=1, sort_keys=True) + "\n")
