"""Lay out a web bundle: the static app, the vendored runtime, the models, bundle.json and the
server configurations — deterministic bytes for the same inputs.

    <out_dir>/
      index.html app.js accumulator.js style.css favicon.svg   the app (index.html gets the title)
      bundle.json                                     what the app reads (see below)
      runtime/<stem>-<sha16><ext>                     vendored runtime files, content-hashed names
      models/<name>-<sha16>.task                      MediaPipe variants, content-hashed names
      models/<graph>-<sha16>.tflite, models/tokenizer-<sha16>.json, models/chat_template-<sha16>.jinja,
      models/<graph>_weights-<sha16>.weights (stream_weights variants)
                                                      LiteRT.js variants' files, named by content (two
                                                      variants sharing a graph share its file)
      nginx.conf Caddyfile .htaccess _headers firebase.json

bundle.json (canonical JSON: sorted keys, 2-space indent, trailing newline):

    {"schema": "modelforge-web-bundle/1", "title": ...,
     "runtime": {"package": "@mediapipe/tasks-genai", "version": "0.10.29",
                 "files": {"genai_bundle.mjs": {"url": "runtime/genai_bundle-<sha16>.mjs", "sha256": ..., "size": ...}, ...}},
     "variants": [{"name", "label", "url": "models/<name>-<sha16>.task", "sha256", "size", "format": "task",
                   "chunk_size", "chunk_sha256": [...], "multimodal", "max_tokens", ["top_k", "temperature", "random_seed"],
                   "runtime": "mediapipe"}, ...]}

A bundle with `runtime: litertjs` variants adds the LiteRT.js runtime, and those variants name files
instead of one `.task`:

     "litertjs": {"packages": {"@litertjs/core": "2.5.3", ...},
                  "files": {"litertjs_core.mjs": {"url": "runtime/litertjs_core-<sha16>.mjs", "sha256", "size"}, ...}},
     "variants": [{"name", "label", "runtime": "litertjs", "multimodal", "max_tokens", "size" (all files),
                   "files": {"model" | "embedder" | "vision_encoder" | "vision_adapter" | "tokenizer" | "tokenizer_config" | "chat_template":
                             {"url", "sha256", "size", "chunk_size", "chunk_sha256"}},
                   "generation": {what the page's decoding loop needs: see steps/web/bundle.py},
                   "streamed" (stream_weights variants only): {"model" | "embedder": {"weights": "model_weights" | "embedder_weights",
                               "group", "size", "largest"}}}]

A bundle with `runtime: onnxruntime_web` variants adds onnxruntime-web, and those variants name the onnx
target's graphs and their external data:

     "onnxruntime_web": {"packages": {"onnxruntime-web": "1.30.0", ...},
                         "files": {"ort.webgpu.min.mjs": {"url", "sha256", "size"}, ...}},
     "variants": [{"name", "label", "runtime": "onnxruntime_web", "multimodal", "max_tokens", "size",
                   "files": {"decoder" | "decoder_data" | "embedding" | "embedding_data" | "vision" | "vision_data" |
                             "tokenizer" | "tokenizer_config" | "chat_template": {...}},
                   "external_data": {"decoder": "model.onnx.data", ...} (the data file each graph names),
                   "generation": {see steps/web/bundle.py}}]

A `stream_weights` variant's "model" and "embedder" are flatbuffers whose quantized weights live in
"model_weights" / "embedder_weights" (TFLite external buffers, `modelforge.web.split_weights`); the page
streams those into WebGPU buffers (docs/web-streamed-weights.md).

The `runtime` (MediaPipe) section is present only when a MediaPipe variant is.

Variants are listed in priority order (the app tries them in that order). The app checks every
`chunk_size` part of a model against `chunk_sha256` as it streams, whenever it reads the model (download,
stored copy, loading into the runtime), and never holds more than a part: WebCrypto has no
incremental SHA-256, so a multi-GB file cannot be hashed in one piece in a browser without holding it
whole. The parts in order and the exact size cover every byte; the whole-file `sha256` is for
`modelforge verify` and other tools.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import posixpath
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .headers import APP_FILES, all_configs, is_hashed
from .vendor import LITERTJS_FILES, LITERTJS_REFERENCES, ORTWEB_FILES, PACKAGE, RUNTIME_FILES

__all__ = [
    "APP_SOURCE_FILES", "BUNDLE_SCHEMA", "CHUNK_SIZE", "BundleError", "LitertjsVariant", "Variant", "app_digest", "bundle_files",
    "write_bundle",
]

BUNDLE_SCHEMA = "modelforge-web-bundle/1"
CHUNK_SIZE = 64 * 1024 * 1024
APP_SOURCE_FILES = ("index.html", "app.js", "accumulator.js", "litert.js", "ortweb.js", "style.css", "favicon.svg")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_READ = 8 << 20


class BundleError(ValueError):
    """The inputs of a web bundle are inconsistent."""


@dataclass(frozen=True)
class Variant:
    """One model the app may run, in the bundle's priority order.

    name: slug used in the file name (`models/<name>-<sha16>.task`): [a-z0-9][a-z0-9._-]*.
    task: the `.task` file (write_task).
    label: what people read ("MedGemma 4B, int4").
    max_tokens: the runtime's `maxTokens` (input + output tokens) — at most the KV-cache length the
      graph was exported with.
    multimodal: the .task carries a vision encoder; the app then offers image input (maxNumImages=1).
    top_k / temperature / random_seed: sampling options passed to the runtime (None: runtime default).
    """

    name: str
    task: Path
    label: str
    max_tokens: int
    multimodal: bool = False
    top_k: int | None = None
    temperature: float | None = None
    random_seed: int | None = None

    def __post_init__(self) -> None:
        _check_variant(self.name, self.label, self.max_tokens)


def _check_variant(name: str, label: str, max_tokens: int) -> None:
    if not _NAME.match(name):
        raise BundleError(f"variant name {name!r} must match {_NAME.pattern}")
    if not label.strip():
        raise BundleError(f"variant {name}: empty label")
    if max_tokens <= 0:
        raise BundleError(f"variant {name}: max_tokens must be positive")


LITERTJS_GRAPHS = ("model", "embedder", "vision_encoder", "vision_adapter")
# The graphs a `stream_weights` variant splits (docs/web-streamed-weights.md): their quantized weights go
# to `<graph>_weights` and reach the GPU through loadModelAndWeights' stream, never the wasm heap.
STREAMED_GRAPHS = ("model", "embedder")
# The served extension of each LiteRT.js variant file (store objects have no extension).
LITERTJS_EXTENSIONS = {
    **{graph: ".tflite" for graph in LITERTJS_GRAPHS}, **{f"{graph}_weights": ".weights" for graph in STREAMED_GRAPHS},
    "tokenizer": ".json", "tokenizer_config": ".json", "chat_template": ".jinja",
}


@dataclass(frozen=True)
class LitertjsVariant:
    """A variant the page runs on LiteRT.js: the litertlm target's graphs, driven by the page's own
    decoding loop (litert.js), with the tokenizer and chat template of the source.

    graphs: {"model", "embedder", "vision_encoder", "vision_adapter"}: `.tflite` files (the vision pair
      is optional: without it the variant reads text only).
    tokenizer, tokenizer_config: tokenizer.json and tokenizer_config.json; chat_template: the Jinja template.
    generation: what the loop needs (signatures, prefill lengths, cache length, token ids, image size
      and soft tokens), written into bundle.json as is.
    stream_weights: ship the decoder and embedder split (`split_weights`, quantized weights only) so
      that the page streams their weights into WebGPU buffers (WebGPU only).
    """

    name: str
    label: str
    max_tokens: int
    graphs: Mapping[str, Path]
    tokenizer: Path
    tokenizer_config: Path
    chat_template: Path
    generation: Mapping
    stream_weights: bool = False

    def __post_init__(self) -> None:
        _check_variant(self.name, self.label, self.max_tokens)
        missing = [graph for graph in ("model", "embedder") if graph not in self.graphs]
        unknown = sorted(set(self.graphs) - set(LITERTJS_GRAPHS))
        if missing or unknown:
            raise BundleError(f"variant {self.name}: graphs must be {', '.join(LITERTJS_GRAPHS)} (missing {missing}, unknown {unknown})")
        if ("vision_encoder" in self.graphs) != ("vision_adapter" in self.graphs):
            raise BundleError(f"variant {self.name}: the vision encoder and adapter come together")

    @property
    def multimodal(self) -> bool:
        return "vision_encoder" in self.graphs

    def files(self) -> dict[str, Path]:
        return {**{name: Path(path) for name, path in self.graphs.items()}, "tokenizer": Path(self.tokenizer),
                "tokenizer_config": Path(self.tokenizer_config), "chat_template": Path(self.chat_template)}


# An onnxruntime-web variant's graphs (the onnx target's package) by logical name: (file in the
# package, served extension); each graph's external data is "<graph>_data".
ORTWEB_GRAPHS = {"decoder": "model.onnx", "embedding": "embedding.onnx", "vision": "vision.onnx"}
ORTWEB_EXTENSIONS = {
    **{graph: ".onnx" for graph in ORTWEB_GRAPHS}, **{f"{graph}_data": ".data" for graph in ORTWEB_GRAPHS},
    "tokenizer": ".json", "tokenizer_config": ".json", "chat_template": ".jinja",
}


@dataclass(frozen=True)
class OrtwebVariant:
    """A variant the page runs on onnxruntime-web: the onnx target's graphs as it packaged them
    (decoder with its KV cache; for images, the embedding and vision graphs), each with the external
    data file it names, driven by the page's own loop (ortweb.js).

    graphs: {"decoder", "embedding"?, "vision"?: (graph file, data file)}; the data file keeps the
      name the graph gives it (onnxruntime-web is handed it under that name).
    """

    name: str
    label: str
    max_tokens: int
    graphs: Mapping[str, tuple[Path, Path]]
    tokenizer: Path
    tokenizer_config: Path
    chat_template: Path
    generation: Mapping
    data_names: Mapping[str, str]

    def __post_init__(self) -> None:
        _check_variant(self.name, self.label, self.max_tokens)
        # A text-only package's decoder takes input_ids; a multimodal one's takes the embedding graph's
        # inputs_embeds, where the vision graph's soft tokens are placed.
        missing = [graph for graph in ("decoder", "embedding" if "vision" in self.graphs else "decoder") if graph not in self.graphs]
        unknown = sorted(set(self.graphs) - set(ORTWEB_GRAPHS))
        if missing or unknown:
            raise BundleError(f"variant {self.name}: graphs must be decoder, and embedding with vision (missing {missing}, unknown {unknown})")

    @property
    def multimodal(self) -> bool:
        return "vision" in self.graphs

    def files(self) -> dict[str, Path]:
        files = {}
        for graph, (model, data) in self.graphs.items():
            files[graph], files[f"{graph}_data"] = Path(model), Path(data)
        return {**files, "tokenizer": Path(self.tokenizer), "tokenizer_config": Path(self.tokenizer_config),
                "chat_template": Path(self.chat_template)}


def _hash_file(path: Path, chunk_size: int) -> tuple[str, list[str], int]:
    """(whole sha256, per-chunk sha256 list, size), in one pass."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    part = hashlib.sha256()
    part_bytes = 0
    with open(path, "rb") as handle:
        while block := handle.read(_READ):
            whole.update(block)
            size += len(block)
            view = memoryview(block)
            while len(view):
                take = min(chunk_size - part_bytes, len(view))
                part.update(view[:take])
                part_bytes += take
                view = view[take:]
                if part_bytes == chunk_size:
                    chunks.append(part.hexdigest())
                    part = hashlib.sha256()
                    part_bytes = 0
    if part_bytes:
        chunks.append(part.hexdigest())
    return whole.hexdigest(), chunks, size


