"""Target `onnx`: the model for ONNX Runtime (Windows laptops through DirectML, Android and iOS
through ONNX Runtime Mobile, the browser through onnxruntime-web) in onnxruntime-genai's layout.
Each stage is its own step, so a change of the vision precision re-runs only the vision
quantization, the packaging and the parity check::

    checkpoint ─► export text (genai builder, precision of text_decoder) ─────────────┐
        │                                                                            │
        ├──────► export vision (vision.onnx, embedding.onnx) ─► quantize vision.onnx ─┤
        │                                 └─► int4 embedding.onnx (int4 text only) ───┼─► package ─► <target>/
        └──────► preprocessor_config.json (for onnxruntime-genai's image pipeline) ────┘
                                  (parity: checkpoint + package → report in the lock)

Imports its spec, `plan`, `plan_builder`, `gemma3`, `memory` and its steps (steps/onnx/).
"""

from __future__ import annotations

from modelforge import memory
from modelforge.errors import PlanError
from modelforge.manifest.targets.onnx import OnnxPrecisionSpec, OnnxTarget
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder, source_input
from modelforge.gemma3 import PART_COMPONENTS, check_source_architecture, check_task_components, plan_reference
from modelforge.steps.onnx import export as onnx_export
from modelforge.steps.onnx import package as onnx_package
from modelforge.steps.onnx import parity as onnx_parity
from modelforge.steps.onnx import quantize as onnx_quantize

KIND = "onnx"
COMPONENTS = ("text_decoder", "vision_encoder", "projector")
# The most bytes one group of the vision attention's heads may hold in scores: WebGPU's default
# maxStorageBufferBindingSize, which every adapter offers. MedGemma's SigLIP (16 heads over 4,096
# patches) would hold 1 GiB in one layer's scores, all of SwiftShader's largest buffer and more than
# many GPUs bind; in groups of 2 heads, 128 MiB (docs/web-limits.md).
VISION_ATTENTION_MAX_BYTES = 128 * 2**20


