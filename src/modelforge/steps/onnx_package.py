"""Step `onnx_package`: the onnx target's directory in onnxruntime-genai's layout: the decoder's
files as the builder wrote them and, for a multimodal target, vision.onnx and embedding.onnx beside
them with genai_config.json naming them (model.type gemma3: onnxruntime-genai runs a text prompt
through embedding.onnx, then the decoder). Cheap: no model library, bytes pass through."""

from __future__ import annotations

import json

from modelforge.steps.base import StepContext

KIND = "onnx_package"
VERSION = 1
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    """params: {multimodal, image_token_id}; inputs: decoder, and for a multimodal target vision
    and embedding (each an .onnx file and its .data)."""
    params = context.params
    for name, files in sorted(context.inputs.items()):
        for relative in sorted(files):
            if relative in ("genai_config.json", "export_report.json"):
                continue
            context.pass_through(name, relative)
    config = json.loads(context.input_path("decoder", "genai_config.json").read_text())
    if params["multimodal"]:
        model = config["model"]
        model["vision"] = {"filename": "vision.onnx", "inputs": {"pixel_values": "pixel_values"}, "outputs": {"image_features": "image_features"}}
        model["embedding"] = {
            "filename": "embedding.onnx", "inputs": {"input_ids": "input_ids", "image_features": "image_features"},
            "outputs": {"inputs_embeds": "inputs_embeds"},
        }
        model["image_token_id"] = params["image_token_id"]
    context.output("genai_config.json").write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
