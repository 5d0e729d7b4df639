"""Step `web_bundle`: the static app, the vendored runtimes (checked against the hashes the plan was
made with), the models under content-hashed names, bundle.json and the server configs. For a LiteRT.js
or onnxruntime-web variant it also writes what the page's decoding loop needs (`generation` in
bundle.json), resolving token strings and ids with the source's tokenizer.json (and, for onnxruntime-web,
the onnx package's genai_config.json; onnx reads which data file each graph names). Imports only
steps.base and modelforge.web (and onnx, for graph headers)."""

from __future__ import annotations

import json
from pathlib import Path

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "web_bundle"
VERSION = 2
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    """params: {title, notice, variants, runtime: {version, files} (MediaPipe variants), litertjs: {versions, files}
    (LiteRT.js variants), onnxruntime_web: {versions, files} (onnxruntime-web variants)}. A MediaPipe variant:
    {name, label, max_tokens, input}; a LiteRT.js one: {name, label, max_tokens, runtime: litertjs, inputs: {text,
    vision_encoder?, projector?, source}, files: {chat_template}, stream_weights?, generation: {prefill_lengths,
    cache_length, start_token, stop_tokens, image?: {soft_tokens, image_token_id, start_of_image_id, end_of_image_id}}};
    an onnxruntime-web one: {name, label, max_tokens, runtime: onnxruntime_web, inputs: {graphs (the onnx package),
    source}, files: {chat_template}, generation: {cache_length, image?: {the same ids, attention_bytes}}}."""
    from modelforge.hashing import hash_file
    from modelforge.web.layout import Variant, write_bundle
    from modelforge.web.vendor import litertjs_files, ortweb_files, runtime_files, web_dir

    params = context.params
    runtime = litertjs = ortweb = None
    if "runtime" in params:
        runtime = runtime_files(web_dir())
        _check_vendored(runtime, params["runtime"]["files"], hash_file)
    if "litertjs" in params:
        litertjs = litertjs_files(web_dir())
        _check_vendored(litertjs, params["litertjs"]["files"], hash_file)
    if "onnxruntime_web" in params:
        ortweb = ortweb_files(web_dir())
        _check_vendored(ortweb, params["onnxruntime_web"]["files"], hash_file)
    variants = []
    for variant in params["variants"]:
        if variant.get("runtime") == "litertjs":
            variants.append(_litertjs_variant(context, variant))
            continue
        if variant.get("runtime") == "onnxruntime_web":
            variants.append(_ortweb_variant(context, variant))
            continue
        (task_name,) = context.inputs[variant["input"]]
        variants.append(Variant(
            name=variant["name"], task=context.input_path(variant["input"], task_name), label=variant["label"],
            max_tokens=variant["max_tokens"],
        ))
    write_bundle(
        context.out_dir, variants=variants, runtime=runtime, title=params["title"],
        runtime_version=params["runtime"]["version"] if runtime else None, notice=params.get("notice", ""),
        litertjs=litertjs, litertjs_versions=params["litertjs"]["versions"] if litertjs else None,
        ortweb=ortweb, ortweb_versions=params["onnxruntime_web"]["versions"] if ortweb else None,
    )


def _check_vendored(files: dict[str, Path], expected: dict[str, dict], hash_file) -> None:
    for name, entry in expected.items():
        if hash_file(files[name]) != entry["sha256"]:
            raise StepFailed(f"the vendored web runtime file {name} changed since the plan was made; run the build again")