def vision_attention(config: dict) -> dict:
    """How vision.onnx computes the vision tower's attention for a checkpoint's config.json:
    {heads_per_group, bytes: the scores of one group (float32), heads}."""
    vision = config.get("vision_config", {})
    heads = vision.get("num_attention_heads", 16)
    patches = (vision.get("image_size", 896) // vision.get("patch_size", 14)) ** 2
    per_head = patches * patches * 4
    group = max(1, min(heads, VISION_ATTENTION_MAX_BYTES // per_head))
    while heads % group:  # equal groups
        group -= 1
    return {"heads_per_group": group, "bytes": group * per_head, "heads": heads}


def plan(builder: PlanBuilder, target: str, spec: OnnxTarget) -> str:
    where = builder.where(target)
    multimodal = check_source_architecture(builder, where, spec.task, "onnxruntime-genai's builder")
    unknown = [c for c in spec.components if c not in COMPONENTS]
    if unknown:
        raise PlanError(f"{where}: component {unknown[0]!r} has no ONNX graph; use {', '.join(COMPONENTS)}")
    check_task_components(where, spec.task, spec.components, multimodal, needs="builds", lacks="has no graph for")
    checkpoint = source_input(builder, [item.path for item in builder.facts.files])
    checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
    text_precision = spec.precision.get("text_decoder", OnnxPrecisionSpec())
    text_params = {
        "part": "text", "precision": text_precision.precision, "context_length": spec.context_length,
        "block_size": text_precision.blocks if text_precision.precision != "fp32" else None,
        # The multimodal decoder takes inputs_embeds (embedding.onnx puts the image features in).
        "exclude_embeds": multimodal,
    }
    text = builder.add(StepNode.make(f"{target}.export_text", onnx_export.KIND, onnx_export.VERSION, text_params, (checkpoint,), onnx_export.TOOLS))
    predict(builder, text, "onnx_export_text", PART_COMPONENTS["text"])
    inputs = [InputRef("decoder", text)]
    if multimodal:
        vision_params = {"part": "vision", "attention_heads_per_group": vision_attention(builder.facts.config)["heads_per_group"]}
        vision = builder.add(StepNode.make(f"{target}.export_vision", onnx_export.KIND, onnx_export.VERSION, vision_params, (checkpoint,), onnx_export.TOOLS))
        predict(builder, vision, "onnx_export_vision", ("text_decoder", "vision_encoder", "projector"), vision_only=True)
        vision_precision = spec.precision.get("vision_encoder", OnnxPrecisionSpec())
        vision_graph = InputRef("vision", vision, ("vision.onnx", "vision.onnx.data"))
        if vision_precision.precision != "fp32":
            quantized = builder.add(StepNode.make(
                f"{target}.quantize.vision", onnx_quantize.KIND, onnx_quantize.VERSION,
                {"file": "vision.onnx", "precision": vision_precision.precision, "block_size": vision_precision.blocks},
                (InputRef("graph", vision, ("vision.onnx", "vision.onnx.data")),), onnx_quantize.TOOLS,
            ))
            predict(builder, quantized, "onnx_quantize_vision", PART_COMPONENTS["vision"])
            vision_graph = InputRef("vision", quantized)
        embedding_graph = InputRef("embedding", vision, ("embedding.onnx", "embedding.onnx.data"))
        if text_precision.precision == "int4":
            # The token table is the decoder's (tied): int4 like its output head, as the builder
            # writes a text-only int4 decoder's embedding (0.42 GB at 4B instead of 2.69 GB of float32).
            embedding = builder.add(StepNode.make(
                f"{target}.quantize.embedding", onnx_quantize.KIND, onnx_quantize.VERSION,
                {"file": "embedding.onnx", "precision": "int4", "block_size": text_precision.blocks},
                (InputRef("graph", vision, ("embedding.onnx", "embedding.onnx.data")),), onnx_quantize.TOOLS,
            ))
            predict(builder, embedding, "quantize", (), embedding_only=True)
            embedding_graph = InputRef("embedding", embedding)
        inputs += [vision_graph, embedding_graph]
    image_token = builder.facts.config.get("image_token_index") if multimodal else None
    genai_images = multimodal and genai_image_pipeline_fits(builder.facts.config)
    if genai_images:
        if "preprocessor_config.json" not in {item.path for item in builder.facts.files}:
            raise PlanError(f"{where}: task image_text_to_text needs the source's preprocessor_config.json (the image "
                            "preprocessing onnxruntime-genai must repeat); add it to the source")
        inputs.append(InputRef("preprocessor", checkpoint.node, ("preprocessor_config.json",)))
    package = builder.add(StepNode.make(
        f"{target}.package", onnx_package.KIND, onnx_package.VERSION,
        {"multimodal": multimodal, "image_token_id": image_token, "genai_image_processor": genai_images},
        tuple(inputs), onnx_package.TOOLS,
    ))
    if spec.parity is not None:
        parity = spec.parity
        builder.add(StepNode.make(
            f"{target}.parity", onnx_parity.KIND, onnx_parity.VERSION,
            {"prompts": list(parity.prompts), "steps": parity.steps, "multimodal": multimodal, "thresholds": {
                "max_abs_logit": parity.max_abs_logit, "min_top1_agreement": parity.min_top1_agreement,
                "max_kl": parity.max_kl, "min_vision_cosine": parity.min_vision_cosine}},
            (checkpoint, plan_reference(builder, checkpoint, parity.prompts, parity.steps, multimodal), InputRef("target", package)),
            onnx_parity.TOOLS,
        ))
    return package


def genai_image_pipeline_fits(config: dict) -> bool:
    """Whether onnxruntime-genai's Gemma 3 image pipeline can feed this model: it puts a fixed 256
    image tokens per image in the prompt (steps/onnx/package.py), the model's projector gives
    mm_tokens_per_image (Gemma 3's default, 256, when config.json leaves it out)."""
    return config.get("mm_tokens_per_image", onnx_package.GENAI_GEMMA3_IMAGE_TOKENS) == onnx_package.GENAI_GEMMA3_IMAGE_TOKENS


def predict(builder: PlanBuilder, step: str, kind: str, components: tuple[str, ...], vision_only: bool = False,
            embedding_only: bool = False) -> None:
    """The predicted peak anonymous bytes of `step` (memory.py), from the f32 bytes it loads: the
    vision export reads the vision tower, projector and the token embedding, not the decoder layers;
    the embedding's quantization reads the token embedding only."""
    embedding = sum(
        memory.count_parameters({name: info}, builder.owner)
        for name, info in builder.facts.tensors.items() if name.endswith("embed_tokens.weight")
    )
    if embedding_only:
        f32 = memory.F32_BYTES * embedding
    elif vision_only:
        f32 = memory.F32_BYTES * (memory.count_parameters(builder.facts.tensors, builder.owner, PART_COMPONENTS["vision"]) + embedding)
    else:
        f32 = memory.F32_BYTES * memory.count_parameters(builder.facts.tensors, builder.owner, components)
    builder.plan_facts.setdefault("memory", {})[step] = memory.predict(kind, f32)
