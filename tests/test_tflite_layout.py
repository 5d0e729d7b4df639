"""The deterministic layout of .tflite files whose weights live after the flatbuffer (>2 GB graphs):
the same buffers in any tail order normalize to the same bytes, and the model still runs the same."""

from __future__ import annotations

import io
import mmap
import os
from pathlib import Path

import numpy as np
import pytest

from modelforge.steps.litert import tflite_layout

def _external(source: Path, target: Path, order: str) -> None:
    """Rewrite `source` (inline buffers) the way the converter writes a >2 GB graph: every
    non-empty buffer after the flatbuffer, 16-byte aligned, in the given order of buffer indices."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(source.read_bytes(), 0))
    data = {index: bytes(bytearray(buffer.data)) for index, buffer in enumerate(model.buffers) if buffer.data is not None and len(buffer.data)}
    for index in data:
        model.buffers[index].data, model.buffers[index].offset, model.buffers[index].size = None, 1, len(data[index])

    def serialize() -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    header = serialize()
    indices = sorted(data, reverse=order == "reversed")
    if order == "shuffled":
        indices = list(np.random.default_rng(7).permutation(indices))
    cursor = len(header) + (-len(header) % 16)
    for index in indices:
        model.buffers[index].offset = cursor
        cursor += len(data[index]) + 16 - len(data[index]) % 16 + 16  # a different gap than the converter's
    header = serialize()
    with open(target, "wb") as out:
        out.write(header)
        for index in indices:
            out.write(b"\0" * (model.buffers[index].offset - out.tell()))
            out.write(data[index])
        out.write(b"\0" * 32)


def _two_layer_graph(path: Path, widths: tuple[int, int, int], seed: int) -> Path:
    """tanh(x @ first) @ second + bias, converted by litert-torch (inline buffers, as every graph under 2 GB)."""
    import torch
    import litert_torch

    class TwoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(seed)
            self.first = torch.nn.Parameter(torch.randn(widths[0], widths[1], generator=generator))
            self.second = torch.nn.Parameter(torch.randn(widths[1], widths[2], generator=generator))
            self.bias = torch.nn.Parameter(torch.randn(widths[2], generator=generator))

        def forward(self, x):
            return torch.tanh(x @ self.first) @ self.second + self.bias

    litert_torch.convert(TwoLayers().eval(), (torch.zeros(1, widths[0]),)).export(str(path))
    return path


@pytest.fixture(scope="module")
def float_graph(tmp_path_factory) -> Path:
    """A small graph: buffers of bytes to KiBs."""
    return _two_layer_graph(tmp_path_factory.mktemp("graph") / "small.tflite", (64, 96, 32), seed=0)


def _run(path: Path, width: int = 64) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    name = next(iter(runner.get_input_details()))
    x = np.linspace(-1, 1, width, dtype=np.float32).reshape(1, width)
    return next(iter(runner(**{name: x}).values()))


def test_any_tail_order_normalizes_to_the_same_bytes_and_runs_the_same(float_graph, tmp_path):
    expected = _run(float_graph)
    files = {}
    for order in ("forward", "reversed", "shuffled"):
        files[order] = tmp_path / f"{order}.tflite"
        _external(float_graph, files[order], order)
        assert len(tflite_layout.external_buffers(files[order].read_bytes())) >= 3
        np.testing.assert_array_equal(_run(files[order]), expected)
    assert files["forward"].read_bytes() != files["reversed"].read_bytes()
    for path in files.values():
        tflite_layout.normalize(path)
    assert files["forward"].read_bytes() == files["reversed"].read_bytes() == files["shuffled"].read_bytes()
    np.testing.assert_array_equal(_run(files["shuffled"]), expected)
    assert tflite_layout.normalize(files["shuffled"]) is False  # idempotent: already in index order


def test_graphs_with_inline_buffers_are_left_alone(float_graph, tmp_path):
    copy = tmp_path / "inline.tflite"
    copy.write_bytes(float_graph.read_bytes())
    assert tflite_layout.normalize(copy) is False
    assert copy.read_bytes() == float_graph.read_bytes()


def test_bytes_after_the_flatbuffer_that_belong_to_no_buffer_fail_loudly(float_graph, tmp_path):
    path = tmp_path / "odd.tflite"
    _external(float_graph, path, "reversed")
    data = bytearray(path.read_bytes())
    data[-1] = 7  # the trailing padding is no longer padding
    path.write_bytes(bytes(data))
    with pytest.raises(tflite_layout.LayoutError, match="non-zero bytes between buffers"):
        tflite_layout.normalize(path)


def test_the_rewrite_frees_what_it_has_copied_so_one_graph_is_on_disk_not_two(tmp_path, monkeypatch):
    """Issue #26: the layout rewrite of MedGemma 4B's 15.5 GB text graph held the original and the
    copy at once. Each copied chunk's whole blocks are freed in the original; the bytes on either
    side (another buffer's, in a block shared with it) are left exactly as they were."""
    monkeypatch.setattr(tflite_layout, "COPY_CHUNK", 1 << 20)  # several chunks, boundaries off the blocks
    path = tmp_path / "graph.tflite"
    content = np.random.default_rng(3).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as handle:
        handle.write(content)
        os.fsync(handle.fileno())
    offset, size = (8 << 20) + 16, (8 << 20) - 48  # a buffer that starts and ends inside blocks
    before = os.stat(path).st_blocks * 512
    copied = io.BytesIO()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data, open(path, "r+b") as original:
        puncher = tflite_layout.HolePuncher(original.fileno())
        tflite_layout.copy_freeing(data, copied, offset, size, puncher)
    assert copied.getvalue() == content[offset : offset + size]
    freed = before - os.stat(path).st_blocks * 512
    assert size - 2 * puncher.block <= freed <= size, (freed, size)
    after = path.read_bytes()
    first, last = -(-offset // puncher.block) * puncher.block, (offset + size) // puncher.block * puncher.block
    assert after[:first] == content[:first] and after[last:] == content[last:]
    assert after[first:last] == bytes(last - first)  # the freed blocks read as zeros


def test_a_large_shuffled_graph_normalizes_through_freed_blocks_to_the_same_bytes(tmp_path, monkeypatch):
    """The same normalized bytes and the same outputs when the rewrite frees blocks as it goes (buffers
    of MiBs, chunks smaller than them) as when the tail was already in index order."""
    monkeypatch.setattr(tflite_layout, "COPY_CHUNK", 1 << 20)
    graph = _two_layer_graph(tmp_path / "wide.tflite", (512, 1536, 1024), seed=1)  # buffers of 3 and 6 MiB
    files = {order: tmp_path / f"{order}.tflite" for order in ("forward", "shuffled", "reversed")}
    for order, path in files.items():
        _external(graph, path, order)
    expected = _run(graph, 512)
    for path in files.values():
        tflite_layout.normalize(path)
    assert files["forward"].read_bytes() == files["shuffled"].read_bytes() == files["reversed"].read_bytes()
    np.testing.assert_array_equal(_run(files["reversed"], 512), expected)
