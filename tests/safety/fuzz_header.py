"""Property-based fuzzing of the safetensors header validator (hypothesis), beside the manifest
fuzzer: a valid tiny file is damaged at random (entries' fields replaced by any JSON value,
offsets nudged, swapped or shared, keys dropped or added, names repeated, the length field and
the data area changed, bytes of the header text flipped). The property: read_header either
accepts the file, and then the reference parser (the `safetensors` library) loads it with the same
tensors, or refuses it with a SourceError; never another exception.

    python tests/safety/fuzz_header.py --minutes 5

prints how many files it tried and every distinct failure (shrunk). test_fuzz_header.py runs the
same property for a few hundred examples."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import modelforge  # noqa: F401  (the one on PYTHONPATH, when there is one)
except ImportError:  # run as a script from a checkout
    sys.path.insert(0, str(HERE.parents[1] / "src"))

from checkpoint_support import shard_bytes, tensor_layout  # noqa: E402
from modelforge.errors import SourceError  # noqa: E402
from modelforge.safetensors_io import read_header  # noqa: E402
from modelforge.source_checks import DTYPE_BITS  # noqa: E402

DTYPES = sorted(DTYPE_BITS)

# Values a mutation puts anywhere: every JSON type and the numbers that sit on the rules' edges.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=70), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**64 + 2),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([0.0, 1.0, 32.0, -0.0, 1e300]), st.text(max_size=8),
    st.sampled_from(DTYPES + ["F99", "f32", "", "BF16 ", "F8_E4M3FN", "C128"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)


@st.composite
def valid_files(draw):
    """name → (dtype, shape, bytes) of one to four small tensors, sub-byte dtypes included."""
    tensors = {}
    for index in range(draw(st.integers(min_value=1, max_value=4))):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(st.lists(st.integers(min_value=0, max_value=4), max_size=3))
        bits = math.prod(shape) * DTYPE_BITS[dtype]
        if bits % 8:
            shape = shape + [2] if DTYPE_BITS[dtype] == 4 else shape + [4]
            bits = math.prod(shape) * DTYPE_BITS[dtype]
        tensors[draw(st.sampled_from(["a", "b", "c", "d", "w", "ü", ""])) + str(index)] = (dtype, shape, draw(st.binary(min_size=bits // 8, max_size=bits // 8)))
    header, data = tensor_layout(tensors)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2))
    return header, data


def _mutate_header(draw, header: dict, data: bytes) -> tuple[object, bytes, int | None]:
    names = [name for name in header if name != "__metadata__"]
    length = None
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from([
            "field", "nudge", "share", "swap", "drop_key", "add_key", "entry", "metadata", "top", "length", "data", "dtype",
        ]))
        name = draw(st.sampled_from(names)) if names else None
        entry = header.get(name) if name is not None else None
        if action == "field" and isinstance(entry, dict):
            entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))] = draw(values)
        elif action == "nudge" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list) and entry["data_offsets"]:
            offsets = list(entry["data_offsets"])
            position = draw(st.integers(min_value=0, max_value=len(offsets) - 1))
            if isinstance(offsets[position], int):
                offsets[position] += draw(st.integers(min_value=-9, max_value=9))
            entry["data_offsets"] = offsets
        elif action == "share" and len(names) > 1 and isinstance(entry, dict):
            other = header[draw(st.sampled_from([n for n in names if n != name]))]
            if isinstance(other, dict) and "data_offsets" in other:
                entry["data_offsets"] = other["data_offsets"]
        elif action == "swap" and len(names) > 1:
            other = draw(st.sampled_from([n for n in names if n != name]))
            header[name], header[other] = header[other], header[name]
        elif action == "drop_key" and isinstance(entry, dict) and entry:
            del entry[draw(st.sampled_from(sorted(entry)))]
        elif action == "add_key" and isinstance(entry, dict):
            entry[draw(st.text(max_size=6))] = draw(values)
        elif action == "entry" and name is not None:
            header[name] = draw(values)
        elif action == "metadata":
            header["__metadata__"] = draw(values)
        elif action == "top":
            return draw(values), data, length
        elif action == "length":
            length = draw(st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=400)))
        elif action == "data":
            cut = draw(st.integers(min_value=-5, max_value=5))
            data = data[:cut] if cut < 0 else data + bytes(cut)
        elif action == "dtype" and isinstance(entry, dict):
            entry["dtype"] = draw(st.sampled_from(DTYPES))
    return header, data, length


@st.composite
def damaged_files(draw) -> bytes:
    header, data = draw(valid_files())
    header, data, length = _mutate_header(draw, header, data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=draw(st.booleans()), allow_nan=True)
    textual = draw(st.sampled_from(["none", "none", "duplicate", "flip", "insert", "delete", "pad"]))
    if textual == "duplicate" and isinstance(header, dict) and len(header) > 1:
        keys = [json.dumps(key, ensure_ascii=False) for key in header]
        first, second = draw(st.permutations(keys))[:2]
        text = text.replace(second, first, 1)
    raw = text.encode()
    if textual in ("flip", "insert", "delete") and raw:
        position = draw(st.integers(min_value=0, max_value=len(raw) - 1))
        byte = draw(st.integers(min_value=0, max_value=255))
        raw = {"flip": raw[:position] + bytes([byte]) + raw[position + 1 :], "insert": raw[:position] + bytes([byte]) + raw[position:],
               "delete": raw[:position] + raw[position + 1 :]}[textual]
    if textual == "pad":
        raw = draw(st.sampled_from([b" ", b"\n", b"\t", b"\0"])) * draw(st.integers(min_value=1, max_value=3)) + raw
    return shard_bytes(raw, data, length=length)


def _loaded_by_reference(content: bytes) -> dict[str, tuple[str, list[int]]]:
    import safetensors

    return {name: (tensor["dtype"], list(tensor["shape"])) for name, tensor in safetensors.deserialize(content)}


class Checker:
    """Write the file, validate it; on acceptance the reference parser must load the same tensors."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / "fuzz.safetensors"
        self.accepted = self.refused = 0

    def __call__(self, content: bytes) -> None:
        self.path.write_bytes(content)
        try:
            tensors, _ = read_header(self.path, "fuzz.safetensors")
        except SourceError as error:
            message = str(error)
            assert message.startswith("fuzz.safetensors: ") and "\n" not in message, message
            self.refused += 1
            return
        self.accepted += 1
        reference = _loaded_by_reference(content)  # raises if the reference parser refuses what we accepted
        assert sorted(reference) == sorted(tensors)
        for name, info in tensors.items():
            assert list(info.shape) == reference[name][1], name
            assert info.dtype == reference[name][0], name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=1.0)
    arguments = parser.parse_args()
    failures: dict[str, str] = {}
    deadline = time.monotonic() + arguments.minutes * 60
    with tempfile.TemporaryDirectory() as scratch:
        checker = Checker(Path(scratch))
        while time.monotonic() < deadline:
            @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(damaged_files())
            def run(content: bytes) -> None:
                checker(content)

            try:
                run()
            except Exception as error:  # noqa: BLE001 - every failure is reported, shrunk
                failures.setdefault(f"{type(error).__name__}: {str(error)[:200]}", traceback.format_exc(limit=3))
        print(f"tried: {checker.accepted + checker.refused} files, accepted {checker.accepted}, refused {checker.refused}")
    for summary, trace in failures.items():
        print(f"FAILURE {summary}\n{trace}")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
