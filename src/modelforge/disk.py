"""The disk a build needs, predicted before anything runs (as memory.py predicts its peak memory):
the bytes every step adds to the store, the free space a build needs, the store's size after it,
and the refusal of a build whose store (or dist/) filesystem cannot hold it.

A step's outputs are predicted file by file from what the plan knows (the step's kind and params,
the source's tensor shapes and file sizes, the predicted files of its inputs), with the weights of
a graph at the bytes its recipe stores them in (web/limits.py's RecipeStorage, checked there against
the toolchain's real files):

    litert_export      a float32 .tflite per graph: its weights × 4 + graph structure (GRAPH_BYTES)
    litert_quantize    the same graphs at the recipe's bits per weight (+ scales) + structure
    onnx_export        the builder's decoder (MatMulNBits for int4/int8: a byte or half of one per
                       weight + a float32 scale per block; float32 else) + tokenizer files; the
                       vision graph and the token embedding in float32
    onnx_quantize      MatMulNBits at the step's precision
    gguf_convert/…     the GGUF type's bits per weight (GGUF_BITS, llama.cpp's block layouts)
    *_package, web_*   the sum of the files they pack (a .litertlm, a .task, a zip) + headers
    parity_reference   the logits it saves: prompts × steps × vocabulary × 4 bytes, + image embeddings
    parity reports     a few kilobytes (REPORT_BYTES)

Objects are content-addressed: a file a step passes through (the web bundle's models, the onnx
package's graphs, an assembled checkpoint's shards) is the same object and costs nothing again; a
source file a step copies in (tokenizer, carried files) is stored once, however many steps take it.
A step writes its outputs under the store's tmp/ and renames them in, so its outputs are counted
once: the peak free space a build needs is the new objects of the steps that run so far, the
temporaries of the step running (_scratch: a >2 GiB graph's layout rewrite, the onnx quantizer's
input copy), and the copies laid out in dist/ (files under LINK_FROM are copied; larger ones are hard
links, no bytes, when dist/ is on the store's filesystem, else copies too). Steps already in the
store (or pulled from the remote cache: they write their objects too) count only when they run.
The source is not counted: a local source is on disk already, and a Hub download comes before the plan.

The constants are the tiny fixture's measured graph structure (fresh builds, 2026-12-05); the model
is checked against those builds step by step and against MedGemma 4B's shipped files (bench/RESULTS.md,
issue #26): docs/commands.md states the accuracy, tests/test_disk.py holds it. The rules are keyed on
step kind names, in one table rather than in each step's module, because a rule reads the plan's
shapes and its inputs' predicted files, which a step module (run time) never sees; a test checks the
table against the step registry.

With a store budget (`Retention`), `need` applies retention.py's policy to the predicted sizes, in
the executor's order, so the peak and the store after the build are those of a budgeted build.

Imports only `errors`, `memory` (sizes), `outputs` (LINK_FROM), `retention` and `web.limits` (recipe storage): the
planner calls it, so `plan` stays free of torch.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from modelforge.errors import PlanError
from modelforge.memory import parse_size
from modelforge.outputs import LINK_FROM  # files of this size or more are hard-linked into dist/
from modelforge.retention import Candidate, choose, consumers, ready
from modelforge.web.limits import recipe_storage

__all__ = ["ENV_LIMIT", "LINK_FROM", "RULES", "STATED_ERROR", "DiskNeed", "Retention", "need", "predict_steps", "refuse_if_full"]

ENV_LIMIT = "MODELFORGE_DISK_LIMIT"

# --- measured ------------------------------------------------------------------------------------
# Graph structure of a .tflite besides its weights (ops, signatures, small constants), from the tiny
# fixture's export (2 text layers, 1 vision layer; cache 256, prefill 32 and 128): model.tflite
# 1,003,088 B for 559,872 B of float32 weights → 221,608 B a decoder layer; embedder.tflite 265,052
# for 262,144; vision_encoder.tflite 159,672 for 111,872 (a SigLIP layer 47,800); vision_adapter.tflite
# 19,620 for 8,320. At MedGemma 4B they are 0.1 % of a graph; the weights are what counts.
GRAPH_BYTES = {"decoder_layer": 221_608, "embedder": 2_908, "vision_layer": 47_800, "adapter": 11_300}
# A parity step's report, a metadata or config file, an export report (tiny: 0.3-2 kB).
REPORT_BYTES = 2_048
# The web bundle's own files (app, styles, server configs, bundle.json): 11 files of ≤ 34 kB (4B build).
WEB_APP_BYTES = 120_000
# A .litertlm's section headers and alignment, a .task's zip headers and padded tokenizer: the tiny
# fixture's packages are their inputs + 5.4 kB (.litertlm) and + 16 kB (.task).
PACKAGE_OVERHEAD = 16 * 1024
# onnx: the graph structure (model.onnx, vision.onnx, embedding.onnx) beside its .data (tiny: 23,029;
# 77,167; 7,723 bytes), per decoder layer for the text graph.
ONNX_GRAPH_BYTES = {"decoder_layer": 11_500, "vision": 77_167, "embedding": 7_723}
# GGUF bits per weight of each type (llama.cpp's ggml block layouts: Q8_0 = 34 bytes / 32 weights,
# Q4_K = 144 / 256, Q6_K = 210 / 256, …); a K-quant mix (_S/_M/_L) averages its types.
GGUF_BITS = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q4_0": 4.5, "Q5_0": 5.5, "Q2_K": 2.9, "Q3_K_S": 3.5, "Q3_K_M": 3.9,
    "Q3_K_L": 4.3, "Q4_K_S": 4.6, "Q4_K_M": 4.9, "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.6,
}
# The bound tests/test_disk.py holds |predicted / measured − 1| to, for every step of the tiny build
# that stores 256 kB or more and for MedGemma 4B's store; measured: at most 6 % and 7 %.
STATED_ERROR = 0.15

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class FilePrediction:
    """One output file: its predicted bytes, the weights it holds (name → shape, for a later
    quantization of it), and what it is: None for bytes the step writes, ("source", sha256) for a
    source file copied in, or the identity of the upstream file it passes through."""

    size: int
    shapes: Mapping[str, tuple[int, ...]] | None = None
    identity: tuple | None = None


Files = dict[str, FilePrediction]


@dataclass(frozen=True)
class Context:
    """What a rule may read: the shapes of components' tensors, the source's tensor headers and
    config, and the source's files (path → (sha256, size))."""

    shapes: Callable[[Iterable[str]], dict[str, tuple[int, ...]]]
    tensors: Mapping[str, Any]
    config: Mapping[str, Any]
    source_files: Mapping[str, tuple[str, int]]


