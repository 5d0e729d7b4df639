"""split_weights: a .tflite becomes a weight-free flatbuffer (TFLite external buffers) plus a weights
file, deterministically; LiteRT's own external-weight loader runs the pair as the original, and
join_weights puts the bytes back inline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelforge.errors import StepFailed
from modelforge.web.split_weights import (
    ALIGNMENT,
    MIN_EXTERNAL_BYTES,
    QUANTIZED_TYPES,
    WEIGHT_TYPES,
    external_extent,
    join_weights,
    split_weights,
)

INPUT = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    """A small graph converted by litert-torch (inline buffers)."""
    import litert_torch
    import torch

    class Small(torch.nn.Module):
        def __init__(self):
            super().__init__()
            generator = torch.Generator().manual_seed(0)
            self.first = torch.nn.Parameter(torch.randn(64, 96, generator=generator))
            self.second = torch.nn.Parameter(torch.randn(96, 64, generator=generator))
            self.bias = torch.nn.Parameter(torch.randn(64, generator=generator))

        def forward(self, x):
            return torch.tanh(x @ self.first) @ self.second + self.bias

    path = tmp_path_factory.mktemp("graph") / "small.tflite"
    litert_torch.convert(Small().eval(), (torch.zeros(1, 64),)).export(str(path))
    return path


def _interpret(path: Path) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return next(iter(runner(**{next(iter(runner.get_input_details())): INPUT}).values()))


def _compiled_model(path: Path) -> np.ndarray:
    """LiteRT's CompiledModel (CPU): it reads external buffers from the group's file next to the graph."""
    from ai_edge_litert.compiled_model import CompiledModel

    model = CompiledModel.from_file(str(path))
    inputs, outputs = model.create_input_buffers(0), model.create_output_buffers(0)
    inputs[0].write(INPUT)
    model.run_by_index(0, inputs, outputs)
    signature = next(iter(model.get_signature_list()))
    (details,) = model.get_output_tensor_details(signature).values()
    return outputs[0].read(int(np.prod(details["shape"])), np.float32).reshape(details["shape"])


def _schema_model(path: Path):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAs(path.read_bytes(), 0))


def test_the_pair_runs_as_the_original_and_joins_back(graph, tmp_path):
    expected = _interpret(graph)
    result = split_weights(graph, tmp_path / "small.graph.tflite", tmp_path / "small.weights")
    assert result.external_buffers == 2 and result.graph_bytes < result.weights_bytes  # the bias (256 bytes) stays
    assert result.largest_external == external_extent(tmp_path / "small.graph.tflite")["largest"] > 0
    assert result.weights_bytes == external_extent(tmp_path / "small.graph.tflite")["size"] == (tmp_path / "small.weights").stat().st_size
    np.testing.assert_array_equal(_compiled_model(tmp_path / "small.graph.tflite"), expected)
    join_weights(tmp_path / "small.graph.tflite", tmp_path / "small.weights", tmp_path / "joined.tflite")
    np.testing.assert_array_equal(_interpret(tmp_path / "joined.tflite"), expected)


def test_the_layout_loadModelAndWeights_reads(graph, tmp_path):
    """Every weight tensor points at an external buffer of the one group (the weights file), at an
    aligned offset; the flatbuffer keeps only metadata and small or integer constants; each buffer is
    stored once."""
    split_weights(graph, tmp_path / "g.tflite", tmp_path / "w.bin")
    model = _schema_model(tmp_path / "g.tflite")
    weights = (tmp_path / "w.bin").read_bytes()
    original = _schema_model(graph)
    assert [group.name for group in model.externalBufferGroups] == [b"w.bin"]
    by_id = {external.id: external for external in model.externalBuffers}
    tensors = [t for g in model.subgraphs for t in g.tensors]
    originals = [t for g in original.subgraphs for t in g.tensors]
    def weight(tensor) -> bool:
        data = original.buffers[tensor.buffer].data if tensor.buffer else None
        return data is not None and len(data) >= MIN_EXTERNAL_BYTES and tensor.type in WEIGHT_TYPES

    constant = [(t, o) for t, o in zip(tensors, originals) if weight(o)]
    assert constant and all(t.buffer == 0 and t.externalBuffer in by_id for t, _ in constant)
    for tensor, source in constant:
        external = by_id[tensor.externalBuffer]
        assert external.group == 0 and external.offset % ALIGNMENT == 0
        stored = weights[external.offset : external.offset + external.length]
        assert stored == bytes(bytearray(original.buffers[source.buffer].data))
    assert len({t.externalBuffer for t, _ in constant}) == len({o.buffer for _, o in constant})  # one id a buffer
    assert not any(weight(t) for t in tensors)
    assert external_extent(tmp_path / "g.tflite") == {
        "size": len(weights), "largest": max(e.length for e in model.externalBuffers)}
    kept = [t for t, o in zip(tensors, originals) if o.buffer and not weight(o)]
    assert all(t.externalBuffer == 0 and t.buffer for t in kept)  # small and integer constants stay inline


def test_same_input_same_bytes_and_offset_mode_input(graph, tmp_path):
    """Deterministic; a graph whose buffers sit after the flatbuffer (`Buffer.offset`, as the converter
    writes graphs over 2 GB) splits into the same pair as the inline one."""
    import flatbuffers

    first, second, offset_mode = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder in (first, second, offset_mode):
        folder.mkdir()
    split_weights(graph, first / "g.tflite", first / "w.bin")
    split_weights(graph, second / "g.tflite", second / "w.bin")

    model = _schema_model(graph)
    moved = {i: bytes(bytearray(b.data)) for i, b in enumerate(model.buffers) if b.data is not None and len(b.data)}

    def pack() -> bytes:
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    for index in moved:
        model.buffers[index].data, model.buffers[index].offset, model.buffers[index].size = None, 1, len(moved[index])
    cursor = len(pack()) + 64
    for index, data in moved.items():
        model.buffers[index].offset, cursor = cursor, cursor + len(data) + 48
    header = pack()
    with open(offset_mode / "source.tflite", "wb") as out:
        out.write(header)
        for index, data in moved.items():
            out.write(b"\0" * (model.buffers[index].offset - out.tell()) + data)
    np.testing.assert_array_equal(_interpret(offset_mode / "source.tflite"), _interpret(graph))
    split_weights(offset_mode / "source.tflite", offset_mode / "g.tflite", offset_mode / "w.bin")
    for name in ("g.tflite", "w.bin"):
        assert (first / name).read_bytes() == (second / name).read_bytes() == (offset_mode / name).read_bytes()


def test_quantized_only_leaves_float_weights_inline(graph, tmp_path):
    result = split_weights(graph, tmp_path / "g.tflite", tmp_path / "w.bin", element_types=QUANTIZED_TYPES)
    assert (result.external_buffers, result.weights_bytes) == (0, 0)
    assert not _schema_model(tmp_path / "g.tflite").externalBuffers
    np.testing.assert_array_equal(_interpret(tmp_path / "g.tflite"), _interpret(graph))


def test_not_a_tflite_file(tmp_path):
    (tmp_path / "x.tflite").write_bytes(b"\0" * 64)
    with pytest.raises(StepFailed, match=r"x\.tflite is not a TFLite flatbuffer"):
        split_weights(tmp_path / "x.tflite", tmp_path / "g.tflite", tmp_path / "w.bin")


def test_weights_file_too_short(graph, tmp_path):
    split_weights(graph, tmp_path / "g.tflite", tmp_path / "w.bin")
    (tmp_path / "short.bin").write_bytes((tmp_path / "w.bin").read_bytes()[:100])
    with pytest.raises(StepFailed, match=r"short\.bin is 100 bytes but external buffer \d+ of .*g\.tflite needs"):
        join_weights(tmp_path / "g.tflite", tmp_path / "short.bin", tmp_path / "joined.tflite")


def test_a_stream_weights_variant_without_quantized_weights_is_refused(graph, tmp_path):
    """A web bundle streams only quantized weights (LiteRT.js reads float ones from its heap): a
    stream_weights variant whose decoder has none is a mistake the bundle names."""
    from modelforge.web.layout import BundleError, LitertjsVariant, write_bundle
    from modelforge.web.vendor import litertjs_files, litertjs_versions, web_dir

    tiny = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-medgemma"
    variant = LitertjsVariant(
        name="float-streamed", label="Float", max_tokens=8, graphs={"model": graph, "embedder": graph}, tokenizer=tiny / "tokenizer.json",
        tokenizer_config=tiny / "tokenizer_config.json", chat_template=tiny / "chat_template.jinja", generation={}, stream_weights=True,
    )
    with pytest.raises(BundleError, match=r"variant float-streamed: its model graph \(.*\) has no quantized weights to stream; stream_weights needs"):
        write_bundle(tmp_path / "web", variants=[variant], title="T", litertjs=litertjs_files(web_dir()), litertjs_versions=litertjs_versions(web_dir()))
    assert not (tmp_path / "web").exists()
