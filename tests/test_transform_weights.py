"""The transform_weights step writes its shards two at a time: the bytes and hashes are those of one
shard at a time, and a refusal names the same tensor whichever shard's thread finds its own first."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy
import pytest

from modelforge.errors import SourceError
from modelforge.store import FileRecord
from modelforge.safetensors_io import read_header, write_tensors
from modelforge.steps.base import InputFile, StepContext
from modelforge.steps.checkpoint import transform_weights

SOURCE = "model.safetensors"
NAMES = [f"layers.{index}.weight" for index in range(6)]


def _source(directory: Path, poisoned: tuple[str, ...] = ()) -> Path:
    rng = numpy.random.default_rng(0)
    tensors = []
    for index, name in enumerate(NAMES):
        values = rng.standard_normal((64, 33 + index)).astype("<f4")  # odd widths: no tensor is like another
        if name in poisoned:
            values[3, 1] = numpy.nan
        tensors.append((name, "F32", values.shape, values.tobytes()))
    path = directory / SOURCE
    write_tensors(path, tensors)
    return path


def _context(tmp_path: Path, source: Path, shards: list[list[str]]) -> StepContext:
    params = {
        "shards": [
            {"file": f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors", "tensors": [[f"model.{name}", SOURCE, name] for name in names]}
            for index, names in enumerate(shards)
        ],
        "metadata": {"format": "pt"},
        "index": True,
        "non_finite": "refuse",
    }
    record = FileRecord(hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_size)
    (tmp_path / "out").mkdir()
    return StepContext(params, {"source": {SOURCE: InputFile(source, record)}}, tmp_path / "out", tmp_path / "scratch")


def _tensors(path: Path) -> dict[str, bytes]:
    raw = path.read_bytes()
    return {name: raw[info.begin : info.end] for name, info in read_header(path)[0].items()}


def test_two_shards_at_once_hold_their_own_tensors_and_report_their_own_hashes(tmp_path):
    source = _source(tmp_path)
    shards = [NAMES[:4], NAMES[4:]]
    context = _context(tmp_path, source, shards)
    transform_weights.run(context)
    expected = _tensors(source)
    for shard, names in zip(context.params["shards"], shards):
        path = context.out_dir / shard["file"]
        assert context.known_hashes[shard["file"]] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert _tensors(path) == {f"model.{name}": expected[name] for name in names}


@pytest.mark.parametrize("repeat", range(3))
def test_with_a_bad_tensor_in_each_shard_the_first_shard_is_named(tmp_path, repeat):
    # The second shard is small, so its thread finds its bad tensor first; the message still names
    # the first shard's, as when the shards were written one after another.
    source = _source(tmp_path, poisoned=(NAMES[3], NAMES[5]))
    context = _context(tmp_path, source, [NAMES[:4], NAMES[5:]])
    with pytest.raises(SourceError, match=re.escape(f"tensor '{NAMES[3]}'")):
        transform_weights.run(context)
