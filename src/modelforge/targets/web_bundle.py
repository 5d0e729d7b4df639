"""Target `web_bundle`: a static page running the model in the browser. A `runtime: mediapipe`
variant is text only (MediaPipe cannot take images), packed as a `.task`: from an image_text_to_text
litertlm target, that target's own text graphs (the decoder taking embeddings plus the embedder graph,
MediaPipe's TF_LITE_EMBEDDER; its quantize node when the recipe is its own), else a plain text export
with its own quantization; a `runtime: litertjs` variant ships the litertlm target's own
graphs (the same export and quantize nodes when the recipe is the same), run by LiteRT.js with images;
a `runtime: onnxruntime_web` variant ships an onnx target's package as it is, run by onnxruntime-web
with images::

    <litertlm>.export_text ─► (<litertlm>.quantize.text_decoder | own recipe) ─► web_task ─┐
    checkpoint ─► export (text_generation targets) ─► quantize <variant> ─► web_task ───────┤
    <litertlm>.export_text ─► (<litertlm>.quantize.text_decoder | none | own recipe) ──────┤
    <litertlm>.export_vision ─► (float | quantize vision_encoder, projector) ──────────────┤
    <onnx>.package (the onnx target's own steps) ──────────────────────────────────────────┼─► web_bundle
    source: tokenizer.json, tokenizer_config.json, chat template, preprocessor_config.json ┤
    vendored runtimes (web/node_modules, hashed at plan time) ─────────────────────────────┘

Each variant's `.task` size and largest weight are predicted from the tensor shapes and its recipe
(`modelforge.web.limits`) and recorded in plan.facts["web"]; a variant that cannot fit the browser
runtime's limits is refused here, before anything is exported.

Imports its spec, `plan`, `plan_builder`, `gemma3`, `web.layout`, `web.limits` and the steps it
adds (steps/web/, steps/litert/); plans the litertlm and onnx targets' nodes through
PlanBuilder.target, never by importing them.
"""

from __future__ import annotations

from modelforge.errors import PlanError
from modelforge.manifest.parts import QuantizationSpec
from modelforge.manifest.targets.onnx import OnnxPrecisionSpec
from modelforge.manifest.targets.web_bundle import WebBundleTarget, WebVariantSpec
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder, source_input
from modelforge.gemma3 import PART_COMPONENTS, plan_reference, predict_export_memory, predict_memory
from modelforge.steps.litert import export as litert_export
from modelforge.steps.litert import parity as litert_parity
from modelforge.steps.litert import quantize as litert_quantize
from modelforge.steps.web import bundle as web_bundle
from modelforge.steps.web import task as web_task
from modelforge.web import layout, limits

KIND = "web_bundle"


