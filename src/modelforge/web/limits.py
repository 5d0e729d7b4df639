"""What a web variant may weigh: the browser runtime's model-size limits, and the size of a variant's
`.task` predicted from tensor shapes and the quantization recipe at plan time (no export needed).

Owns the limit constants and the prediction; imports nothing but the standard library (the planner
calls it, so no model library may come in). Where each number comes from: docs/web-limits.md.

The prediction mirrors what the pinned toolchain writes (checked against the tiny model's real
`.task` files in tests/web/test_limits.py): every 2-D text-decoder weight (the linear layers and the
embedding table, which the LM head shares: the decoder graph holds it once) is stored quantized, 1-D
weights (norms) stay float32; channelwise recipes keep a float32 scale and an int64 zero point per
output row in the flatbuffer's quantization parameters; blockwise recipes (`…b32`, `…b64`) keep one
float16 scale per block in a separate tensor. A `.task` with an embedder graph (TF_LITE_EMBEDDER: the
litertlm target's export, whose decoder takes embeddings) holds the table a second time, there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "GRAPH_BYTES_PER_LAYER",
    "LITERTJS_HEAP_MAX",
    "MAX_LITERTJS_GRAPH_BYTES",
    "MAX_TASK_BYTES",
    "MAX_TENSOR_BYTES",
    "WASM32_HEAP_MAX",
    "RecipeStorage",
    "StreamedGraphPrediction",
    "TaskSizePrediction",
    "WebLimitError",
    "check_litertjs_graphs",
    "check_task_size",
    "kv_cache_io_bytes",
    "predict_graph_bytes",
    "predict_streamed_graph",
    "predict_task_size",
    "recipe_storage",
]

# Emscripten's heap ceiling in @mediapipe/tasks-genai 0.10.29 (genai_wasm_internal.js `getHeapMax`: one
# wasm page short of 4 GiB). The runtime's `.task` path copies the whole file into MEMFS and maps it,
# and Emscripten's MEMFS `mmap` copies the mapped bytes into this heap.
WASM32_HEAP_MAX = 4_294_901_760
# The largest `.task` a variant may be: the wasm32 heap less 1 GiB for what the runtime itself keeps
# there (graph, tokenizer, interpreter arenas, staging of weights on their way to the GPU).
MAX_TASK_BYTES = 3 * 2**30
# The runtime asks the WebGPU adapter for its largest maxBufferSize / maxStorageBufferBindingSize and
# warns that an adapter below 524,550,144 bytes "is unable to execute most LLM tasks" (genai_bundle.mjs,
# `createWebGpuDevice`). A weight tensor up to this size fits one buffer binding on every adapter the
# runtime itself accepts; a larger one only on some (WebGPU's defaults are 256 MiB and 128 MiB).
MAX_TENSOR_BYTES = 524_550_144
# The wasm heap of @litertjs/core 2.5.3: every one of its four builds (litert_wasm_{jspi_,compat_,threaded_,}
# internal.wasm) declares a memory of at most 32,768 pages, and the loaders' `getHeapMax` returns
# 2147483648, so the heap cannot grow past 2 GiB (not the 4 GiB a wasm32 memory could have).
# `loadAndCompile` mallocs each whole .tflite there, whichever accelerator compiles it, and frees it only
# when the model is deleted: a variant's graphs sit in this heap together for the page's life.
LITERTJS_HEAP_MAX = 2_147_483_648
# The most a LiteRT.js variant's graphs may weigh together: that heap less 512 MiB for the runtime's own
# (its binary's data, interpreter arenas, CPU-side tensors). A judgement, like the .task's reserve; on the
# wasm backend the KV cache and activations live in the same heap too (docs/web-limits.md).
MAX_LITERTJS_GRAPH_BYTES = LITERTJS_HEAP_MAX - 512 * 2**20
# Graph structure (ops, signatures, small constants) besides the weights, per decoder layer: the tiny
# model's export measures ~260 KB per layer with two prefill signatures and a decode one; doubled.
GRAPH_BYTES_PER_LAYER = 512 * 1024
# Zip headers and alignment of the .task's three members, and the LLM metadata.
TASK_OVERHEAD_BYTES = 64 * 1024

_RECIPE = re.compile(r"^(?:dynamic|weight_only)(?:_legacy)?_wi(?P<bits>\d+)(?:b(?P<block>\d+)|c(?:_hr)?)?_afp32$")


class WebLimitError(ValueError):
    """A web variant cannot fit the browser runtime's limits."""