def _litertjs_variant(context: StepContext, variant: dict):
    from modelforge.web.layout import LitertjsVariant

    inputs = variant["inputs"]
    graphs = {}
    for graph, (input_name, file) in {
        "model": ("text", "model.tflite"), "embedder": ("text", "embedder.tflite"),
        "vision_encoder": ("vision_encoder", "vision_encoder.tflite"), "vision_adapter": ("projector", "vision_adapter.tflite"),
    }.items():
        if input_name in inputs:
            graphs[graph] = context.input_path(inputs[input_name], file)
    source = inputs["source"]
    tokenizer = context.input_path(source, "tokenizer.json")
    generation = _generation(variant, tokenizer, context.input_path(source, "preprocessor_config.json") if "vision_encoder" in graphs else None)
    return LitertjsVariant(
        name=variant["name"], label=variant["label"], max_tokens=variant["max_tokens"], graphs=graphs, tokenizer=tokenizer,
        tokenizer_config=context.input_path(source, "tokenizer_config.json"),
        chat_template=context.input_path(source, variant["files"]["chat_template"]), generation=generation,
        stream_weights=variant.get("stream_weights", False),
    )


def _ortweb_variant(context: StepContext, variant: dict):
    """The onnx target's package as onnxruntime-web runs it; what the loop needs comes from the
    package's genai_config.json (the decoder's sizes, token ids), tokenizer.json and the source's
    preprocessor_config.json."""
    import onnx

    from modelforge.web.layout import ORTWEB_GRAPHS, OrtwebVariant

    inputs = variant["inputs"]
    package = inputs["graphs"]
    genai = json.loads(context.input_path(package, "genai_config.json").read_text(encoding="utf-8"))["model"]
    graphs, data_names = {}, {}
    for graph, file in ORTWEB_GRAPHS.items():
        if file not in context.inputs[package]:
            continue
        path = context.input_path(package, file)
        proto = onnx.load(str(path), load_external_data=False)
        locations = {entry.value for item in proto.graph.initializer for entry in item.external_data if entry.key == "location"}
        if len(locations) != 1:
            raise StepFailed(f"variant {variant['name']}: {file} keeps its weights in {sorted(locations) or 'no'} external files; "
                             "onnxruntime-web is handed exactly one")
        (data_names[graph],) = locations
        graphs[graph] = (path, context.input_path(package, data_names[graph]))
    source = inputs["source"]
    tokenizer = context.input_path(source, "tokenizer.json")
    _, texts = _token_table(tokenizer)

    def named(index: int, what: str) -> dict:
        if index not in texts:
            raise StepFailed(f"variant {variant['name']}: the {what} id {index} is not in tokenizer.json")
        return {"text": texts[index], "id": index}

    plan = variant["generation"]
    decoder = genai["decoder"]
    start = named(genai["bos_token_id"], "start")
    stops = genai["eos_token_id"] if isinstance(genai["eos_token_id"], list) else [genai["eos_token_id"]]
    generation = {
        "cache_length": plan["cache_length"],
        "start_token": start,
        "stop_tokens": [named(index, "stop") for index in stops],
        "chat_template_variables": {"bos_token": start["text"]},
        "decoder": {"hidden": decoder["hidden_size"], "layers": decoder["num_hidden_layers"],
                    "kv_heads": decoder["num_key_value_heads"], "head_dim": decoder["head_size"]},
    }
    if "vision" in graphs and plan.get("image") is not None:
        preprocessor = json.loads(context.input_path(source, "preprocessor_config.json").read_text(encoding="utf-8"))
        if abs(preprocessor.get("rescale_factor", 1 / 255) * 255 - 1) > 1e-6 or not preprocessor.get("do_normalize", True):
            raise StepFailed(f"variant {variant['name']}: the source's processor rescales by {preprocessor.get('rescale_factor')} "
                             f"(normalize: {preprocessor.get('do_normalize', True)}); the page rescales by 1/255 and normalizes only")
        image = _image_generation(variant["name"], plan["image"], preprocessor, named)
        # vision.onnx takes the processor's pixels: rescaled, normalized, NCHW (steps/onnx/worker.py)
        image |= {"pixels": "normalized_nchw", "rescale_factor": preprocessor.get("rescale_factor", 1 / 255),
                  "image_mean": preprocessor.get("image_mean", [0.5] * 3), "image_std": preprocessor.get("image_std", [0.5] * 3),
                  "attention_bytes": plan["image"]["attention_bytes"]}
        generation["image"] = image
    return OrtwebVariant(
        name=variant["name"], label=variant["label"], max_tokens=variant["max_tokens"], graphs=graphs, tokenizer=tokenizer,
        tokenizer_config=context.input_path(source, "tokenizer_config.json"),
        chat_template=context.input_path(source, variant["files"]["chat_template"]), generation=generation, data_names=data_names,
    )