def plan(builder: PlanBuilder, target: str, spec: WebBundleTarget) -> str:
    where = builder.where(target)
    runtimes = {variant.runtime for variant in spec.variants}
    if "mediapipe" in runtimes and "version" not in builder.facts.web_runtime:
        raise PlanError(f"{where}: the MediaPipe web runtime is not vendored; run `npm ci --prefix web` (tools/setup.sh does)")
    if "litertjs" in runtimes and not builder.facts.web_runtime.get("litertjs"):
        raise PlanError(f"{where}: the LiteRT.js web runtime is not vendored; run `npm ci --prefix web` (tools/setup.sh does)")
    if "onnxruntime_web" in runtimes and not builder.facts.web_runtime.get("onnxruntime_web"):
        raise PlanError(f"{where}: the onnxruntime-web runtime is not vendored; run `npm ci --prefix web` (tools/setup.sh does)")
    config = builder.facts.config
    # Minimal Hub configs leave vocab_size to the class default; the step then reads it off the graph.
    vocab_size = config.get("text_config", config).get("vocab_size")
    if "mediapipe" in runtimes and "tokenizer.model" not in {item.path for item in builder.facts.files}:
        raise PlanError(f"{where}: the web runtime needs the SentencePiece tokenizer.model; take it with source.files")
    inputs, variants = [], []
    for variant in spec.variants:
        origin = builder.manifest.targets[variant.source_target]
        if variant.runtime == "litertjs":
            variants.append(_litertjs_variant(builder, target, variant, origin, inputs))
            continue
        if variant.runtime == "onnxruntime_web":
            variants.append(_ortweb_variant(builder, target, variant, origin, inputs))
            continue
        checkpoint, _ = builder.target("litertlm").checkpoint_input(builder, variant.source_target, origin)
        checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
        recipe = variant.recipe or getattr(origin.quantization.get("text_decoder"), "recipe", "none")
        if recipe == "none":
            raise PlanError(
                f"{where}: variant {variant.name!r} would be float (its litertlm target does not quantize the text decoder); "
                "the web runtime rejects float embeddings: set the variant's recipe"
            )
        embedder = origin.task == "image_text_to_text"
        _check_size(builder, target, variant.name, recipe, embedder)
        graphs = (_task_graphs(builder, target, variant, origin, recipe) if embedder
                  else _export_and_quantize(builder, target, variant, origin, checkpoint, recipe))
        max_tokens = variant.max_tokens or origin.cache_length
        if max_tokens > origin.cache_length:
            raise PlanError(f"{where}: variant {variant.name!r} max_tokens {max_tokens} exceeds the cache length {origin.cache_length}; lower it")
        task = builder.add(StepNode.make(
            f"{target}.task.{variant.name}", web_task.KIND, web_task.VERSION,
            {"file": f"{variant.name}.task", "vocab_size": vocab_size, "start_token": origin.metadata.start_token,
             "stop_tokens": list(origin.metadata.stop_tokens), "max_tokens": max_tokens},
            (InputRef("graph", graphs.node, graphs.select), InputRef("checkpoint", checkpoint.node, ("tokenizer.model",) if checkpoint.node == builder.source.name else None)),
            web_task.TOOLS,
        ))
        inputs.append(InputRef(f"variant.{variant.name}", task))
        variants.append({"name": variant.name, "label": variant.label, "max_tokens": max_tokens, "input": f"variant.{variant.name}"})
    # The page's own files: a changed page must rebuild the bundle (they are no input of any other step).
    params = {"title": spec.title, "variants": variants, "app": layout.app_digest()}
    if "mediapipe" in runtimes:
        params["runtime"] = {key: builder.facts.web_runtime[key] for key in ("version", "files")}
    if "litertjs" in runtimes:
        params["litertjs"] = dict(builder.facts.web_runtime["litertjs"])
    if "onnxruntime_web" in runtimes:
        params["onnxruntime_web"] = dict(builder.facts.web_runtime["onnxruntime_web"])
    if builder.manifest.notice:  # absent, not empty, where there is none: those bundles keep their keys
        params["notice"] = builder.manifest.notice
    return builder.add(StepNode.make(
        target, web_bundle.KIND, web_bundle.VERSION,
        params,
        tuple(inputs), web_bundle.TOOLS,
    ))


def _litertjs_variant(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, inputs: list[InputRef]) -> dict:
    """A LiteRT.js variant: the litertlm target's graphs (its own nodes when the recipes are its own),
    the tokenizer and chat template, and what the page's loop needs to know (resolved to ids in the step)."""
    where = builder.where(target)
    if origin.task != "image_text_to_text":
        raise PlanError(
            f"{where}: variant {variant.name!r} (runtime: litertjs) needs the embedder graph of an image_text_to_text "
            f"litertlm target; {variant.source_target!r} exports {origin.task}: set its task or use runtime: mediapipe"
        )
    max_tokens = variant.max_tokens or origin.cache_length
    if max_tokens > origin.cache_length:
        raise PlanError(f"{where}: variant {variant.name!r} max_tokens {max_tokens} exceeds the cache length {origin.cache_length}; lower it")
    present = {item.path for item in builder.facts.files}
    chat_template = variant.chat_template or origin.metadata.chat_template
    needed = ["tokenizer.json", "tokenizer_config.json", chat_template, "preprocessor_config.json"]
    missing = [name for name in needed if name not in present]
    if missing:
        raise PlanError(f"{where}: variant {variant.name!r} needs the source's {', '.join(missing)}; take them with source.files")
    exports = builder.target("litertlm").plan_exports(builder, variant.source_target, origin)

    def graphs(component: str, recipe: str) -> InputRef:
        own = origin.quantization.get(component) or QuantizationSpec()
        if recipe == own.recipe:  # the litertlm target's very node (or its float export)
            return builder.target("litertlm").plan_component(builder, variant.source_target, origin, exports, component, own)
        return builder.target("litertlm").plan_component(
            builder, variant.source_target, origin, exports, component, QuantizationSpec(recipe=recipe),
            name=f"{target}.quantize.{variant.name}.{component}",
        )

    text_recipe = variant.recipe if variant.recipe is not None else (origin.quantization.get("text_decoder") or QuantizationSpec()).recipe
    if variant.stream_weights and text_recipe == "none":
        raise PlanError(
            f"{where}: variant {variant.name!r} streams its weights, but its text decoder would be float (the litertlm target "
            f"{variant.source_target!r} does not quantize it): LiteRT.js streams quantized weights only; set the variant's recipe"
        )
    _check_litertjs_size(builder, target, variant, origin, text_recipe)
    refs = {"text": graphs("text_decoder", text_recipe)}
    refs |= {component: graphs(component, variant.vision_recipe) for component in ("vision_encoder", "projector")}
    names = {}
    for key, ref in refs.items():
        names[key] = f"variant.{variant.name}.{key}"
        inputs.append(InputRef(names[key], ref.node, ref.select))
    if origin.parity is not None:
        _plan_parity(builder, target, variant, origin, refs)
    names["source"] = f"variant.{variant.name}.source"
    inputs.append(InputRef(names["source"], builder.source.name, source_input(builder, needed).select))
    config = builder.facts.config
    streamed = {"stream_weights": True} if variant.stream_weights else {}  # absent when off: those bundles keep their keys
    return {
        **streamed,
        "name": variant.name, "label": variant.label, "runtime": "litertjs", "max_tokens": max_tokens, "inputs": names,
        "files": {"chat_template": chat_template},
        "generation": {
            "prefill_lengths": list(origin.prefill_lengths), "cache_length": origin.cache_length,
            "start_token": origin.metadata.start_token, "stop_tokens": list(origin.metadata.stop_tokens),
            "image": {
                "soft_tokens": config.get("mm_tokens_per_image", 256), "image_token_id": config.get("image_token_index", 262144),
                "start_of_image_id": config.get("boi_token_index", 255999), "end_of_image_id": config.get("eoi_token_index", 256000),
            },
        },
    }


