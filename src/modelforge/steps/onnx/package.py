"""Step `onnx_package`: the onnx target's directory in onnxruntime-genai's layout: the decoder's
files as the builder wrote them and, for a multimodal target, vision.onnx and embedding.onnx beside
them with genai_config.json naming them (model.type gemma3: onnxruntime-genai runs a text prompt
through embedding.onnx, then the decoder) and, where onnxruntime-genai's Gemma 3 image pipeline fits
the model, processor_config.json: the source's image preprocessing in onnxruntime-extensions' form.
Cheap: no model library, bytes pass through. Imports errors and steps.base only.

onnxruntime-genai 0.18.0's Gemma 3 image pipeline (src/models/gemma_image_processor.cpp,
ProcessImagePrompt) expands each `<start_of_image>` of the prompt into
"\\n\\n<start_of_image>" + 256 × "<image_soft_token>" + "<end_of_image>\\n\\n", as transformers'
Gemma3Processor does, but with the 256 fixed in the code (`image_seq_length = 256`), not read from
any config: a model whose projector gives another number of tokens per image (config.json
mm_tokens_per_image) gets prompts that do not match its vision graph. Such a package has no
processor_config.json (the planner decides, targets/onnx.py); its images go through onnxruntime
directly."""

from __future__ import annotations

import json
from typing import Any

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "onnx_package"
VERSION = 2
TOOLS: tuple[str, ...] = ()
# The image tokens per image onnxruntime-genai's Gemma 3 pipeline puts in a prompt (see above).
GENAI_GEMMA3_IMAGE_TOKENS = 256
PROCESSOR_CONFIG = "processor_config.json"
# PIL's resampling filters (the numbers transformers stores as `resample`) that onnxruntime-extensions'
# Resize implements, by its name for them (shared/api/image_transforms.hpp, Resize::InterpolationMethods).
RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "LINEAR", 3: "CUBIC"}


def run(context: StepContext) -> None:
    """params: {multimodal, image_token_id, genai_image_processor}; inputs: decoder, and for a
    multimodal target vision and embedding (each an .onnx file and its .data), and for
    genai_image_processor the source's preprocessor_config.json (input `preprocessor`)."""
    params = context.params
    for name, files in sorted(context.inputs.items()):
        if name == "preprocessor":
            continue
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
        if params.get("genai_image_processor"):
            source = context.input_path("preprocessor", "preprocessor_config.json")
            processor = processor_config(json.loads(source.read_text()), "the source's preprocessor_config.json")
            context.output(PROCESSOR_CONFIG).write_text(json.dumps(processor, indent=4, sort_keys=True) + "\n")
            model["vision"]["config_filename"] = PROCESSOR_CONFIG
    context.output("genai_config.json").write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")


def processor_config(preprocessor: dict[str, Any], where: str) -> dict[str, Any]:
    """onnxruntime-extensions' processor_config.json doing what transformers' Gemma3ImageProcessor
    does with `preprocessor` (a preprocessor_config.json): decode to RGB, resize to size with the
    same PIL filter (onnxruntime-extensions' Resize is a port of PIL's resampling), rescale,
    normalize, channels first. Raises StepFailed for a setting it cannot express."""

    def setting(key: str) -> Any:
        if preprocessor.get(key) is None:
            raise StepFailed(f"{where} has no {key!r}: onnxruntime-genai's image preprocessing needs it spelled out; add it "
                             "(transformers' Gemma3ImageProcessor default) to preprocessor_config.json")
        return preprocessor[key]

    kind = preprocessor.get("image_processor_type", "")
    if not kind.startswith("Gemma3ImageProcessor"):
        raise StepFailed(f"{where}: image_processor_type {kind!r} is not Gemma3ImageProcessor; the onnx target writes "
                         "onnxruntime-genai's preprocessing for Gemma 3 only")
    if preprocessor.get("do_pan_and_scan"):
        raise StepFailed(f"{where}: do_pan_and_scan is true, and onnxruntime-genai's Gemma 3 pipeline takes one crop per image; "
                         "set do_pan_and_scan to false")
    transforms: list[dict[str, Any]] = [{"name": "decode_image", "type": "DecodeImage", "attrs": {"color_space": "RGB"}}]
    if setting("do_resize"):
        size, resample = setting("size"), setting("resample")
        if resample not in RESAMPLE or not isinstance(size, dict) or set(size) != {"height", "width"}:
            raise StepFailed(f"{where}: resize to {size!r} with PIL filter {resample!r} has no onnxruntime-extensions equivalent; "
                             f"use size {{height, width}} and resample one of {sorted(RESAMPLE)}")
        transforms.append({"name": "resize", "type": "Resize", "attrs": {
            "height": int(size["height"]), "width": int(size["width"]), "interpolation": RESAMPLE[resample], "keep_aspect_ratio": 0}})
    if setting("do_rescale"):
        transforms.append({"name": "rescale", "type": "Rescale", "attrs": {"rescale_factor": float(setting("rescale_factor"))}})
    if setting("do_normalize"):
        mean, std = _channels(setting("image_mean"), where), _channels(setting("image_std"), where)
        transforms.append({"name": "normalize", "type": "Normalize", "attrs": {"mean": mean, "std": std}})
    transforms.append({"name": "to_channel_first", "type": "Permute3D", "attrs": {"dims": [2, 0, 1]}})
    return {"processor": {"name": "gemma_3_image_processing", "transforms": [{"operation": item} for item in transforms]}}


def _channels(value: Any, where: str) -> list[float]:
    values = [float(item) for item in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise StepFailed(f"{where}: expected 3 per-channel values, got {value!r}; give one per RGB channel")
    return values