@dataclass(frozen=True)
class RecipeStorage:
    """How a quantization recipe stores a 2-D weight: bits per element and, for blockwise recipes, the
    block length (one float16 scale per block); channelwise recipes have block None."""

    bits: int
    block: int | None

    def tensor_bytes(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(bytes of the quantized data tensor, bytes of its scales: a separate float16 tensor when
        blockwise, the flatbuffer's quantization parameters when channelwise)."""
        numel = _numel(shape)
        data = (numel * self.bits + 7) // 8
        if self.block is not None:
            return data, -(-numel // self.block) * 2
        return data, shape[0] * (4 + 8)  # float32 scale + int64 zero point per output row


def recipe_storage(recipe: str) -> RecipeStorage:
    """The storage of an ai-edge-quantizer recipe name (e.g. dynamic_wi8_afp32 → 8 bits channelwise,
    dynamic_wi4b32_afp32 → 4 bits in blocks of 32)."""
    match = _RECIPE.match(recipe)
    if match is None:
        raise WebLimitError(f"cannot tell how recipe {recipe!r} stores weights; expected a name like dynamic_wi4b32_afp32")
    block = match.group("block")
    return RecipeStorage(int(match.group("bits")), int(block) if block else None)


@dataclass(frozen=True)
class TaskSizePrediction:
    """The predicted `.task` of one variant."""

    task_bytes: int
    weight_bytes: int
    largest_tensor: str
    largest_tensor_bytes: int
    layers: int

    def as_fact(self) -> dict:
        return {
            "task_bytes": self.task_bytes,
            "weight_bytes": self.weight_bytes,
            "largest_tensor": self.largest_tensor,
            "largest_tensor_bytes": self.largest_tensor_bytes,
        }


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def predict_task_size(shapes: Mapping[str, tuple[int, ...]], recipe: str, tokenizer_bytes: int, *, embedder: bool = False) -> TaskSizePrediction:
    """The `.task` of a text export of the decoder whose weights have `shapes` (name → shape),
    quantized with `recipe`, with a tokenizer of `tokenizer_bytes`; with `embedder`, plus the embedder
    graph (the embedding table again, and one layer's allowance of graph structure). The largest
    weight is the decoder graph's: the embedder's lookup runs on the CPU, its table binds no GPU buffer."""
    storage = recipe_storage(recipe)
    weights = 0
    largest, largest_bytes = "", 0
    layers: set[str] = set()
    for name, shape in sorted(shapes.items()):
        layer = _LAYER.search(name)
        if layer:
            layers.add(layer.group(1))
        if len(shape) >= 2:
            data, scales = storage.tensor_bytes(tuple(shape))
            weights += data + scales
            if data > largest_bytes:
                largest, largest_bytes = name, data
        else:
            weights += 4 * _numel(tuple(shape))
    graph = GRAPH_BYTES_PER_LAYER * max(1, len(layers))
    if embedder:
        tables = [tuple(shape) for name, shape in shapes.items() if name.endswith("embed_tokens.weight")]
        weights += sum(sum(storage.tensor_bytes(shape)) for shape in tables)
        graph += GRAPH_BYTES_PER_LAYER
    return TaskSizePrediction(weights + graph + tokenizer_bytes + TASK_OVERHEAD_BYTES, weights, largest, largest_bytes, len(layers))


def check_task_size(prediction: TaskSizePrediction, *, max_task_bytes: int = MAX_TASK_BYTES, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> list[str]:
    """The limits `prediction` breaks, one sentence each (empty: it fits)."""
    problems = []
    if prediction.task_bytes > max_task_bytes:
        problems.append(
            f"its .task would be about {_gb(prediction.task_bytes)}, above the {_gb(max_task_bytes)} a page can hand the runtime "
            f"(@mediapipe/tasks-genai loads the whole .task into its wasm32 heap, at most {_gb(WASM32_HEAP_MAX)})"
        )
    if prediction.largest_tensor_bytes > max_tensor_bytes:
        problems.append(
            f"its largest weight, {prediction.largest_tensor} at {_gb(prediction.largest_tensor_bytes)}, is above the "
            f"{_gb(max_tensor_bytes)} WebGPU buffer binding the runtime requires of an adapter (maxStorageBufferBindingSize)"
        )
    return problems


def predict_graph_bytes(shapes: Mapping[str, tuple[int, ...]], recipe: str) -> int:
    """Bytes of a .tflite holding the weights of `shapes` under `recipe` (`none`: float32), with
    the graph structure of its decoder layers: a LiteRT.js variant's graph, predicted like a .task."""
    if recipe == "none":
        layers = {match.group(1) for name in shapes if (match := _LAYER.search(name))}
        return sum(4 * _numel(tuple(shape)) for shape in shapes.values()) + GRAPH_BYTES_PER_LAYER * max(1, len(layers))
    prediction = predict_task_size(shapes, recipe, 0)
    return prediction.task_bytes - TASK_OVERHEAD_BYTES


@dataclass(frozen=True)
class StreamedGraphPrediction:
    """A graph split for streamed loading (modelforge.web.split_weights, quantized weights only):
    `heap_bytes` stay in the flatbuffer (float weights, blockwise scales, graph structure),
    `streamed_bytes` go to the GPU through the stream, the largest of them `largest_streamed_bytes`."""

    heap_bytes: int
    streamed_bytes: int
    largest_streamed: str
    largest_streamed_bytes: int


def predict_streamed_graph(shapes: Mapping[str, tuple[int, ...]], recipe: str) -> StreamedGraphPrediction:
    """The split of the graph `predict_graph_bytes(shapes, recipe)` predicts: every 2-D weight's
    quantized data streams; its scales (a float16 tensor, or the flatbuffer's quantization
    parameters), the float 1-D weights and the graph structure stay in the flatbuffer."""
    storage = recipe_storage(recipe)
    heap = streamed = 0
    largest, largest_bytes = "", 0
    layers = set()
    for name, shape in sorted(shapes.items()):
        if match := _LAYER.search(name):
            layers.add(match.group(1))
        if len(shape) >= 2:
            data, scales = storage.tensor_bytes(tuple(shape))
            streamed += data
            heap += scales
            if data > largest_bytes:
                largest, largest_bytes = name, data
        else:
            heap += 4 * _numel(tuple(shape))
    return StreamedGraphPrediction(heap + GRAPH_BYTES_PER_LAYER * max(1, len(layers)), streamed, largest, largest_bytes)


def kv_cache_io_bytes(key_rows: Iterable[int], cache_length: int, signatures: int) -> int:
    """The KV cache buffers LiteRT.js 2.5.3 keeps in its wasm heap for a decoder graph, counted as, per
    layer (its k_proj's output rows = KV heads × head dim) and per signature (each prefill length and
    decode), the K and V cache inputs and outputs in float32 at the cache length. Fitted on decoders of
    MedGemma 4B's widths with weights streamed to WebGPU (bench/bench_web_4b.py `layers`,
    docs/web-streamed-weights.md "At MedGemma 4B"): with the reserve of MAX_LITERTJS_GRAPH_BYTES it
    tells the five measured runs that loaded from those that ran the heap out; the heap's growth from 8
    to 16 layers (27 MB a layer at cache 1024, against 40 MB counted with the flatbuffer) suggests it
    over-counts by about 40 %, so it errs on the side of refusing."""
    return sum(key_rows) * cache_length * 4 * 4 * signatures


def check_litertjs_graphs(graphs: Mapping[str, int], *, max_bytes: int | None = None, streamed: bool = False) -> list[str]:
    """The limits a LiteRT.js variant's heap residents (name → predicted bytes) break. `@litertjs/core`
    2.5.3's `loadAndCompile` copies each whole .tflite into its wasm heap (at most 2 GiB in every
    build of the package, kept for the page's life), so the variant's graphs together must leave the
    runtime room there. Read from the package (index.js `_malloc` of the model bytes; the .wasm files'
    memory maximum) and measured at 4B by bench/bench_web_4b.py. With `streamed`, the decoder's and
    embedder's entries are their flatbuffers and the scratch region their weights are mapped onto
    (`loadModelAndWeights`, docs/web-streamed-weights.md): the quantized weights themselves skip the heap."""
    max_bytes = MAX_LITERTJS_GRAPH_BYTES if max_bytes is None else max_bytes
    total = sum(graphs.values())
    if total <= max_bytes:
        return []
    listed = ", ".join(f"{name} {_gb(size)}" for name, size in sorted(graphs.items(), key=lambda item: -item[1]))
    if streamed:
        return [
            f"with its weights streamed, it would still keep about {_gb(total)} in LiteRT.js's wasm32 heap ({listed}), above the "
            f"{_gb(max_bytes)} a page can hand it (@litertjs/core 2.5.3 caps that heap at {_gb(LITERTJS_HEAP_MAX)})"
        ]
    return [
        f"its graphs and KV cache would take about {_gb(total)} together ({listed}), above the {_gb(max_bytes)} a page can hand LiteRT.js "
        f"(loadAndCompile copies each graph into its wasm32 heap, which @litertjs/core 2.5.3 caps at {_gb(LITERTJS_HEAP_MAX)})"
    ]


# onnxruntime-web 1.30 sizes a tensor in 32-bit signed arithmetic: a 2.69 GB float32 embedding table
# (MedGemma 4B's) fails session creation with "SafeIntOnOverflow() Integer overflow" (measured,
# docs/evidence/ortweb_4b). Its weights otherwise go straight from the page's buffers to WebGPU buffers.
ORTWEB_MAX_TENSOR_BYTES = 2**31 - 1


def predict_ortweb_largest(shapes: Mapping[str, tuple[int, ...]], precision: str, block_size: int = 32) -> tuple[str, int]:
    """The largest tensor the onnx target's graphs hold for the text decoder at `precision` (its
    name in the checkpoint and its bytes): every 2-D weight in MatMulNBits form (int4: half a byte
    per value plus a float32 scale per block; int8: a byte plus the scales) or float32; the token
    table is float32 unless the text is int4, where the embedding graph gathers it in int4 too
    (steps/onnx/worker.py, quantize_embedding)."""
    def quantized(shape: tuple[int, ...], bits: int) -> int:
        rows, columns = shape[0], _numel(shape[1:])
        blocks = -(-columns // block_size)
        return rows * blocks * (block_size * bits // 8) + rows * blocks * 4

    largest = ("", 0)
    for name, shape in shapes.items():
        if len(shape) != 2:
            continue
        if precision == "fp32" or (name.endswith("embed_tokens.weight") and precision != "int4"):
            size = 4 * _numel(shape)
        else:
            size = quantized(shape, 4 if precision == "int4" else 8)
        if size > largest[1]:
            largest = (name, size)
    return largest


def text_decoder_shapes(tensors: Mapping[str, object], owner: Mapping[str, str], components: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """name → shape of the tensors (TensorInfo-like, with .shape) owned by `components`."""
    wanted = set(components)
    return {name: tuple(info.shape) for name, info in tensors.items() if owner.get(name) in wanted}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def _gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB ({value / 2**30:.2f} GiB)"