def _ortweb_variant(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, inputs: list[InputRef]) -> dict:
    """An onnxruntime-web variant: the onnx target's package as it is (its own nodes, so its parity
    check covers these very graphs), the tokenizer and chat template, and what the page's loop needs.
    Refused when a tensor of it is larger than onnxruntime-web can size."""
    where = builder.where(target)
    max_tokens = variant.max_tokens or origin.context_length
    if max_tokens > origin.context_length:
        raise PlanError(f"{where}: variant {variant.name!r} max_tokens {max_tokens} exceeds the onnx target's context_length {origin.context_length}; lower it")
    present = {item.path for item in builder.facts.files}
    chat_template = variant.chat_template or "chat_template.jinja"
    needed = ["tokenizer.json", "tokenizer_config.json", chat_template] + (["preprocessor_config.json"] if origin.task == "image_text_to_text" else [])
    missing = [name for name in needed if name not in present]
    if missing:
        raise PlanError(f"{where}: variant {variant.name!r} needs the source's {', '.join(missing)}; take them with source.files")
    text_precision = origin.precision.get("text_decoder", OnnxPrecisionSpec())
    shapes = limits.text_decoder_shapes(builder.facts.tensors, builder.owner, PART_COMPONENTS["text"])
    tensor, size = limits.predict_ortweb_largest(shapes, text_precision.precision, text_precision.blocks)
    builder.plan_facts.setdefault("web", {})[f"{target}.{variant.name}"] = {"largest_tensor": {"tensor": tensor, "bytes": size}}
    if size > limits.ORTWEB_MAX_TENSOR_BYTES:
        raise PlanError(
            f"{where}: variant {variant.name!r} (runtime: onnxruntime_web; text {text_precision.precision}) cannot run in the browser: "
            f"its largest tensor, {tensor} at {size / 1e9:.2f} GB, is above the 2 GiB onnxruntime-web can size. Set the onnx "
            f"target {variant.source_target!r}'s text_decoder precision to int4 (its embedding is then int4 too), else drop the variant; "
            "see docs/web-limits.md"
        )
    package = builder.target("onnx").plan(builder, variant.source_target, origin)
    names = {"graphs": f"variant.{variant.name}.graphs", "source": f"variant.{variant.name}.source"}
    inputs.append(InputRef(names["graphs"], package))
    inputs.append(InputRef(names["source"], builder.source.name, source_input(builder, needed).select))
    config = builder.facts.config
    # Start and stop tokens come from the package's genai_config.json, in the step.
    generation: dict = {"cache_length": origin.context_length}
    if origin.task == "image_text_to_text":
        generation["image"] = {
            "soft_tokens": config.get("mm_tokens_per_image", 256), "image_token_id": config.get("image_token_index", 262144),
            "start_of_image_id": config.get("boi_token_index", 255999), "end_of_image_id": config.get("eoi_token_index", 256000),
            # The vision graph's largest tensor, one group of heads' attention scores (128 MiB at
            # MedGemma's 896 px, builder.target("onnx").vision_attention). The page runs the vision graph on the
            # CPU where a WebGPU buffer that size is more than the adapter offers (docs/web-routes.md).
            "attention_bytes": builder.target("onnx").vision_attention(config)["bytes"],
        }
    return {
        "name": variant.name, "label": variant.label, "runtime": "onnxruntime_web", "max_tokens": max_tokens, "inputs": names,
        "files": {"chat_template": chat_template}, "generation": generation,
    }


