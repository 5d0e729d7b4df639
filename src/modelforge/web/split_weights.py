"""Split a `.tflite` graph into a weight-free flatbuffer and a weights file, for LiteRT.js's streamed
loading (`loadModelAndWeights(modelData, weightsStream)` in @litertjs/core 2.5.3, WebGPU only).

Why: `loadAndCompile` copies the whole `.tflite` into LiteRT.js's wasm heap (2 GiB at most, see
docs/web-limits.md); `loadModelAndWeights` copies only the flatbuffer there and writes each constant
tensor's bytes from the stream straight into its WebGPU buffer. The layout it reads is TFLite's
*external buffers* (schema.fbs: `Tensor.external_buffer`, `Model.external_buffers`,
`Model.external_buffer_groups`), not the `Buffer.offset/size` "buffer offset" mode: the wasm side checks
`Buffer.offset` ranges against the flatbuffer allocation it was given ("flatbuffer model has invalid
external buffer range") and hands the JS stream callback each external tensor's `offset`/`length` in
its group. So the split is:

* `graph.tflite`: the same flatbuffer; every weight (a constant buffer of at least
  `MIN_EXTERNAL_BYTES` whose tensors all have a weight element type) moves out: its tensors get `buffer = 0` and
  `external_buffer = id` (ids 1, 2, ... in buffer order; tensors sharing a buffer share the id); the
  moved `Buffer` entries are left empty (indices stay stable); one group names the weights file.
* the weights file: the moved buffers' bytes in buffer-index order, each at an offset aligned to
  `ALIGNMENT`, zero padding between. `ExternalBuffer.offset` is relative to the start of this file.

Buffers referenced by metadata, small ones and integer (non-weight) ones stay inline. The output is a pure function of the
input bytes (same input, same bytes). `join_weights` is the inverse (for tests and checks): it puts the
bytes back inline, giving a graph the ordinary interpreter runs.

Owns this layout; imports numpy (the schema's object API packs numpy arrays as vectors in one copy) and
the flatbuffer schema shipped in ai_edge_litert (inside the functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy

from modelforge.errors import StepFailed

ALIGNMENT = 64  # bytes; WebGPU's writeBuffer wants multiples of 4, 64 keeps every tensor cache-line aligned
MIN_EXTERNAL_BYTES = 1024  # smaller constants (shapes, axes, indices, scalars) stay in the flatbuffer
# Weight element types (schema.fbs TensorType): FLOAT32, FLOAT16, UINT8, INT8, INT4, BFLOAT16, INT2, UINT4.
# Integer index and shape constants (INT32, INT64...) stay inline: the runtime reads them on the CPU
# while it prepares the graph.
WEIGHT_TYPES = frozenset({0, 1, 3, 9, 17, 18, 19, 20})
# Quantized weight types (INT8, INT4, INT2, UINT4): the only ones LiteRT.js 2.5.3's WebGPU delegate takes
# from the stream (docs/web-streamed-weights.md); float weights it reads from the CPU-side copy.
QUANTIZED_TYPES = frozenset({9, 17, 19, 20})
TFLITE_IDENTIFIER = b"TFL3"


@dataclass(frozen=True)
class SplitResult:
    """What `split_weights` wrote."""

    graph_bytes: int  # size of the weight-free flatbuffer
    weights_bytes: int  # size of the weights file
    external_tensors: int  # tensors that now point at an external buffer
    external_buffers: int  # distinct external buffers (moved `Buffer` entries)
    largest_external: int  # bytes of the largest one (the page maps each onto one scratch region that size)


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _buffer_view(buffer, raw: bytes) -> memoryview:
    """A buffer's bytes, inline (`data`) or appended after the flatbuffer (`offset`/`size`), without a copy."""
    if buffer.data is not None and len(buffer.data):
        return memoryview(numpy.ascontiguousarray(buffer.data, dtype=numpy.uint8)).cast("B")
    if buffer.offset > 1 and buffer.size:
        return memoryview(raw)[buffer.offset : buffer.offset + buffer.size]
    return memoryview(b"")


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _load(path: Path):
    raw = path.read_bytes()
    if raw[4:8] != TFLITE_IDENTIFIER:
        raise StepFailed(f"{path} is not a TFLite flatbuffer (no {TFLITE_IDENTIFIER!r} identifier); pass a .tflite file")
    schema = _schema()
    return raw, schema.ModelT.InitFromObj(schema.Model.GetRootAs(raw, 0))