def _place(source: Path, target: Path) -> None:
    """Copy `source` to `target`. A read-only source (an immutable store object: models are large) is
    hard-linked instead when the file system allows; a writable one is always copied, so that editing
    the bundle can never change the file it was built from."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.stat(source).st_mode & 0o222:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def _app_source(name: str) -> bytes:
    return resources.files("modelforge.web").joinpath("app", name).read_bytes()


def app_digest() -> str:
    """sha256 over the app's source files (name and bytes): a parameter of the web_bundle step, so
    that a change of the page rebuilds the bundle instead of reusing one stored with the old page."""
    digest = hashlib.sha256()
    for name in APP_SOURCE_FILES:
        data = _app_source(name)
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def _canonical_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def write_bundle(
    out_dir: Path,
    *,
    variants: Sequence[Variant | LitertjsVariant | OrtwebVariant],
    runtime: Mapping[str, Path] | None = None,
    title: str,
    runtime_version: str | None = None,
    notice: str = "",
    litertjs: Mapping[str, Path] | None = None,
    litertjs_versions: Mapping[str, str] | None = None,
    ortweb: Mapping[str, Path] | None = None,
    ortweb_versions: Mapping[str, str] | None = None,
) -> dict:
    """Write the bundle into `out_dir` (created; must be absent, empty, or a previous bundle, which is
    replaced). `runtime` is `vendor.runtime_files(web_dir)` (needed by MediaPipe variants);
    `runtime_version` defaults to the version in the package.json next to the runtime files.
    `litertjs` is `vendor.litertjs_files(web_dir)` and `litertjs_versions` `vendor.litertjs_versions`
    (needed by LiteRT.js variants); `ortweb` and `ortweb_versions` the same of onnxruntime-web
    (`vendor.ortweb_files`, `vendor.ortweb_versions`; needed by onnxruntime-web variants). Returns the
    bundle.json content."""
    out_dir = Path(out_dir)
    if not variants:
        raise BundleError("a web bundle needs at least one model variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise BundleError(f"variant names must be unique: {names}")
    mediapipe = [variant for variant in variants if isinstance(variant, Variant)]
    if mediapipe:
        missing = sorted(set(RUNTIME_FILES) - set(runtime or {}))
        if missing:
            raise BundleError(f"runtime files missing: {missing}")
    litert = [variant for variant in variants if isinstance(variant, LitertjsVariant)]
    onnx = [variant for variant in variants if isinstance(variant, OrtwebVariant)]
    if litert:
        missing = sorted(set(LITERTJS_FILES) - set(litertjs or {}))
        if missing or litertjs_versions is None:
            raise BundleError(f"LiteRT.js variants need the LiteRT.js runtime files and versions; missing {missing or 'versions'}")
    if onnx:
        missing = sorted(set(ORTWEB_FILES) - set(ortweb or {}))
        if missing or ortweb_versions is None:
            raise BundleError(f"onnxruntime-web variants need its runtime files and versions; missing {missing or 'versions'}")
    if not title.strip():
        raise BundleError("empty title")
    for variant in variants:
        paths = {"task": variant.task} if isinstance(variant, Variant) else variant.files()
        for path in paths.values():
            if not Path(path).is_file():
                raise BundleError(f"variant {variant.name}: {path} does not exist")
        if isinstance(variant, Variant):
            with open(variant.task, "rb") as handle:
                if handle.read(6) != b"\x00\x00\x00\x00PK":
                    raise BundleError(f"variant {variant.name}: {variant.task} is not a MediaPipe .task (see write_task)")
        elif isinstance(variant, OrtwebVariant):
            for graph in variant.graphs:
                if graph not in variant.data_names:
                    raise BundleError(f"variant {variant.name}: no name for the external data of its {graph} graph")
        else:
            for graph in variant.graphs.values():
                with open(graph, "rb") as handle:
                    if handle.read(8)[4:] != b"TFL3":
                        raise BundleError(f"variant {variant.name}: {graph} is not a .tflite graph")

    if mediapipe and runtime_version is None:
        runtime_version = _version_near(Path(runtime["genai_bundle.mjs"]))

    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        for name in APP_SOURCE_FILES:
            data = _app_source(name)
            if name == "index.html":
                data = data.replace(b"%TITLE%", html.escape(title, quote=True).encode())
            (staging / name).write_bytes(data)

        manifest: dict = {"schema": BUNDLE_SCHEMA, "title": title}
        if mediapipe:
            runtime_entries: dict[str, dict] = {}
            for logical in sorted(RUNTIME_FILES):
                source = Path(runtime[logical])
                digest, _, size = _hash_file(source, CHUNK_SIZE)
                stem, ext = _split_ext(logical)
                rel = f"runtime/{stem}-{digest[:16]}{ext}"
                _place(source, staging / rel)
                runtime_entries[logical] = {"url": rel, "sha256": digest, "size": size}
            manifest["runtime"] = {"package": PACKAGE, "version": runtime_version, "files": runtime_entries}
        if litert:
            manifest["litertjs"] = {"packages": dict(sorted(litertjs_versions.items())), "files": _vendor_litertjs(litertjs, staging)}
        if onnx:
            manifest["onnxruntime_web"] = {"packages": dict(sorted(ortweb_versions.items())), "files": _vendor_litertjs(ortweb, staging)}

        variant_entries = []
        for variant in variants:
            if isinstance(variant, LitertjsVariant):
                variant_entries.append(_litertjs_entry(variant, staging))
                continue
            if isinstance(variant, OrtwebVariant):
                variant_entries.append(_ortweb_entry(variant, staging))
                continue
            digest, chunks, size = _hash_file(Path(variant.task), CHUNK_SIZE)
            rel = f"models/{variant.name}-{digest[:16]}.task"
            _place(Path(variant.task), staging / rel)
            entry: dict = {
                "name": variant.name,
                "label": variant.label,
                "runtime": "mediapipe",
                "url": rel,
                "sha256": digest,
                "size": size,
                "format": "task",
                "chunk_size": CHUNK_SIZE,
                "chunk_sha256": chunks,
                "multimodal": variant.multimodal,
                "max_tokens": variant.max_tokens,
            }
            for key in ("top_k", "temperature", "random_seed"):
                value = getattr(variant, key)
                if value is not None:
                    entry[key] = value
            variant_entries.append(entry)

        manifest["variants"] = variant_entries
        if notice:
            manifest["notice"] = notice  # the page shows it on its model line (e.g. random weights: gibberish)
        (staging / "bundle.json").write_text(_canonical_json(manifest), encoding="utf-8")

        served = bundle_files(staging)
        for rel in served:
            top = rel.split("/", 1)[0]
            if top in ("models", "runtime") and not is_hashed(rel):
                raise BundleError(f"{rel}: files under {top}/ must carry a content hash in their name")
        for name, text in all_configs(served).items():
            (staging / name).write_text(text, encoding="utf-8")

        _replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return manifest


def _vendor_litertjs(files: Mapping[str, Path], staging: Path) -> dict[str, dict]:
    """Copy the LiteRT.js runtime under content-hashed names; a file that names another by its npm
    name (vendor.LITERTJS_REFERENCES) gets the other's hashed name written in, so it is hashed after."""
    entries: dict[str, dict] = {}
    pending = sorted(files)
    while pending:
        ready = [name for name in pending if all(target in entries for target in LITERTJS_REFERENCES.get(name, {}).values())]
        if not ready:
            raise BundleError(f"the LiteRT.js files name each other in a cycle: {pending}")
        for logical in ready:
            pending.remove(logical)
            source = Path(files[logical])
            stem, ext = _split_ext(logical)
            references = LITERTJS_REFERENCES.get(logical)
            if references:
                text = source.read_text(encoding="utf-8")
                for needle, target in references.items():
                    if text.count(needle) != 1:
                        raise BundleError(
                            f"{source}: expected {needle!r} exactly once (found {text.count(needle)}); "
                            "the vendored LiteRT.js changed: update vendor.LITERTJS_REFERENCES"
                        )
                    hashed = posixpath.basename(entries[target]["url"])
                    # an import names a module path ("./x"); a loader's locateFile names a file beside it
                    replacement = f'from "./{hashed}"' if needle.startswith("from ") else needle.replace(target, hashed)
                    text = text.replace(needle, replacement)
                data = text.encode("utf-8")
                digest = hashlib.sha256(data).hexdigest()
                rel = f"runtime/{stem}-{digest[:16]}{ext}"
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                (staging / rel).write_bytes(data)
                size = len(data)
            else:
                digest, _, size = _hash_file(source, CHUNK_SIZE)
                rel = f"runtime/{stem}-{digest[:16]}{ext}"
                _place(source, staging / rel)
            entries[logical] = {"url": rel, "sha256": digest, "size": size}
    return dict(sorted(entries.items()))


