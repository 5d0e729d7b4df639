"""Target `litertlm`: a LiteRT-LM bundle. Each stage is its own step with its own key, so a change
of the vision recipe re-runs only the vision quantization, the packaging and the parity check::

    checkpoint ─► export text ──► quantize text_decoder ──┐
        │                                                 ├─► package ─► <file>.litertlm
        ├──────► export vision ─► quantize vision_encoder ┤
        │                       └► quantize projector ────┤
        └──────► metadata ────────────────────────────────┘
                                  (parity: checkpoint + final graphs → report in the lock)

Imports its spec, `plan`, `plan_builder`, `gemma3` and its steps (steps/litert/); reaches the
hf_text_only target it may export through PlanBuilder.target.
"""

from __future__ import annotations

import os

from modelforge.errors import PlanError
from modelforge.manifest.parts import QuantizationSpec
from modelforge.manifest.targets.litertlm import LitertlmTarget
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder, source_input
from modelforge.gemma3 import IMAGE_TOKENS, check_source_architecture, plan_reference, predict_export_memory, predict_memory
from modelforge.steps.litert import export as litert_export
from modelforge.steps.litert import metadata as litertlm_metadata
from modelforge.steps.litert import package as litertlm_package
from modelforge.steps.litert import parity as litert_parity
from modelforge.steps.litert import quantize as litert_quantize

KIND = "litertlm"

# Which graphs hold which component's weights, per export part.
COMPONENT_FILES = {
    "text_decoder": ("text", ("model.tflite", "embedder.tflite")),
    "vision_encoder": ("vision", ("vision_encoder.tflite",)),
    "projector": ("vision", ("vision_adapter.tflite",)),
}
SECTION_TYPES = {
    "model.tflite": "PREFILL_DECODE",
    "embedder.tflite": "EMBEDDER",
    "vision_encoder.tflite": "VISION_ENCODER",
    "vision_adapter.tflite": "VISION_ADAPTER",
}


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH (reproducible-builds.org) if set, else 0: the only outside input packaging
    takes, resolved here so that it is a parameter of the step and part of its key."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        raise PlanError(f"SOURCE_DATE_EPOCH={value!r} is not a whole number of seconds; unset it or fix it")
    return int(value)


def checkpoint_input(builder: PlanBuilder, target: str, spec: LitertlmTarget) -> tuple[InputRef, list[str]]:
    """The checkpoint a litertlm target exports (the source, or an hf_text_only target's output),
    and the source files it selects (none for a text-only checkpoint)."""
    if spec.checkpoint == "source":
        files = [item.path for item in builder.facts.files]
        return source_input(builder, files), files
    # An hf_text_only target of the same manifest: its planned node is named after it.
    node = builder.target("hf_text_only").plan(builder, spec.checkpoint, builder.manifest.targets[spec.checkpoint])
    return InputRef("checkpoint", node), []


def plan(builder: PlanBuilder, target: str, spec: LitertlmTarget) -> str:
    where = builder.where(target)
    if spec.task == "image_text_to_text" and spec.checkpoint != "source":
        raise PlanError(f"{where}: task image_text_to_text needs the multimodal source, not the text-only {spec.checkpoint!r}; set checkpoint: source")
    multimodal = check_source_architecture(builder, where, spec.task, "litert-torch's export_hf")
    unknown = [c for c in spec.components if c not in COMPONENT_FILES]
    if unknown:
        raise PlanError(f"{where}: component {unknown[0]!r} has no graph in a litertlm bundle; use {', '.join(COMPONENT_FILES)}")
    checkpoint, _ = checkpoint_input(builder, target, spec)
    checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
    exports = plan_exports(builder, target, spec)
    parts = list(exports)
    sections: list[list[str]] = []
    graph_inputs: list[InputRef] = []
    final_by_part: dict[str, list[InputRef]] = {part: [] for part in parts}
    for component in ("text_decoder", "vision_encoder", "projector"):
        part, _ = COMPONENT_FILES[component]
        if part not in parts:
            continue
        if component not in spec.components:
            raise PlanError(f"{where}: task {spec.task} bundles component {component!r}; add it to components")
        ref = plan_component(builder, target, spec, exports, component, spec.quantization.get(component))
        graph_inputs.append(ref)
        final_by_part[part].append(ref)
        sections += [[component, name, SECTION_TYPES[name]] for name in component_files(spec, component)]
    metadata_files = [spec.metadata.chat_template] + (["preprocessor_config.json"] if multimodal else [])
    if checkpoint.node == builder.source.name:
        present = {item.path for item in builder.facts.files}
        if spec.metadata.chat_template not in present:
            raise PlanError(
                f"{where}: metadata.chat_template {spec.metadata.chat_template!r} is not a file of the source; "
                "take it with source.files or name the file that holds the chat template"
            )
        missing = [name for name in metadata_files + ["tokenizer.json"] if name not in present]
        if missing:
            raise PlanError(
                f"{where}: the source has no {', '.join(missing)}, which the bundle's metadata and tokenizer need; "
                "take it with source.files or set metadata.chat_template to the file that has the template"
            )
    metadata = builder.add(StepNode.make(
        f"{target}.metadata", litertlm_metadata.KIND, litertlm_metadata.VERSION,
        {
            "start_token": spec.metadata.start_token, "stop_tokens": list(spec.metadata.stop_tokens),
            "max_tokens": spec.metadata.max_tokens or spec.cache_length, "sampler": spec.metadata.sampler.model_dump(mode="json"),
            "chat_template": spec.metadata.chat_template, "multimodal": multimodal, "image_tokens": IMAGE_TOKENS,
        },
        (InputRef("checkpoint", checkpoint.node, tuple(sorted(metadata_files)) if checkpoint.node == builder.source.name else None),),
        litertlm_metadata.TOOLS,
    ))
    # Section order is fixed: text graphs, then vision, as the runtime expects them.
    order = {"model.tflite": 0, "embedder.tflite": 1, "vision_encoder.tflite": 2, "vision_adapter.tflite": 3}
    sections.sort(key=lambda section: order[section[1]])
    tokenizer_input = InputRef("tokenizer", checkpoint.node, ("tokenizer.json",) if checkpoint.node == builder.source.name else None)
    package = builder.add(StepNode.make(
        f"{target}.package", litertlm_package.KIND, litertlm_package.VERSION,
        {"file": spec.file, "source_date_epoch": source_date_epoch(), "tokenizer": {"input": "tokenizer", "file": "tokenizer.json", "kind": "hf"}, "sections": sections},
        (InputRef("metadata", metadata), tokenizer_input, *graph_inputs),
        litertlm_package.TOOLS,
    ))
    if spec.parity is not None:
        answers = {"stop_tokens": list(spec.metadata.stop_tokens)} if multimodal else None  # the runtime's image answers are gated
        inputs = [checkpoint, plan_reference(builder, checkpoint, spec.parity.prompts, spec.parity.steps, multimodal, answers,
                                                 spec.metadata.chat_template)]
        for part, refs in final_by_part.items():
            inputs += [InputRef(part if index == 0 else f"{part}{index}", ref.node, ref.select) for index, ref in enumerate(refs)]
        if multimodal:  # images are checked through the runtime, on the bundle as shipped
            inputs.append(InputRef("bundle", package))
        builder.add(StepNode.make(
            f"{target}.parity", litert_parity.KIND, litert_parity.VERSION, parity_params(spec, runtime=multimodal),
            tuple(inputs), litert_parity.TOOLS,
        ))
    return package


