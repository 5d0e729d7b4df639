"""Target `web_bundle`: a static page running the model in the browser on WebGPU. Each variant is
a plain text export (the web runtime cannot take GPU composites nor, yet, images) with its own
quantization, packed as a MediaPipe `.task`::

    checkpoint ─► export (text_generation) ─► quantize <variant> ─► web_task <variant> ─┐
                                                                                         ├─► web_bundle
    vendored runtime (web/node_modules, hashed at plan time) ───────────────────────────┘
"""

from __future__ import annotations

from modelforge.errors import PlanError
from modelforge.manifest.models import WebBundleTarget
from modelforge.plan import InputRef, StepNode
from modelforge.planner import PlanBuilder
from modelforge.steps import litert_export, litert_quantize, web_bundle, web_task
from modelforge.targets import litertlm

KIND = "web_bundle"


def plan(builder: PlanBuilder, target: str, spec: WebBundleTarget) -> str:
    where = builder.where(target)
    if not builder.facts.web_runtime:
        raise PlanError(f"{where}: the web runtime is not vendored; run `npm ci --prefix web` (tools/setup.sh does)")
    config = builder.facts.config
    # Minimal Hub configs leave vocab_size to the class default; the step then reads it off the graph.
    vocab_size = config.get("text_config", config).get("vocab_size")
    if "tokenizer.model" not in {item.path for item in builder.facts.files}:
        raise PlanError(f"{where}: the web runtime needs the SentencePiece tokenizer.model; take it with source.files")
    inputs, variants = [], []
    for variant in spec.variants:
        origin = builder.manifest.targets[variant.source_target]
        checkpoint, _ = litertlm._checkpoint(builder, variant.source_target, origin)
        checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
        export = _export(builder, target, variant.source_target, origin, checkpoint)
        recipe = variant.recipe or getattr(origin.quantization.get("text_decoder"), "recipe", "none")
        if recipe == "none":
            raise PlanError(
                f"{where}: variant {variant.name!r} would be float (its litertlm target does not quantize the text decoder); "
                "the web runtime rejects float embeddings: set the variant's recipe"
            )
        quantized = builder.add(StepNode.make(
            f"{target}.quantize.{variant.name}", litert_quantize.KIND, litert_quantize.VERSION,
            {"recipe": recipe, "files": ["model.tflite"], "overrides": []},
            (InputRef("models", export, ("model.tflite",)),), litert_quantize.TOOLS,
        ))
        max_tokens = variant.max_tokens or origin.cache_length
        if max_tokens > origin.cache_length:
            raise PlanError(f"{where}: variant {variant.name!r} max_tokens {max_tokens} exceeds the cache length {origin.cache_length}; lower it")
        task = builder.add(StepNode.make(
            f"{target}.task.{variant.name}", web_task.KIND, web_task.VERSION,
            {"file": f"{variant.name}.task", "vocab_size": vocab_size, "start_token": origin.metadata.start_token,
             "stop_tokens": list(origin.metadata.stop_tokens), "max_tokens": max_tokens},
            (InputRef("graph", quantized), InputRef("checkpoint", checkpoint.node, ("tokenizer.model",) if checkpoint.node == builder.source.name else None)),
            web_task.TOOLS,
        ))
        inputs.append(InputRef(f"variant.{variant.name}", task))
        variants.append({"name": variant.name, "label": variant.label, "max_tokens": max_tokens, "input": f"variant.{variant.name}"})
    params = {"title": spec.title, "variants": variants, "runtime": dict(builder.facts.web_runtime)}
    if builder.manifest.notice:  # absent, not empty, where there is none: those bundles keep their keys
        params["notice"] = builder.manifest.notice
    return builder.add(StepNode.make(
        target, web_bundle.KIND, web_bundle.VERSION,
        params,
        tuple(inputs), web_bundle.TOOLS,
    ))


def _export(builder: PlanBuilder, target: str, origin_name: str, origin, checkpoint: InputRef) -> str:
    """The plain text export of a litertlm target's settings (shared by all variants from it)."""
    node = builder.add(StepNode.make(
        f"{target}.export.{origin_name}", litert_export.KIND, litert_export.VERSION,
        {"part": "text", "task": "text_generation", "prefill_lengths": list(origin.prefill_lengths),
         "cache_length": origin.cache_length, "hoists": [hoist.model_dump(mode="json") for hoist in origin.hoists]},
        (checkpoint,), litert_export.TOOLS,
    ))
    litertlm.predict_export_memory(builder, node, "text", origin.checkpoint)
    return node