def _litertjs_entry(variant: LitertjsVariant, staging: Path) -> dict:
    sources = variant.files()
    split_dir = staging / f".split-{variant.name}"
    streamed = _split_streamed(variant, sources, split_dir) if variant.stream_weights else {}
    files = {}
    for logical, path in sources.items():
        digest, chunks, size = _hash_file(path, CHUNK_SIZE)
        rel = f"models/{logical}-{digest[:16]}{LITERTJS_EXTENSIONS[logical]}"
        if (staging / rel).exists():  # a file two variants share is laid out once
            pass
        elif path.parent == split_dir:  # written here: moved, not copied (2.2 GB at MedGemma 4B)
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, staging / rel)
        else:
            _place(path, staging / rel)
        files[logical] = {"url": rel, "sha256": digest, "size": size, "chunk_size": CHUNK_SIZE, "chunk_sha256": chunks}
    shutil.rmtree(split_dir, ignore_errors=True)
    entry = {
        "name": variant.name,
        "label": variant.label,
        "runtime": "litertjs",
        "multimodal": variant.multimodal,
        "max_tokens": variant.max_tokens,
        "size": sum(entry["size"] for entry in files.values()),
        "files": files,
        "generation": dict(variant.generation),
    }
    if streamed:
        entry["streamed"] = streamed
    return entry