def _token_table(tokenizer: Path) -> tuple[dict[str, int], dict[int, str]]:
    """{token string: id} and back, from tokenizer.json's added tokens and its model's vocabulary."""
    data = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocabulary = data.get("model", {}).get("vocab", {})
    ids = dict(vocabulary) if isinstance(vocabulary, dict) else {entry[0]: index for index, entry in enumerate(vocabulary)}
    for added in data.get("added_tokens", []):
        ids[added["content"]] = added["id"]
    return ids, {index: text for text, index in ids.items()}


def _generation(variant: dict, tokenizer: Path, preprocessor: Path | None) -> dict:
    """What the page's loop needs, in bundle.json: signature names per prefill length, the cache length,
    start and stop tokens as ids, and for images the processor's size and how the prompt carries the
    soft tokens (Gemma 3's processor: `<start_of_image>` in the rendered template becomes
    "\\n\\n<start_of_image>" + soft tokens + "<end_of_image>\\n\\n")."""
    plan = variant["generation"]
    ids, texts = _token_table(tokenizer)

    def token(text: str) -> dict:
        if text not in ids:
            raise StepFailed(f"variant {variant['name']}: token {text!r} is not in tokenizer.json; fix the litertlm target's metadata")
        return {"text": text, "id": ids[text]}

    def named(index: int, what: str) -> dict:
        if index not in texts:
            raise StepFailed(f"variant {variant['name']}: the {what} id {index} (config.json) is not in tokenizer.json")
        return {"text": texts[index], "id": index}

    generation = {
        "prefill": {str(length): f"prefill_{length}" for length in plan["prefill_lengths"]},
        "decode": "decode",
        "cache_length": plan["cache_length"],
        "start_token": token(plan["start_token"]),
        "stop_tokens": [token(text) for text in plan["stop_tokens"]],
        "chat_template_variables": {"bos_token": plan["start_token"]},
    }
    image = plan.get("image")
    if image is not None and preprocessor is not None:
        processor = json.loads(preprocessor.read_text(encoding="utf-8"))
        # [0, 1] RGB, NHWC: the vision graph rescales and normalizes itself (steps/image_input.py)
        generation["image"] = _image_generation(variant["name"], image, processor, named) | {"pixels": "rgb01_nhwc"}
    return generation


def _image_generation(name: str, image: dict, processor: dict, named) -> dict:
    """The processor's image size and how the prompt carries the soft tokens (Gemma 3's processor:
    `<start_of_image>` in the rendered template becomes "\\n\\n<start_of_image>" + soft tokens +
    "<end_of_image>\\n\\n"); refuses preprocessing the page does not repeat."""
    if processor.get("do_pan_and_scan"):
        raise StepFailed(f"variant {name}: the source's preprocessor_config.json asks for pan-and-scan, which the page does not do")
    if processor.get("resample", 2) != 2:
        raise StepFailed(f"variant {name}: the source's processor resamples with PIL filter {processor.get('resample')}; the page resizes bilinearly (2) only")
    soft, start, end = named(image["image_token_id"], "image token"), named(image["start_of_image_id"], "start-of-image"), named(image["end_of_image_id"], "end-of-image")
    return {
        "height": processor["size"]["height"], "width": processor["size"]["width"], "resize": "bilinear",
        "soft_tokens": image["soft_tokens"], "soft_token": soft,
        "placeholder": start["text"],
        "sequence": "\n\n" + start["text"] + soft["text"] * image["soft_tokens"] + end["text"] + "\n\n",
    }