def _numel(shape: Iterable[int]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def _layers(shapes: Mapping[str, tuple[int, ...]]) -> int:
    return len({match.group(1) for name in shapes if (match := _LAYER.search(name))})


def _weights(shapes: Mapping[str, tuple[int, ...]], recipe: str) -> int:
    """Bytes of the weights of `shapes` stored by a LiteRT recipe (`none`: float32): 2-D weights
    quantized with their scales; 1-D ones, and the vision tower's position table (a lookup the
    quantizer leaves alone: 18.9 MB at MedGemma's widths, measured at 1 vision layer), float32."""
    if recipe == "none":
        return sum(4 * _numel(shape) for shape in shapes.values())
    storage = recipe_storage(recipe)
    total = 0
    for name, shape in shapes.items():
        if len(shape) >= 2 and "position_embedding" not in name:
            data, scales = storage.tensor_bytes(tuple(shape))
            total += data + scales
        else:
            total += 4 * _numel(shape)
    return total


def _embedding(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {name: shape for name, shape in shapes.items() if name.endswith("embed_tokens.weight")}


def _graph(shapes: Mapping[str, tuple[int, ...]], recipe: str, structure: int) -> FilePrediction:
    return FilePrediction(_weights(shapes, recipe) + structure, dict(shapes))


def _structure(name: str, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The graph structure of a LiteRT graph file by its role."""
    if name == "embedder.tflite":
        return GRAPH_BYTES["embedder"]
    if name == "vision_adapter.tflite":
        return GRAPH_BYTES["adapter"]
    if name == "vision_encoder.tflite":
        return GRAPH_BYTES["vision_layer"] * max(1, _layers(shapes))
    return GRAPH_BYTES["decoder_layer"] * max(1, _layers(shapes))


def _report(name: str = "report.json") -> Files:
    return {name: FilePrediction(REPORT_BYTES)}


def _source(context: Context, path: str) -> FilePrediction:
    sha, size = context.source_files[path]
    return FilePrediction(size, None, ("source", sha))


def _matmul_nbits(shape: tuple[int, ...], bits: int, block: int) -> int:
    """onnxruntime's MatMulNBits of a 2-D weight: `bits` per value in blocks, a float32 scale each."""
    rows, columns = shape[0], _numel(shape[1:])
    blocks = -(-columns // block)
    return rows * blocks * (block * bits // 8) + rows * blocks * 4


def _onnx_weights(shapes: Mapping[str, tuple[int, ...]], precision: str, block: int | None) -> int:
    if precision == "fp32":
        return sum(4 * _numel(shape) for shape in shapes.values())
    bits = 4 if precision == "int4" else 8
    # MatMul weights only: the vision position table is a lookup and stays float32, as under LiteRT.
    return sum(
        _matmul_nbits(shape, bits, block or 32) if len(shape) == 2 and "position_embedding" not in name else 4 * _numel(shape)
        for name, shape in shapes.items()
    )


# --- the rules, by step kind: (params, inputs: input name → its files, context) → output files ---------
def _litert_export(params, inputs, context: Context) -> Files:
    if params["part"] == "vision":
        encoder, adapter = context.shapes(("vision_encoder",)), context.shapes(("projector",))
        return {
            "vision_encoder.tflite": _graph(encoder, "none", _structure("vision_encoder.tflite", encoder)),
            "vision_adapter.tflite": _graph(adapter, "none", _structure("vision_adapter.tflite", adapter)),
            **_report("export_report.json"),
        }
    text = context.shapes(("text_decoder",))
    # The decoder holds the embedding once (the tied output head); a multimodal task's graph takes
    # embeddings in and has a separate embedder (the token table again).
    files = {"model.tflite": _graph(text, "none", _structure("model.tflite", text)), **_report("export_report.json")}
    if params.get("task") == "image_text_to_text":
        embedding = _embedding(text)
        files["embedder.tflite"] = _graph(embedding, "none", GRAPH_BYTES["embedder"])
    return files


def _litert_quantize(params, inputs, context: Context) -> Files:
    graphs = inputs["models"]
    return {
        name: _graph(graph.shapes or {}, params["recipe"], _structure(name, graph.shapes or {}))
        for name, graph in graphs.items() if name.endswith(".tflite")
    }


def _sum_of(inputs: Mapping[str, Files], skip: Iterable[str] = ()) -> int:
    skipped = set(skip)
    return sum(item.size for name, files in inputs.items() if name not in skipped for item in files.values())


def _litertlm_package(params, inputs, context: Context) -> Files:
    return {params["file"]: FilePrediction(_sum_of(inputs) + PACKAGE_OVERHEAD)}


def _web_task(params, inputs, context: Context) -> Files:
    # The tokenizer is padded to the vocabulary (a few kB more); the graph is stored whole.
    return {params["file"]: FilePrediction(_sum_of(inputs) + PACKAGE_OVERHEAD)}


def _web_bundle(params, inputs, context: Context) -> Files:
    """Models and source files are hard links to their objects (nothing new); the vendored runtimes
    and the app are new, and a stream_weights variant's decoder and embedder split in two (the
    quantized graph's bytes again)."""
    files: Files = {}
    for runtime in ("runtime", "litertjs", "onnxruntime_web"):
        for name, item in params.get(runtime, {}).get("files", {}).items():
            files[f"runtime/{name}"] = FilePrediction(item["size"], None, ("vendored", item["sha256"]))
    files["app"] = FilePrediction(WEB_APP_BYTES)
    for input_name, input_files in inputs.items():
        for name, item in input_files.items():
            files[f"{input_name}/{name}"] = item  # the same object
    for variant in params.get("variants", []):
        if variant.get("stream_weights"):
            text = inputs.get(f"variant.{variant['name']}.text", {})
            split = sum(item.size for name, item in text.items() if name in ("model.tflite", "embedder.tflite"))
            files[f"models/{variant['name']}.split"] = FilePrediction(split)
    return files


def _parity_reference(params, inputs, context: Context) -> Files:
    text = context.config.get("text_config", context.config)
    embedding = _embedding(context.shapes(("text_decoder",)))
    vocabulary, hidden = next(iter(embedding.values()), (text.get("vocab_size", 0), text.get("hidden_size", 0)))
    positions = len(params["prompts"]) * params["steps"]
    files = {"text.npz": FilePrediction(positions * vocabulary * 4 + positions * 64), **_report("reference.json")}
    if params["multimodal"]:
        tokens = context.config.get("mm_tokens_per_image", 256)
        # Two test cards' embeddings, float64 (parity_phases.vision_references), and the cards (PNG).
        files["vision.npz"] = FilePrediction(2 * tokens * hidden * 8 + 1024)
        files["cards"] = FilePrediction(2 * 16 * 1024)
    return files


def _onnx_export(params, inputs, context: Context) -> Files:
    if params["part"] == "vision":
        vision = context.shapes(("vision_encoder", "projector"))
        embedding = _embedding(context.shapes(("text_decoder",)))
        return {
            "vision.onnx": FilePrediction(ONNX_GRAPH_BYTES["vision"]),
            "vision.onnx.data": FilePrediction(_onnx_weights(vision, "fp32", None), vision),
            "embedding.onnx": FilePrediction(ONNX_GRAPH_BYTES["embedding"]),
            "embedding.onnx.data": FilePrediction(_onnx_weights(embedding, "fp32", None), embedding),
        }
    text = context.shapes(("text_decoder",))
    tied = context.config.get("text_config", context.config).get("tie_word_embeddings", True)
    if params.get("exclude_embeds") or (params["precision"] == "fp32" and tied):
        # The token table leaves the decoder (embedding.onnx gathers it) and the tied output head stays;
        # or, float32 and tied, the gather and the head read one table (measured on Gemma 3 270M: 1.07 GB).
        weights = _onnx_weights(text, params["precision"], params.get("block_size"))
    else:
        weights = _onnx_weights(text, params["precision"], params.get("block_size")) + _onnx_weights(_embedding(text), "fp32", None)
    # The builder stores the RoPE caches too: cos and sin, local and global, context × head_dim / 2
    # float32 each (tiny: 262,144 B; 4B: 8.4 MB).
    head_dim = context.config.get("text_config", context.config).get("head_dim", 256)
    weights += 4 * params.get("context_length", 0) * (head_dim // 2) * 4
    files = {
        "model.onnx": FilePrediction(ONNX_GRAPH_BYTES["decoder_layer"] * max(1, _layers(text))),
        "model.onnx.data": FilePrediction(weights, text),
        **_report("genai_config.json"), **_report("export_report.json"),
    }
    for path in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if path in context.source_files:
            files[path] = _source(context, path)
    return files


def _onnx_quantize(params, inputs, context: Context) -> Files:
    graph = inputs["graph"]
    stem = params["file"]
    shapes = next((item.shapes for item in graph.values() if item.shapes), {})
    return {
        stem: FilePrediction(graph[stem].size if stem in graph else ONNX_GRAPH_BYTES["vision"]),
        f"{stem}.data": FilePrediction(_onnx_weights(shapes, params["precision"], params.get("block_size")), shapes),
    }


def _onnx_package(params, inputs, context: Context) -> Files:
    files: Files = {"genai_config.json": FilePrediction(REPORT_BYTES)}
    for input_name, input_files in inputs.items():
        if input_name == "preprocessor":
            files["processor_config.json"] = FilePrediction(REPORT_BYTES)
            continue
        for name, item in input_files.items():
            if name not in ("genai_config.json", "export_report.json"):
                files[name] = item
    return files


def _gguf_convert(params, inputs, context: Context) -> Files:
    bits = GGUF_BITS.get(params["type"], 32.0)
    if params["part"] == "vision":
        shapes = context.shapes(("vision_encoder", "projector"))
        return {"mmproj.gguf": FilePrediction(int(sum(_numel(s) for s in shapes.values()) * bits / 8), shapes)}
    shapes = context.shapes(("text_decoder",))
    tokenizer = context.source_files.get("tokenizer.json", ("", 0))[1]
    return {"model.gguf": FilePrediction(int(sum(_numel(s) for s in shapes.values()) * bits / 8) + tokenizer, shapes)}


def _gguf_quantize(params, inputs, context: Context) -> Files:
    source = inputs["gguf"]["model.gguf"]
    shapes = source.shapes or {}
    tokenizer = context.source_files.get("tokenizer.json", ("", 0))[1]
    return {"model.gguf": FilePrediction(int(sum(_numel(s) for s in shapes.values()) * GGUF_BITS.get(params["type"], 32.0) / 8) + tokenizer, shapes)}


def _assemble(params, inputs, context: Context) -> Files:
    """A checkpoint laid out from its inputs' files: nothing new."""
    return {f"{input_name}/{name}": item for input_name, input_files in inputs.items() for name, item in input_files.items()}


def _gguf_package(params, inputs, context: Context) -> Files:
    """The GGUF files passed through, and a Modelfile (the chat template and tokenizer config go into it)."""
    graphs = {name: files for name, files in inputs.items() if name in ("text", "vision")}
    return {**_assemble(params, graphs, context), "Modelfile": FilePrediction(REPORT_BYTES)}


def _carry_files(params, inputs, context: Context) -> Files:
    return dict(inputs["source"])


def _transform_weights(params, inputs, context: Context) -> Files:
    files: Files = {}
    for shard in params.get("shards", []):
        size = sum(context.tensors[source].nbytes for _, _, source in shard["tensors"] if source in context.tensors)
        files[shard["file"]] = FilePrediction(size + 64 * len(shard["tensors"]) + 8)
    if params.get("index"):
        files["model.safetensors.index.json"] = FilePrediction(REPORT_BYTES)
    return files


_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}
_FLOAT = ("F16", "BF16", "F32", "F64")


def _cast_weights(params, inputs, context: Context) -> Files:
    files: Files = {}
    for name, item in inputs["checkpoint"].items():
        if not name.endswith(".safetensors"):
            files[name] = item
    weights = sum(_numel(info.shape) * _DTYPE_BYTES[params["dtype"]] if info.dtype in _FLOAT else info.nbytes for info in context.tensors.values())
    files["weights"] = FilePrediction(weights)
    return files


def _small(params, inputs, context: Context) -> Files:
    return _report()


RULES: dict[str, Callable[[Any, Mapping[str, Files], Context], Files]] = {
    "litert_export": _litert_export,
    "litert_quantize": _litert_quantize,
    "litertlm_metadata": _small,
    "litertlm_package": _litertlm_package,
    "litert_parity": _small,
    "parity_reference": _parity_reference,
    "web_task": _web_task,
    "web_bundle": _web_bundle,
    "onnx_export": _onnx_export,
    "onnx_quantize": _onnx_quantize,
    "onnx_package": _onnx_package,
    "onnx_parity": _small,
    "gguf_convert": _gguf_convert,
    "gguf_quantize": _gguf_quantize,
    "gguf_package": _gguf_package,
    "gguf_parity": _small,
    "rewrite_config": _small,
    "carry_files": _carry_files,
    "transform_weights": _transform_weights,
    "assemble": _assemble,
    "check_architecture": _small,
    "cast_weights": _cast_weights,
}


# The temporaries a step writes beside its outputs, by kind (its outputs themselves are written under
# tmp/ and renamed in, so they are counted once): the export worker rewrites a graph of over 2 GiB
# (external buffers) into a copy before replacing it, freeing the original's blocks chunk by chunk as
# they are copied (steps/litert/tflite_layout.py), so one chunk more at most, not a second graph;
# onnx_quantize copies its input graph into its scratch directory (steps/onnx/quantize.py).
LAYOUT_REWRITE_FROM = 2**31
LAYOUT_REWRITE_CHUNK = 64 << 20  # tflite_layout.COPY_CHUNK


def _scratch(kind: str, inputs: Mapping[str, Files], files: Files) -> int:
    if kind == "litert_export":
        return LAYOUT_REWRITE_CHUNK if any(name.endswith(".tflite") and item.size > LAYOUT_REWRITE_FROM for name, item in files.items()) else 0
    if kind == "onnx_quantize":
        return _sum_of(inputs)
    return 0


def predict_steps(steps, source_name: str, context: Context) -> tuple[dict[str, int], dict[str, int], dict[str, dict[str, int]], dict[str, list[str]]]:
    """(step name → bytes it adds to the store, step name → bytes of temporaries it writes beside
    them and removes, step name → its output files' predicted bytes, step name → the later steps
    that pass an object of it through) for `steps` in topological order: each object counted at
    the first step that writes it."""
    predicted: dict[str, Files] = {source_name: {path: _source(context, path) for path in context.source_files}}
    seen: set[tuple] = set()
    first: dict[tuple, str] = {}  # an object's identity → the step that writes it
    holders: dict[str, set[str]] = {}  # step → the later steps naming an object it wrote (pass-throughs)
    added: dict[str, int] = {}
    scratch: dict[str, int] = {}
    # A node's identity is its content (kind, version, params, inputs), as its key is: two names for
    # one key (a web variant checked like another) run once and store once.
    identity: dict[str, tuple] = {source_name: ("source",)}
    for step in steps:
        identity[step.name] = (step.kind, step.version, step.params_json, tuple((ref.name, identity[ref.node], ref.select) for ref in step.inputs))
        inputs = {}
        for ref in step.inputs:
            upstream = predicted[ref.node]
            inputs[ref.name] = {name: item for name, item in upstream.items() if ref.select is None or name in ref.select}
        rule = RULES.get(step.kind)
        if rule is None:
            raise PlanError(f"step {step.name}: no disk prediction for step kind {step.kind!r}; this is a modelforge bug")
        files = {}
        for name, item in rule(step.params, inputs, context).items():
            # A file the step writes is a new object named by its step and file.
            files[name] = item if item.identity is not None else FilePrediction(item.size, item.shapes, ("node", identity[step.name], name))
        predicted[step.name] = files
        new = 0
        for item in files.values():
            if item.identity not in seen:
                seen.add(item.identity)
                first[item.identity] = step.name
                new += item.size
            elif first.get(item.identity) not in (None, step.name):
                holders.setdefault(first[item.identity], set()).add(step.name)
        added[step.name] = new
        scratch[step.name] = _scratch(step.kind, inputs, files) if new else 0
    outputs = {name: {file: item.size for file, item in files.items()} for name, files in predicted.items() if name != source_name}
    return added, scratch, outputs, {name: sorted(names) for name, names in holders.items()}


# --- the build's need ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiskNeed:
    """What a build needs of the disk: `store` bytes of new objects (the steps that run), `peak`
    bytes of the store's filesystem at once (those objects so far and a step's temporaries), `dist`
    bytes copied into dist/, the store's size now and after."""

    store: int
    peak: int
    dist: int
    store_now: int
    store_after: int
    dist_separate: bool
    budget: int | None = None  # the store budget the figures obey (retention.py), if any

    @property
    def total(self) -> int:
        """The free space the store's filesystem needs (and dist/'s copies, when on it)."""
        return self.peak + (0 if self.dist_separate else self.dist)


def store_size(root: Path) -> int:
    """Bytes of the store's objects (and records): what `du` counts, hard links once."""
    total, inodes = 0, set()
    for path in (root / "objects").glob("*/*"):
        try:
            status = path.stat()
        except FileNotFoundError:
            continue
        if status.st_ino not in inodes:
            inodes.add(status.st_ino)
            total += status.st_size
    return total


def _device(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class Retention:
    """A store budget and what simulating it needs of the plan (retention.py's policy): each step's
    inputs (step names), the steps whose objects must stay (targets, checks), the costly ones."""

    budget: int
    reads: Mapping[str, Iterable[str]]
    protected: set[str]
    costly: set[str]


def need(disk_facts: Mapping[str, Any], to_run: Iterable[str], target_files: Mapping[str, Mapping[str, int]], store_root: Path,
         dist: Path | None, retention: Retention | None = None) -> DiskNeed:
    """The disk need of building the steps `to_run` (by name), laying out target_files (target →
    file → predicted bytes) under dist; with a store budget, the build drops intermediates as the
    executor will (the objects of steps not run here count as freeing nothing: they may be gone)."""
    steps, scratch, pending = disk_facts.get("steps", {}), disk_facts.get("scratch", {}), set(to_run)
    holders = disk_facts.get("holders", {})
    now = store_size(store_root)
    store = peak = 0
    readers = consumers([(name, reads) for name, reads in retention.reads.items()]) if retention else {}
    handled: set[str] = set()
    dropped: set[str] = set()
    for name, size in steps.items():  # the plan's order, which the executor follows
        if name in pending:
            peak = max(peak, store + size + scratch.get(name, 0))
            store += size
        if retention is None:
            continue
        handled.add(name)
        ready_now = ready(readers, handled, retention.protected, dropped)
        if not ready_now or now + store <= retention.budget:
            continue

        def frees(step: str) -> int:
            staying = [holder for holder in holders.get(step, ()) if holder in retention.protected or holder not in ready_now]
            return 0 if staying or step not in pending else steps.get(step, 0)

        for step in choose([Candidate(step, frees(step), step in retention.costly) for step in ready_now], now + store, retention.budget):
            store -= frees(step)
            dropped.add(step)
    separate = dist is not None and _device(dist) != _device(store_root)
    copied = sum(size for files in target_files.values() for size in files.values() if separate or size < LINK_FROM)
    return DiskNeed(store, peak, copied, now, now + store, separate, retention.budget if retention else None)


def free_space(path: Path) -> int:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return shutil.disk_usage(candidate).free
    return 0


def disk_limit(path: Path, override: str | int | None = None) -> tuple[int, str]:
    """The free disk a build may use at `path`, and where the figure comes from: --disk-limit, else
    $MODELFORGE_DISK_LIMIT (bytes, or a size such as 40GiB), else the filesystem's free space."""
    for value, origin in ((override, "--disk-limit"), (os.environ.get(ENV_LIMIT), ENV_LIMIT)):
        if value is None or value == "":
            continue
        try:
            return parse_size(value), origin
        except ValueError:
            raise PlanError(f"{origin}={value!r} is not a size in bytes (or like 40GiB, 40GB); fix it or unset it") from None
    return free_space(path), "free space"


def size_text(value: int) -> str:
    if value >= 10**9:
        return f"{value / 1e9:.2f} GB"
    return f"{value / 1e6:.1f} MB" if value >= 10**6 else f"{value / 1e3:.0f} kB"


def refuse_if_full(the_need: DiskNeed, store_root: Path, dist: Path | None, override: str | int | None = None) -> None:
    """Raise a one-line PlanError when the store's filesystem (and dist's, when another) has less
    free space than the build needs."""
    checks = [(store_root, the_need.total, "the store")]
    if the_need.dist_separate and dist is not None:
        checks.append((dist, the_need.dist, "dist"))
    for path, needed, what in checks:
        limit, origin = disk_limit(path, override)
        if needed > limit:
            where = f"{path} has {size_text(limit)} free" if origin == "free space" else f"{origin} allows {size_text(limit)}"
            raise PlanError(
                f"this build would write about {size_text(needed)} to {what} (predicted from the tensor sizes of the steps that would run), "
                f"but {where}; free space, point MODELFORGE_STORE / --store elsewhere, or set --disk-limit / {ENV_LIMIT} if you know better"
            )