def parity_params(spec: LitertlmTarget, runtime: bool) -> dict:
    """The parity step's parameters from the target's parity spec. Without the runtime (graphs
    checked in the interpreter only: a web variant's) there are no image answers to gate."""
    parity = spec.parity
    thresholds = {
        "max_abs_logit": parity.max_abs_logit, "min_top1_agreement": parity.min_top1_agreement,
        "max_kl": parity.max_kl, "min_vision_cosine": parity.min_vision_cosine,
    }
    if runtime:
        thresholds["min_image_token_agreement"] = parity.min_image_token_agreement
    return {"prompts": list(parity.prompts), "steps": parity.steps, "stop_tokens": list(spec.metadata.stop_tokens), "thresholds": thresholds}


def plan_exports(builder: PlanBuilder, target: str, spec: LitertlmTarget) -> dict[str, str]:
    """The export steps of a litertlm target, by part ('text', and 'vision' for image_text_to_text).
    Other targets (web_bundle's LiteRT.js variants) call this to share the very same nodes."""
    checkpoint, _ = checkpoint_input(builder, target, spec)
    checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
    parts = ["text"] + (["vision"] if spec.task == "image_text_to_text" else [])
    exports = {}
    for part in parts:
        params = {"part": part, "task": spec.task, "hoists": [hoist.model_dump(mode="json") for hoist in spec.hoists]}
        if part == "text":
            # Only the text graphs have prefill signatures and a KV cache: a parameter the vision
            # graphs never read would re-export them (and re-quantize them) for nothing.
            params |= {"prefill_lengths": list(spec.prefill_lengths), "cache_length": spec.cache_length}
        else:
            # The runtime feeds [0, 1] pixels and cannot be told to normalize (steps/image_input.py):
            # the vision graph applies the source's preprocessor_config.json normalization itself.
            params["image_input"] = "runtime"
        exports[part] = builder.add(StepNode.make(
            f"{target}.export_{part}", litert_export.KIND, litert_export.VERSION, params, (checkpoint,), litert_export.TOOLS,
        ))
    for part, step in exports.items():
        predict_export_memory(builder, step, part, spec.cache_length)
    return exports


def component_files(spec: LitertlmTarget, component: str) -> list[str]:
    """The graph files holding `component`'s weights in a litertlm target's exports."""
    part, candidates = COMPONENT_FILES[component]
    multimodal = spec.task == "image_text_to_text"
    part_files = {"text": ["model.tflite"] + (["embedder.tflite"] if multimodal else []), "vision": ["vision_encoder.tflite", "vision_adapter.tflite"]}
    return [name for name in candidates if name in part_files[part]]


def plan_component(
    builder: PlanBuilder, target: str, spec: LitertlmTarget, exports: dict[str, str], component: str,
    quantization: QuantizationSpec | None, name: str | None = None,
) -> InputRef:
    """`component`'s final graphs: the export's own files when `quantization` is absent or none,
    else a quantize step (named `<target>.quantize.<component>` unless `name` says otherwise; the
    same recipe under the same name is the same node, so every target asking for it shares it)."""
    part, _ = COMPONENT_FILES[component]
    files = component_files(spec, component)
    if quantization is None or quantization.recipe == "none":
        return InputRef(component, exports[part], tuple(files))
    node = builder.add(StepNode.make(
        name or f"{target}.quantize.{component}", litert_quantize.KIND, litert_quantize.VERSION,
        {"recipe": quantization.recipe, "files": files,
         "overrides": [override.model_dump(mode="json") for override in quantization.overrides]},
        (InputRef("models", exports[part], tuple(files)),), litert_quantize.TOOLS,
    ))
    predict_memory(builder, node, "quantize", (component,))
    return InputRef(component, node)
