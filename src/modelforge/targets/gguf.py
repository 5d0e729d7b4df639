"""Target `gguf`: the model for llama.cpp and what is built on it (Ollama, LM Studio, Jan, llamafile).
llama.cpp's own converter and quantizer, both from the pinned llama-cpp-python source
(steps/gguf/converter.py), one step each, so a change of the text type re-runs only the text side::

    checkpoint ─► convert text (F32/F16/BF16/Q8_0) ──[K-quant: ─► quantize (llama.cpp)]──┐
        │                                                                               ├─► package ─► <target>/
        ├──────► convert vision + projector ─► mmproj (image_text_to_text) ──────────────┤   (GGUFs, Modelfile)
        └──────► chat template (the Modelfile's TEMPLATE is checked against it) ─────────┘
                       (parity: checkpoint + GGUFs in llama.cpp and its mtmd → report in the lock)

Imports its spec, `plan`, `plan_builder`, `gemma3` and its steps (steps/gguf/).
"""

from __future__ import annotations

from modelforge.errors import PlanError
from modelforge.gemma3 import PART_COMPONENTS, check_source_architecture, check_task_components, plan_reference, predict_memory, predict_streamed_memory
from modelforge.manifest.targets.gguf import GgufTarget
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder, source_input
from modelforge.steps.gguf import convert as gguf_convert
from modelforge.steps.gguf import converter as gguf_converter
from modelforge.steps.gguf import package as gguf_package
from modelforge.steps.gguf import parity as gguf_parity
from modelforge.steps.gguf import quantize as gguf_quantize

KIND = "gguf"
COMPONENTS = ("text_decoder", "vision_encoder", "projector")
CHAT_FILES = ("chat_template.jinja", "tokenizer_config.json")
# The manifest's sampler as Ollama's PARAMETERs (modelfile.SAMPLER_PARAMETERS names them).
SAMPLERS = {
    "top_k": lambda sampler: {"k": sampler.k, "p": sampler.p, "temperature": sampler.temperature},
    "top_p": lambda sampler: {"p": sampler.p, "temperature": sampler.temperature},
    "greedy": lambda sampler: {"temperature": 0},
}


def plan(builder: PlanBuilder, target: str, spec: GgufTarget) -> str:
    where = builder.where(target)
    multimodal = check_source_architecture(builder, where, spec.task, "llama.cpp's converter")
    check_task_components(where, spec.task, spec.components, multimodal, needs="converts", lacks="writes no GGUF for")
    files = {item.path for item in builder.facts.files}
    checkpoint = source_input(builder, sorted(files))
    checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
    name = spec.file or builder.manifest.name
    converted = {"name": name, "converter": gguf_converter.SDIST_SHA256}
    float_type = spec.type if spec.type in gguf_convert.OUTTYPES else "F32"
    text = builder.add(StepNode.make(
        f"{target}.convert_text", gguf_convert.KIND, gguf_convert.VERSION, converted | {"part": "text", "type": float_type},
        (checkpoint,), gguf_convert.TOOLS,
    ))
    predict_streamed_memory(builder, text, "gguf_convert_text", PART_COMPONENTS["text"])
    if spec.type != float_type:
        text = builder.add(StepNode.make(
            f"{target}.quantize", gguf_quantize.KIND, gguf_quantize.VERSION, {"type": spec.type},
            (InputRef("gguf", text, ("model.gguf",)),), gguf_quantize.TOOLS,
        ))
        predict_streamed_memory(builder, text, "gguf_quantize", PART_COMPONENTS["text"])
    inputs = [InputRef("text", text, ("model.gguf",))]
    vision = None
    if multimodal:
        vision = builder.add(StepNode.make(
            f"{target}.convert_vision", gguf_convert.KIND, gguf_convert.VERSION, converted | {"part": "vision", "type": spec.vision_type},
            (checkpoint,), gguf_convert.TOOLS,
        ))
        predict_memory(builder, vision, "gguf_convert_vision", PART_COMPONENTS["vision"])
        inputs.append(InputRef("vision", vision, ("mmproj.gguf",)))
    chat = tuple(sorted({spec.metadata.chat_template, *CHAT_FILES} & files))
    if not chat:
        raise PlanError(f"{where}: the source has no chat template ({spec.metadata.chat_template} or tokenizer_config.json) for the Modelfile's TEMPLATE; add it to the source")
    inputs.append(InputRef("checkpoint", checkpoint.node, chat))
    sampler = spec.metadata.sampler
    package = builder.add(StepNode.make(
        f"{target}.package", gguf_package.KIND, gguf_package.VERSION,
        {"file": name, "text_type": spec.type, "vision_type": spec.vision_type if multimodal else None,
         "stop": list(spec.metadata.stop_tokens), "bos_token": spec.metadata.start_token, "chat_template": spec.metadata.chat_template,
         "sampler": SAMPLERS[sampler.type](sampler),
         "num_ctx": spec.context_length},
        tuple(inputs), gguf_package.TOOLS,
    ))
    if spec.parity is not None:
        parity = spec.parity
        # PyTorch's side, shared with every other target's parity on the same prompts (one float32 load).
        reference = plan_reference(builder, checkpoint, list(parity.prompts), parity.steps, multimodal)
        builder.add(StepNode.make(
            f"{target}.parity", gguf_parity.KIND, gguf_parity.VERSION,
            {"prompts": list(parity.prompts), "steps": parity.steps, "thresholds": {
                "max_abs_logit": parity.max_abs_logit, "min_top1_agreement": parity.min_top1_agreement, "max_kl": parity.max_kl,
                "min_vision_cosine": parity.min_vision_cosine}},
            (checkpoint, reference, InputRef("gguf", text, ("model.gguf",)), *([InputRef("mmproj", vision, ("mmproj.gguf",))] if vision else [])),
            gguf_parity.TOOLS,
        ))
    return package