def _plan_parity(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, refs: dict[str, InputRef]) -> None:
    """The variant's own graphs against PyTorch in the interpreter, under the litertlm target's
    thresholds, recorded in the lock's checks as `<target>.parity.<variant>`. Image answers through
    the LiteRT-LM runtime are the target's own check; the page's are the browser test's
    (tests/web/test_fidelity.py). Variants shipping the same graphs share one key: it runs once."""
    checkpoint, _ = builder.target("litertlm").checkpoint_input(builder, variant.source_target, origin)
    checkpoint = InputRef("checkpoint", checkpoint.node, checkpoint.select)
    inputs = [checkpoint, plan_reference(
        builder, checkpoint, origin.parity.prompts, origin.parity.steps, multimodal=True, answers={"stop_tokens": list(origin.metadata.stop_tokens)},
        chat_template=origin.metadata.chat_template)]
    inputs += [InputRef(key, ref.node, ref.select) for key, ref in refs.items()]
    builder.add(StepNode.make(
        f"{target}.parity.{variant.name}", litert_parity.KIND, litert_parity.VERSION, builder.target("litertlm").parity_params(origin, runtime=False),
        tuple(inputs), litert_parity.TOOLS,
    ))


def _check_litertjs_size(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, text_recipe: str) -> None:
    """Predict what a LiteRT.js variant puts in LiteRT.js's wasm heap, from the tensor shapes, and refuse
    it when that cannot fit: the decoder (which holds the tied embedding as its output head), the
    embedder, the vision encoder and adapter (with `stream_weights`, the decoder's and embedder's
    flatbuffers and the one scratch region their streamed weights are mapped onto instead), and the KV
    cache buffers of every decoder signature."""
    def shapes(components) -> dict[str, tuple[int, ...]]:
        return limits.text_decoder_shapes(builder.facts.tensors, builder.owner, components)

    text = shapes(PART_COMPONENTS["text"])
    embedding = {name: shape for name, shape in text.items() if name.endswith("embed_tokens.weight")}
    vision = limits.predict_graph_bytes(shapes(PART_COMPONENTS["vision"]), variant.vision_recipe)
    key_rows = [shape[0] for name, shape in text.items() if name.endswith("self_attn.k_proj.weight")]
    kv_cache = limits.kv_cache_io_bytes(key_rows, origin.cache_length, len(origin.prefill_lengths) + 1)
    fact: dict = {}
    if variant.stream_weights:
        model = limits.predict_streamed_graph(text, text_recipe)
        embedder = limits.predict_streamed_graph(embedding, text_recipe) if embedding else None
        graphs = {
            "model.tflite (flatbuffer)": model.heap_bytes,
            "embedder.tflite (flatbuffer)": embedder.heap_bytes if embedder else 0,
            # Every streamed weight's CPU-side mapping lands on it (docs/web-streamed-weights.md), plus the
            # 64 KiB alignment page the page adds on each side.
            "scratch region": max(model.largest_streamed_bytes, embedder.largest_streamed_bytes if embedder else 0) + 2 * 65536,
            "vision graphs": vision,
            "KV cache buffers": kv_cache,
        }
        fact["streamed_bytes"] = model.streamed_bytes + (embedder.streamed_bytes if embedder else 0)
        fact["largest_streamed"] = {"tensor": model.largest_streamed, "bytes": model.largest_streamed_bytes}
    else:
        graphs = {
            "model.tflite": limits.predict_graph_bytes(text, text_recipe),
            "embedder.tflite": limits.predict_graph_bytes(embedding, text_recipe) if embedding else 0,
            "vision graphs": vision,
            "KV cache buffers": kv_cache,
        }
    builder.plan_facts.setdefault("web", {})[f"{target}.{variant.name}"] = {"graph_bytes": graphs, "total_bytes": sum(graphs.values()), **fact}
    problems = limits.check_litertjs_graphs(graphs, streamed=variant.stream_weights)
    if problems:
        shorten = "shorten the litertlm target's cache_length or prefill_lengths (the KV cache buffers)"
        advice = (f"{shorten} or quantize harder, if that fits" if variant.stream_weights else
                  f"stream its weights (stream_weights: true, WebGPU only; an int4 decoder compiles on LiteRT.js's WebGPU no other way), "
                  f"{shorten}, or quantize harder (recipe: dynamic_wi8_afp32, vision_recipe: weight_only_wi8_afp32), if that fits")
        raise PlanError(
            f"{builder.where(target)}: variant {variant.name!r} (runtime: litertjs; text {text_recipe}, vision {variant.vision_recipe}) cannot "
            f"run in the browser: {'; and '.join(problems)}. {advice[0].upper() + advice[1:]}, else drop the variant; see docs/web-limits.md"
        )


