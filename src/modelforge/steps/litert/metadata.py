"""Step `litertlm_metadata`: the LlmMetadata protobuf the LiteRT-LM runtime reads (start and stop
tokens, chat template, max tokens, sampler, model type and image size), from the manifest and the
checkpoint's chat template and image processor config. Serialized deterministically."""

from __future__ import annotations

import json

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "litertlm_metadata"
VERSION = 1
TOOLS = ("litert-lm-builder", "protobuf")


def run(context: StepContext) -> None:
    """params: {start_token, stop_tokens, max_tokens, sampler: {type,k,p,temperature}, chat_template,
    multimodal, image_tokens: {start, end}}."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    params = context.params
    metadata = llm_metadata_pb2.LlmMetadata()
    metadata.start_token.token_str = params["start_token"]
    for token in params["stop_tokens"]:
        metadata.stop_tokens.add().token_str = token
    metadata.max_num_tokens = params["max_tokens"]
    template_file = params["chat_template"]
    if template_file not in context.inputs["checkpoint"]:
        raise StepFailed(f"the checkpoint has no {template_file}; set metadata.chat_template to the file with the chat template")
    metadata.jinja_prompt_template = context.input_path("checkpoint", template_file).read_text()
    sampler = params["sampler"]
    metadata.sampler_params.type = {
        "top_k": sampler_params_pb2.SamplerParameters.TOP_K,
        "top_p": sampler_params_pb2.SamplerParameters.TOP_P,
        "greedy": sampler_params_pb2.SamplerParameters.GREEDY,
    }[sampler["type"]]
    metadata.sampler_params.k = sampler["k"]
    metadata.sampler_params.p = sampler["p"]
    metadata.sampler_params.temperature = sampler["temperature"]
    if params["multimodal"]:
        # litert-torch writes the Gemma3n type for Gemma 3 vision models: it carries the image fields.
        model_type = metadata.llm_model_type.gemma3n
        model_type.start_of_image_token.token_str = params["image_tokens"]["start"]
        model_type.end_of_image_token.token_str = params["image_tokens"]["end"]
        processor = json.loads(context.input_path("checkpoint", "preprocessor_config.json").read_text())
        size = processor.get("size", {})
        model_type.image_tensor_height = size.get("height", 896)
        model_type.image_tensor_width = size.get("width", 896)
    else:
        metadata.llm_model_type.gemma3.SetInParent()
    context.output("llm_metadata.pb").write_bytes(metadata.SerializeToString(deterministic=True))
    context.output("llm_metadata.txt").write_text(_text(metadata))


def _text(metadata) -> str:
    """Human-readable metadata (the chat template abbreviated), for reviewers and snapshots."""
    from google.protobuf import text_format

    copy = type(metadata)()
    copy.CopyFrom(metadata)
    copy.jinja_prompt_template = f"<{len(metadata.jinja_prompt_template)} characters>"
    return text_format.MessageToString(copy)