def _ortweb_entry(variant: OrtwebVariant, staging: Path) -> dict:
    files = {}
    for logical, path in variant.files().items():
        digest, chunks, size = _hash_file(path, CHUNK_SIZE)
        rel = f"models/{logical}-{digest[:16]}{ORTWEB_EXTENSIONS[logical]}"
        if not (staging / rel).exists():  # a file two variants share is laid out once
            _place(path, staging / rel)
        files[logical] = {"url": rel, "sha256": digest, "size": size, "chunk_size": CHUNK_SIZE, "chunk_sha256": chunks}
    return {
        "name": variant.name,
        "label": variant.label,
        "runtime": "onnxruntime_web",
        "multimodal": variant.multimodal,
        "max_tokens": variant.max_tokens,
        "size": sum(entry["size"] for entry in files.values()),
        "files": files,
        "external_data": {graph: variant.data_names[graph] for graph in sorted(variant.graphs)},
        "generation": dict(variant.generation),
    }


def _split_streamed(variant: LitertjsVariant, sources: dict[str, Path], split_dir: Path) -> dict[str, dict]:
    """Split the variant's decoder and embedder (quantized weights out), replacing them in `sources` and
    adding their `<graph>_weights`; returns bundle.json's `streamed`: per graph, its weights file's
    logical name, the external buffer group the flatbuffer names (the page creates its file-system entry
    under that name), the weights' size and the largest one's (the page's scratch region)."""
    from modelforge.web.split_weights import QUANTIZED_TYPES, split_weights  # flatbuffers: for streamed variants only

    split_dir.mkdir()
    streamed = {}
    for graph in STREAMED_GRAPHS:
        group = f"{variant.name}-{graph}.weights"
        flatbuffer, weights = split_dir / f"{graph}.tflite", split_dir / group
        result = split_weights(sources[graph], flatbuffer, weights, QUANTIZED_TYPES)
        if not result.external_buffers:
            raise BundleError(
                f"variant {variant.name}: its {graph} graph ({sources[graph]}) has no quantized weights to stream; "
                "stream_weights needs a quantized text recipe (e.g. dynamic_wi4b32_afp32)"
            )
        sources[graph], sources[f"{graph}_weights"] = flatbuffer, weights
        streamed[graph] = {"weights": f"{graph}_weights", "group": group, "size": result.weights_bytes, "largest": result.largest_external}
    return streamed