def split_weights(
    source: Path, graph_out: Path, weights_out: Path, element_types: frozenset[int] = WEIGHT_TYPES
) -> SplitResult:
    """Write `graph_out` (flatbuffer, weights external) and `weights_out` (their bytes) from `source`;
    only buffers whose tensors all have one of `element_types` move out."""
    schema = _schema()
    raw, model = _load(source)
    if model.externalBuffers:
        raise StepFailed(f"{source} already has external buffers; split the graph with its weights inline")
    metadata_buffers = {m.buffer for m in (model.metadata or [])}
    types: dict[int, set[int]] = {}
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            if tensor.buffer:
                types.setdefault(tensor.buffer, set()).add(tensor.type)
    tensor_buffers = sorted(index for index, kinds in types.items() if kinds <= element_types and index not in metadata_buffers)
    ids: dict[int, int] = {}
    externals = []
    position = largest = 0
    temporary = weights_out.with_name(weights_out.name + ".partial")
    # Written as the buffers move out, never joined: at MedGemma 4B the decoder's weights are 2.2 GB.
    with open(temporary, "wb") as handle:
        for index in tensor_buffers:
            data = _buffer_view(model.buffers[index], raw)
            if len(data) < MIN_EXTERNAL_BYTES:
                continue
            padding = -position % ALIGNMENT
            handle.write(b"\0" * padding)
            position += padding
            ids[index] = len(ids) + 1
            external = schema.ExternalBufferT()
            external.id, external.group, external.offset, external.length = ids[index], 0, position, len(data)
            externals.append(external)
            handle.write(data)
            position += len(data)
            largest = max(largest, len(data))
            model.buffers[index] = schema.BufferT()
    moved = 0
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            if tensor.buffer in ids:
                tensor.externalBuffer = ids[tensor.buffer]
                tensor.buffer = 0
                moved += 1
    # Offset-mode buffers that stayed come back inline: the graph is one flatbuffer.
    for index, buffer in enumerate(model.buffers or []):
        if buffer.offset > 1:
            model.buffers[index] = schema.BufferT()
            model.buffers[index].data = numpy.frombuffer(_buffer_view(buffer, raw), dtype=numpy.uint8)
    group = schema.ExternalBufferGroupT()
    group.name = weights_out.name
    model.externalBufferGroups = [group] if externals else None
    model.externalBuffers = externals or None
    graph = _pack(model)
    _write(graph_out, graph)
    temporary.replace(weights_out)
    return SplitResult(len(graph), position, moved, len(externals), largest)


def external_extent(graph: Path) -> dict[str, int]:
    """`size`: the bytes a split graph's weights file must have; `largest`: its largest external buffer
    (the page maps every buffer onto one scratch region of that size, docs/web-streamed-weights.md)."""
    _, model = _load(graph)
    externals = model.externalBuffers or []
    return {
        "size": max((e.offset + e.length for e in externals), default=0),
        "largest": max((e.length for e in externals), default=0),
    }


def join_weights(graph: Path, weights: Path, out: Path) -> None:
    """The inverse of `split_weights`: a `.tflite` with every external buffer's bytes inline."""
    schema = _schema()
    _, model = _load(graph)
    data = weights.read_bytes()
    buffer_of: dict[int, int] = {}
    for external in model.externalBuffers or []:
        if external.offset + external.length > len(data):
            raise StepFailed(
                f"{weights} is {len(data)} bytes but external buffer {external.id} of {graph} needs bytes "
                f"{external.offset}..{external.offset + external.length}; pass the weights file written with it"
            )
        buffer = schema.BufferT()
        buffer.data = numpy.frombuffer(data, dtype=numpy.uint8, count=external.length, offset=external.offset)
        model.buffers.append(buffer)
        buffer_of[external.id] = len(model.buffers) - 1
    for subgraph in model.subgraphs or []:
        for tensor in subgraph.tensors or []:
            if tensor.externalBuffer:
                tensor.buffer = buffer_of[tensor.externalBuffer]
                tensor.externalBuffer = 0
    model.externalBuffers = None
    model.externalBufferGroups = None
    _write(out, _pack(model))


def _write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(path)