def _check_size(builder: PlanBuilder, target: str, variant: str, recipe: str, embedder: bool) -> None:
    """Predict the variant's .task from the text decoder's shapes and refuse it when it cannot fit."""
    shapes = limits.text_decoder_shapes(builder.facts.tensors, builder.owner, PART_COMPONENTS["text"])
    tokenizer = next((item.size for item in builder.facts.files if item.path == "tokenizer.model"), 0)
    prediction = limits.predict_task_size(shapes, recipe, tokenizer, embedder=embedder)
    builder.plan_facts.setdefault("web", {})[f"{target}.task.{variant}"] = prediction.as_fact()
    problems = limits.check_task_size(prediction)
    if problems:
        raise PlanError(
            f"{builder.where(target)}: variant {variant!r} ({recipe}) cannot run in the browser: {'; and '.join(problems)}. "
            "Quantize it harder (e.g. recipe: dynamic_wi4b32_afp32) or drop the variant; see docs/web-limits.md"
        )


def _task_graphs(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, recipe: str) -> InputRef:
    """A .task's graphs from an image_text_to_text litertlm target: its own text export (a decoder
    taking embeddings, and the embedder graph MediaPipe runs as TF_LITE_EMBEDDER) quantized with the
    variant's recipe, through the target's very quantize node when the recipe is its own. The text
    decoder is exported once for both targets; the page's answers are the ones a separate plain export
    gives, token for token (docs/evidence/mediapipe_embedder)."""
    litertlm = builder.target("litertlm")
    exports = litertlm.plan_exports(builder, variant.source_target, origin)
    own = origin.quantization.get("text_decoder") or QuantizationSpec()
    if recipe == own.recipe:
        return litertlm.plan_component(builder, variant.source_target, origin, exports, "text_decoder", own)
    return litertlm.plan_component(
        builder, variant.source_target, origin, exports, "text_decoder", QuantizationSpec(recipe=recipe),
        name=f"{target}.quantize.{variant.name}",
    )


def _export_and_quantize(builder: PlanBuilder, target: str, variant: WebVariantSpec, origin, checkpoint: InputRef, recipe: str) -> InputRef:
    """A .task's graph from a text_generation litertlm target: a plain text export of its settings
    (shared by all variants from it), quantized with the variant's recipe."""
    export = builder.add(StepNode.make(
        f"{target}.export.{variant.source_target}", litert_export.KIND, litert_export.VERSION,
        {"part": "text", "task": "text_generation", "prefill_lengths": list(origin.prefill_lengths),
         "cache_length": origin.cache_length, "hoists": [hoist.model_dump(mode="json") for hoist in origin.hoists]},
        (checkpoint,), litert_export.TOOLS,
    ))
    predict_export_memory(builder, export, "text", origin.cache_length)
    quantized = builder.add(StepNode.make(
        f"{target}.quantize.{variant.name}", litert_quantize.KIND, litert_quantize.VERSION,
        {"recipe": recipe, "files": ["model.tflite"], "overrides": []},
        (InputRef("models", export, ("model.tflite",)),), litert_quantize.TOOLS,
    ))
    predict_memory(builder, quantized, "quantize", PART_COMPONENTS["text"])
    return InputRef("graph", quantized)