def bundle_files(bundle_dir: Path) -> list[str]:
    """The served files of a bundle (bundle-relative, sorted): app files, bundle.json, runtime/, models/."""
    bundle_dir = Path(bundle_dir)
    out = [name for name in APP_FILES if (bundle_dir / name).is_file()]
    for directory in ("runtime", "models"):
        base = bundle_dir / directory
        if base.is_dir():
            out += [f"{directory}/{p.name}" for p in sorted(base.iterdir()) if p.is_file()]
    return sorted(out)


def _split_ext(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, "." + ext) if dot else (name, "")


def _version_near(path: Path) -> str:
    for parent in path.parents:
        package_json = parent / "package.json"
        if package_json.is_file():
            return json.loads(package_json.read_text())["version"]
    raise BundleError(f"cannot tell the runtime version: no package.json above {path}; pass runtime_version")


def _replace(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise BundleError(f"{out_dir} exists and is not a directory")
        entries = list(out_dir.iterdir())
        if entries and not (out_dir / "bundle.json").is_file():
            raise BundleError(f"{out_dir} is not empty and is not a previous web bundle; refusing to replace it")
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        try:
            os.replace(staging, out_dir)
        except BaseException:
            os.replace(old, out_dir)
            raise
        shutil.rmtree(old)
    else:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out_dir)
