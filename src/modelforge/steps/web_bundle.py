"""Step `web_bundle`: the static app, the vendored runtimes (checked against the hashes the plan was
made with), the models under content-hashed names, bundle.json and the server configs. For a LiteRT.js
variant it also writes what the page's decoding loop needs (`generation` in bundle.json), resolving
token strings to ids with the source's tokenizer.json. Imports only steps.base and modelforge.web."""

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
    (LiteRT.js variants)}. A MediaPipe variant: {name, label, max_tokens, input}; a LiteRT.js one: {name, label,
    max_tokens, runtime: litertjs, inputs: {text, vision_encoder?, projector?, source}, files: {chat_template}, stream_weights?,
    generation: {prefill_lengths, cache_length, start_token, stop_tokens, image?: {soft_tokens, image_token_id,
    start_of_image_id, end_of_image_id}}}."""
    from modelforge.hashing import hash_file
    from modelforge.web.bundle import Variant, write_bundle
    from modelforge.web.vendor import litertjs_files, runtime_files, web_dir

    params = context.params
    runtime = litertjs = None
    if "runtime" in params:
        runtime = runtime_files(web_dir())
        _check_vendored(runtime, params["runtime"]["files"], hash_file)
    if "litertjs" in params:
        litertjs = litertjs_files(web_dir())
        _check_vendored(litertjs, params["litertjs"]["files"], hash_file)
    variants = []
    for variant in params["variants"]:
        if variant.get("runtime") == "litertjs":
            variants.append(_litertjs_variant(context, variant))
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
    )


def _check_vendored(files: dict[str, Path], expected: dict[str, dict], hash_file) -> None:
    for name, entry in expected.items():
        if hash_file(files[name]) != entry["sha256"]:
            raise StepFailed(f"the vendored web runtime file {name} changed since the plan was made; run the build again")


def _litertjs_variant(context: StepContext, variant: dict):
    from modelforge.web.bundle import LitertjsVariant

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
        if processor.get("do_pan_and_scan"):
            raise StepFailed(f"variant {variant['name']}: the source's preprocessor_config.json asks for pan-and-scan, which the page does not do")
        if processor.get("resample", 2) != 2:
            raise StepFailed(f"variant {variant['name']}: the source's processor resamples with PIL filter {processor.get('resample')}; the page resizes bilinearly (2) only")
        soft, start, end = named(image["image_token_id"], "image token"), named(image["start_of_image_id"], "start-of-image"), named(image["end_of_image_id"], "end-of-image")
        generation["image"] = {
            "height": processor["size"]["height"], "width": processor["size"]["width"], "resize": "bilinear",
            # [0, 1] RGB, NHWC: the vision graph rescales and normalizes itself (steps/image_input.py)
            "pixels": "rgb01_nhwc",
            "soft_tokens": image["soft_tokens"], "soft_token": soft,
            "placeholder": start["text"],
            "sequence": "\n\n" + start["text"] + soft["text"] * image["soft_tokens"] + end["text"] + "\n\n",
        }
    return generation
