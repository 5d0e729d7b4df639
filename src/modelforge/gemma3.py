"""What modelforge knows about Gemma 3 that every target shares: the architectures the exporters
handle, the refusal of a source that is not one (or a text-only one for an image task), which
components each export part loads, the image delimiter tokens, and the predicted peak memory of a
step from the source's tensor headers (memory.py's models), and the PyTorch reference every parity
gate reads (plan_reference). Imports `errors`, `hashing`, `memory`, `plan`, `plan_builder` and the
reference step: targets import it, it imports no target."""

from __future__ import annotations

from modelforge import memory
from modelforge.errors import PlanError
from modelforge.hashing import digest
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder
from modelforge.steps.reference import pytorch as parity_reference

SUPPORTED_ARCHITECTURES = ("Gemma3ForConditionalGeneration", "Gemma3ForCausalLM")
# The tokens that end a Gemma 3 chat turn (the litertlm target's default metadata.stop_tokens).
STOP_TOKENS = ("<eos>", "<end_of_turn>")
# The Gemma 3 image delimiters the runtime looks for (token strings: ids differ between checkpoints).
IMAGE_TOKENS = {"start": "<start_of_image>", "end": "<end_of_image>"}

# The components each export part traces and loads (steps/partial_load.py reads only these).
PART_COMPONENTS = {"text": ("text_decoder",), "vision": ("vision_encoder", "projector")}


def _f32_bytes(builder: PlanBuilder, components: tuple[str, ...]) -> int:
    return memory.F32_BYTES * memory.count_parameters(builder.facts.tensors, builder.owner, components)


def predict_memory(builder: PlanBuilder, step: str, kind: str, components: tuple[str, ...], cache_length: int = 0) -> None:
    """Record the predicted peak anonymous bytes of `step` (a memory.py kind: export_text,
    export_vision, quantize, parity) loading `components` in plan.facts["memory"], from the
    source's tensor headers. Not a parameter of the step: a prediction is no input of its output."""
    kv = memory.kv_cache_bytes(builder.facts.tensors, builder.owner, components, cache_length) if cache_length else 0
    builder.plan_facts.setdefault("memory", {})[step] = memory.predict(kind, _f32_bytes(builder, components), kv)


def predict_streamed_memory(builder: PlanBuilder, step: str, kind: str, components: tuple[str, ...]) -> None:
    """Record the predicted peak of a step that streams a tensor at a time (llama.cpp's converter
    and quantizer): it follows the f32 bytes of `components`' largest tensor, not their sum."""
    wanted = set(components)
    largest = max((memory.count_parameters({name: info}, builder.owner) for name, info in builder.facts.tensors.items()
                   if builder.owner.get(name) in wanted), default=0)
    builder.plan_facts.setdefault("memory", {})[step] = memory.predict(kind, memory.F32_BYTES * largest)


def predict_export_memory(builder: PlanBuilder, step: str, part: str, cache_length: int) -> None:
    """The export of `part` ('text' or 'vision'); the text export samples a KV cache of cache_length."""
    predict_memory(builder, step, f"export_{part}", PART_COMPONENTS[part], cache_length if part == "text" else 0)


def check_source_architecture(builder: PlanBuilder, where: str, task: str, exporter: str) -> bool:
    """Refuse a source that is not Gemma 3, or a text-only one for task image_text_to_text (a
    PlanError naming `exporter`, the tool that would fail on it); returns whether the task is multimodal."""
    architectures = builder.facts.config.get("architectures", [])
    if not any(name in SUPPORTED_ARCHITECTURES for name in architectures):
        raise PlanError(
            f"{where}: the source architecture {', '.join(architectures) or '(none)'} is not one {exporter} "
            f"handles here (supported: {', '.join(SUPPORTED_ARCHITECTURES)}); pick a Gemma 3 checkpoint"
        )
    multimodal = task == "image_text_to_text"
    if multimodal and "Gemma3ForConditionalGeneration" not in architectures:
        raise PlanError(f"{where}: task image_text_to_text needs a multimodal checkpoint (Gemma3ForConditionalGeneration); use text_generation")
    return multimodal


def plan_reference(builder: PlanBuilder, checkpoint: InputRef, prompts: list[str], steps: int, multimodal: bool,
                   answers: dict | None = None, chat_template: str = "chat_template.jinja") -> InputRef:
    """The parity_reference step of `checkpoint` on these prompts (and, for `answers`, PyTorch's image
    answers up to its stop_tokens), as the input `reference` of a parity step. Targets asking for
    the same reference share one node: the float32 model is loaded once per build, not per gate. A
    multimodal reference computes the image answers even for a gate that reads none (stop tokens:
    the runtime's, else STOP_TOKENS), so that every target of a checkpoint and prompts shares it.
    The prompts are put in `chat_template`, the checkpoint's file the target ships: the tokenizer's
    own by default (and then not a parameter, so the reference's key is what it was before templates
    could be chosen)."""
    if multimodal and answers is None:
        answers = {"stop_tokens": list(STOP_TOKENS)}
    params = {"prompts": list(prompts), "steps": steps, "multimodal": multimodal, "answers": answers}
    if chat_template != "chat_template.jinja":
        params["chat_template"] = chat_template
    name = "reference" + ("" if checkpoint.node == builder.source.name else f".{checkpoint.node}")
    node = StepNode.make(name, parity_reference.KIND, parity_reference.VERSION, params,
                         (InputRef("checkpoint", checkpoint.node, checkpoint.select),), parity_reference.TOOLS)
    existing = builder.steps.get(name)
    if existing is not None and existing != node:  # another target's prompts: a reference of its own
        name = f"{name}.{digest(params)[:8]}"
        node = StepNode.make(name, node.kind, node.version, params, node.inputs, node.tools)
    builder.add(node)
    # Its peak is the float32 model it loads (memory.py's `parity` kind: measured when the parity
    # step computed the reference itself, its largest phase).
    predict_memory(builder, name, "parity", PART_COMPONENTS["text"] + (PART_COMPONENTS["vision"] if multimodal else ()))
    return InputRef("reference", name)


def check_task_components(where: str, task: str, components, multimodal: bool, needs: str, lacks: str) -> tuple[str, ...]:
    """Refuse a target whose components are not the ones its task exports (the text decoder, and the
    vision tower and projector for image_text_to_text): "task T <needs> component C" when one is
    missing, "task T <lacks> component C" when one is extra. Returns the wanted components."""
    wanted = ("text_decoder", *(("vision_encoder", "projector") if multimodal else ()))
    missing = [c for c in wanted if c not in components]
    if missing:
        raise PlanError(f"{where}: task {task} {needs} component {missing[0]!r}; add it to components")
    extra = [c for c in components if c not in wanted]
    if extra:
        raise PlanError(f"{where}: task {task} {lacks} component {extra[0]!r}; remove it or use image_text_to_text")
    return wanted
