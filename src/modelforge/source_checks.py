"""What a source checkpoint must be before anything is planned from it, checked as strictly as the
reference safetensors parser (the Rust `safetensors` crate, 0.8) and a strict JSON parser: headers,
the shard index, config files, regular files inside the source directory, and finite weights.
Every refusal is a one-line SourceError naming the file, the tensor or key, and what is wrong.
Imports only `errors`; numpy only inside the weight scan (never torch)."""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from modelforge.errors import SourceError

# The reference parser's limit on the header (safetensors' MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000
# Deeper JSON than this is no configuration file a model library writes; it is an attack on parsers.
MAX_JSON_DEPTH = 64
_MAX_UINT64 = (1 << 64) - 1
# The name under which a JSON file's content is remembered as strictly valid (change it with the rules).
STRICT_JSON_RULE = f"strict-json-2-depth-{MAX_JSON_DEPTH}-no-auto-map"
# transformers reads this top-level key of config.json, tokenizer_config.json, processor and
# preprocessor configs as "import this class from a .py file of the checkpoint" (trust_remote_code):
# modelforge never runs a checkpoint's code, so a source that asks for it is refused by name.
REMOTE_CODE_KEYS = ("auto_map",)

# Bits per element of every dtype the pinned safetensors (0.8.0) accepts: the spec's dtypes plus
# the sub-byte and fnuz float formats it added.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64,
    "F64": 64, "I64": 64, "U64": 64,
}
_ENTRY_KEYS = {"dtype", "shape", "data_offsets"}
NON_FINITE_POLICIES = ("refuse", "allow")


@dataclass(frozen=True)
class HeaderEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the start of the data area, as in the header
    end: int


# ------------------------------------------------------------------------------------ strict JSON


class _DuplicatedKeys(dict):
    """A JSON object that repeated keys (a plain dict keeps the last value silently)."""

    __slots__ = ("duplicates",)


class _NonFinite:
    """A NaN, Infinity or overflowing number literal, kept so the walk can name its key."""

    __slots__ = ("literal",)

    def __init__(self, literal: str):
        self.literal = literal


def _object(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicated = _DuplicatedKeys(result)
        duplicated.duplicates = [key for key, _ in pairs if key in seen or seen.add(key)]
        return duplicated
    return result


def _number(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _path_text(path: tuple) -> str:
    if not path:
        return "the top level"
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return f"key {text!r}"


def strict_json(data: bytes, file_name: str, what: str = "JSON") -> Any:
    """Parse JSON the way strict parsers do: UTF-8, no NaN/Infinity (nor a number too large for a
    double), no repeated key in any object, nesting at most MAX_JSON_DEPTH deep."""
    suspicious = []  # the hooks note a problem; the slow walk then finds its key path

    def constant(literal: str) -> _NonFinite:
        suspicious.append(literal)
        return _NonFinite(literal)

    def number(text: str) -> Any:
        value = _number(text)
        if isinstance(value, _NonFinite):
            suspicious.append(text)
        return value

    def pairs(items: list[tuple[str, Any]]) -> dict:
        value = _object(items)
        if type(value) is _DuplicatedKeys:
            suspicious.append(value)
        return value

    try:
        value = json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant, parse_float=number)
    except UnicodeDecodeError:
        raise SourceError(f"{file_name}: the {what} is not UTF-8 text; the file is damaged, re-fetch the source") from None
    except RecursionError:
        raise SourceError(f"{file_name}: the {what} nests deeper than {MAX_JSON_DEPTH} levels; the file is damaged or hostile, re-fetch the source") from None
    except ValueError as error:  # JSONDecodeError, and integers beyond Python's digit limit
        raise SourceError(f"{file_name}: the {what} is not valid JSON ({_first_line(error)}); the file is damaged, re-fetch the source") from None
    if suspicious or _depth_exceeds(value):
        _walk(value, file_name, what)
    return value


def _depth_exceeds(value: Any) -> bool:
    """Whether containers nest deeper than MAX_JSON_DEPTH; no paths kept (a tokenizer.json has a
    million small containers, and this runs on every plan)."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= MAX_JSON_DEPTH:
            return True
        for child in node.values() if type(node) is dict else node if type(node) is list else ():
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1))
    return False


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _walk(value: Any, file_name: str, what: str) -> None:
    """Depth first, in document order, so the first problem named is the first in the file."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, _NonFinite):
            raise SourceError(
                f"{file_name}: {_path_text(path)} of the {what} is {node.literal}, which strict JSON parsers reject; "
                "fix the value in the source (null, or a finite number)"
            )
        if isinstance(node, dict):
            if isinstance(node, _DuplicatedKeys):
                raise SourceError(
                    f"{file_name}: {_path_text(path)} of the {what} repeats the key {node.duplicates[0]!r} "
                    "(parsers disagree on which value wins); remove the duplicate in the source"
                )
            children = [(child, path + (key,)) for key, child in node.items()]
        elif isinstance(node, list):
            children = [(child, path + (index,)) for index, child in enumerate(node)]
        else:
            continue
        if depth >= MAX_JSON_DEPTH:
            raise SourceError(
                f"{file_name}: {_path_text(path)} of the {what} nests deeper than {MAX_JSON_DEPTH} levels; "
                "the file is damaged or hostile, re-fetch the source"
            )
        for child, child_path in reversed(children):
            if isinstance(child, (dict, list, _NonFinite)):
                stack.append((child, child_path, depth + 1))


def read_json_file(path: Path, file_name: str, *, must_be_object: bool = False) -> Any:
    """A source JSON file, strictly parsed (see strict_json) and asking for no remote code (see
    check_no_remote_code); opened without following it into a FIFO."""
    value = strict_json(read_regular(path, file_name), file_name, "file")
    if must_be_object and not isinstance(value, dict):
        raise SourceError(f"{file_name}: holds a JSON {type(value).__name__}, not an object; re-fetch the source")
    check_no_remote_code(value, file_name)
    return value


def check_no_remote_code(value: Any, file_name: str) -> None:
    """A config that points transformers at Python code shipped in the checkpoint is refused."""
    if not isinstance(value, dict):
        return
    for key in REMOTE_CODE_KEYS:
        if key in value:
            raise SourceError(
                f"{file_name}: has the key {key!r}, which makes transformers import Python code shipped in the checkpoint "
                "(trust_remote_code); modelforge never runs a checkpoint's code: use a checkpoint whose architecture transformers ships"
            )


# ------------------------------------------------------------------------------------- files


def open_regular(path: Path, file_name: str) -> int:
    """A descriptor of path, refusing anything but a regular file. O_NONBLOCK: opening a FIFO
    returns at once instead of waiting for a writer that never comes."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise SourceError(f"{file_name}: cannot open ({error.strerror}); check the source directory") from None
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise SourceError(f"{file_name}: is {_kind(mode)}, not a regular file; put the checkpoint's file there")
    # Back to blocking reads (a regular file never blocks; this only tidies the flag).
    os.set_blocking(descriptor, True)
    return descriptor


def read_regular(path: Path, file_name: str) -> bytes:
    descriptor = open_regular(path, file_name)
    try:
        with open(descriptor, "rb", closefd=True) as handle:
            return handle.read()
    except OSError as error:
        raise SourceError(f"{file_name}: cannot read ({error.strerror}); check the source directory") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a file"


def check_source_file(path: Path, file_name: str, allowed: Sequence[Path]) -> None:
    """A file the build takes must be a regular file, and whatever symlinks lead to it must stay
    inside `allowed` (the source directory; for a Hub snapshot, also its repository's blob store)."""
    try:
        mode = os.stat(path).st_mode  # follows links: what the build would read
    except OSError as error:
        raise SourceError(f"{file_name}: cannot read ({error.strerror}); a dangling symlink? fix the source directory") from None
    real = Path(os.path.realpath(path))
    if not any(real == root or root in real.parents for root in allowed):
        raise SourceError(
            f"{file_name}: is a symlink to {real}, outside the source directory; copy the file into the source "
            "instead (a build ships only what the source holds)"
        )
    if not stat.S_ISREG(mode):
        raise SourceError(f"{file_name}: is {_kind(mode)}, not a regular file; put the checkpoint's file there")


# ------------------------------------------------------------------------------- safetensors


def check_header(raw: bytes, data_size: int | None, file_name: str) -> tuple[dict[str, HeaderEntry], dict[str, str]]:
    """The tensors and metadata of a safetensors header, or a SourceError: the rules of the
    reference parser (and stricter: no repeated names, no keys beyond dtype/shape/data_offsets).
    data_size is the file's length after the header (None when only the header is known)."""
    return check_header_object(strict_json(raw, file_name, "safetensors header"), data_size, file_name)


def check_header_object(header: Any, data_size: int | None, file_name: str) -> tuple[dict[str, HeaderEntry], dict[str, str]]:
    if not isinstance(header, dict):
        raise SourceError(f"{file_name}: the safetensors header is a JSON {type(header).__name__}, not an object; the file is damaged")
    metadata = header.get("__metadata__")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise SourceError(f"{file_name}: the header's __metadata__ is not a map of strings to strings; the file is damaged")
    entries: dict[str, HeaderEntry] = {}
    for name, entry in header.items():
        if name != "__metadata__":
            entries[name] = _entry(name, entry, file_name)
    # The reference parser sorts by offsets and requires each tensor to start where the last ended.
    end = 0
    previous: str | None = None
    for name, entry in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end, item[0])):
        if entry.begin < end:
            raise SourceError(
                f"{file_name}: tensor {name!r} (bytes {entry.begin}-{entry.end}) overlaps tensor {previous!r} (ending at {end}); "
                "the file is damaged: one tensor would read another's bytes"
            )
        if entry.begin > end:
            raise SourceError(f"{file_name}: tensor {name!r} starts at byte {entry.begin}, leaving a gap after byte {end}; the file is damaged")
        end, previous = entry.end, name
    if data_size is not None and end != data_size:
        problem = "runs past the end of the file; the file is truncated, re-fetch it" if end > data_size else \
            f"leaves {data_size - end} bytes after the last tensor that no tensor covers; the file is damaged"
        raise SourceError(f"{file_name}: the data area of {data_size} bytes does not match the header's {end}: it {problem}")
    return entries, dict(metadata)


def _is_uint(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_UINT64


def _entry(name: str, entry: Any, file_name: str) -> HeaderEntry:
    where = f"{file_name}: tensor {name!r}"
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise SourceError(f"{where} has header entry {keys}, not exactly dtype, shape and data_offsets; the file is damaged")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise SourceError(f"{where} has dtype {dtype!r}, which safetensors does not define ({', '.join(DTYPE_BITS)}); the file is damaged")
    if not isinstance(shape, list) or not all(_is_uint(dimension) for dimension in shape):
        raise SourceError(f"{where} has shape {shape!r}; a shape is a list of non-negative integers, the file is damaged")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(offset) for offset in offsets) or offsets[1] < offsets[0]:
        raise SourceError(f"{where} has data_offsets {offsets!r}; they must be two non-negative integers [begin, end], the file is damaged")
    count = math.prod(shape)
    bits = count * DTYPE_BITS[dtype]
    if bits % 8:
        raise SourceError(f"{where}: {count} elements of {dtype} do not fill whole bytes; the file is damaged")
    if bits // 8 != offsets[1] - offsets[0]:
        raise SourceError(
            f"{where} has {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype} ({bits // 8} bytes); the file is damaged"
        )
    return HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1])


def check_shards(shards: Mapping[str, Iterable[str]]) -> None:
    """No tensor name in two shards (loading would keep one at random)."""
    owner: dict[str, str] = {}
    for shard in sorted(shards):
        for name in shards[shard]:
            if name in owner:
                raise SourceError(f"{shard}: tensor {name!r} is also in {owner[name]}; a tensor must be in one shard only, the checkpoint is damaged")
            owner[name] = shard


def check_index(index: Any, shards: Mapping[str, Iterable[str]], file_name: str) -> None:
    """model.safetensors.index.json must describe exactly the shards: each tensor of its weight_map
    in the shard it names, every tensor of every shard in the weight_map, no shard it names missing."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(shard, str) for shard in weight_map.values()):
        raise SourceError(f"{file_name}: has no weight_map of tensor names to shard files; re-fetch the source")
    contents = {shard: set(names) for shard, names in shards.items()}
    for name, shard in weight_map.items():
        if shard not in contents:
            raise SourceError(
                f"{file_name}: tensor {name!r} is mapped to {shard}, which is not among the source's shards; "
                "take that shard with source.files, or re-fetch the source"
            )
        if name not in contents[shard]:
            raise SourceError(f"{file_name}: tensor {name!r} is mapped to {shard}, which does not hold it; the index and the shards disagree, re-fetch the source")
    for shard in sorted(contents):
        for name in sorted(contents[shard]):
            if weight_map.get(name) != shard:
                raise SourceError(
                    f"{file_name}: tensor {name!r} of {shard} is {'missing from the weight_map' if name not in weight_map else 'mapped to ' + weight_map[name]}; "
                    "the index and the shards disagree, re-fetch the source"
                )


# ------------------------------------------------------------------------------ weight values

# How to see NaN or infinity in the raw bits of each float dtype: (unsigned view, mask, value):
# an element is non-finite when bits & mask == value (exponent all ones for IEEE formats; the single
# NaN code of the fnuz and e8m0 formats; S.1111.111 for e4m3, which has no infinity).
# F4 and F6 have no NaN or infinity; integer and boolean dtypes cannot hold one.
_NON_FINITE_BITS = {
    "F16": ("<u2", 0x7C00, 0x7C00),
    "BF16": ("<u2", 0x7F80, 0x7F80),
    "F32": ("<u4", 0x7F800000, 0x7F800000),
    "C64": ("<u4", 0x7F800000, 0x7F800000),
    "F64": ("<u8", 0x7FF0000000000000, 0x7FF0000000000000),
    "F8_E5M2": ("u1", 0x7C, 0x7C),
    "F8_E4M3": ("u1", 0x7F, 0x7F),
    "F8_E4M3FNUZ": ("u1", 0xFF, 0x80),
    "F8_E5M2FNUZ": ("u1", 0xFF, 0x80),
    "F8_E8M0": ("u1", 0xFF, 0xFF),
}


def non_finite_refusal(file_name: str, tensor: str, dtype: str, element: int) -> SourceError:
    return SourceError(
        f"{file_name}: tensor {tensor!r} ({dtype}) holds NaN or infinity (element {element}); "
        "fix the source, or set source.non_finite_weights: allow to ship it as it is"
    )


class FiniteScanner:
    """Checks tensors for NaN and infinity as their bytes go by, in pieces of any size (an element
    may straddle two pieces). `tensors` are (file, name, dtype, begin, end) with absolute byte
    positions in the stream, in order. `feed` raises a SourceError naming the first bad tensor."""

    def __init__(self, tensors: Sequence[tuple[str, str, str, int, int]]):
        self._tensors = [tensor for tensor in tensors if tensor[2] in _NON_FINITE_BITS and tensor[4] > tensor[3]]
        self._next = 0
        self._carry = b""  # the start of an element cut by the end of the previous piece

    def feed(self, position: int, piece: memoryview) -> None:
        import numpy

        stop = position + len(piece)
        while self._next < len(self._tensors):
            file_name, name, dtype, begin, end = self._tensors[self._next]
            if begin >= stop:
                return
            if end <= position:  # a tensor wholly behind: only if pieces skipped it, which they never do
                self._next += 1
                self._carry = b""
                continue
            view, mask, value = _NON_FINITE_BITS[dtype]
            size = numpy.dtype(view).itemsize
            low, high = max(begin, position), min(end, stop)
            data = piece[low - position : high - position]
            if self._carry:
                data = memoryview(self._carry + bytes(data))
                low -= len(self._carry)
            whole = len(data) - len(data) % size
            if whole:
                bits = numpy.frombuffer(data[:whole], dtype=view)
                bad = numpy.flatnonzero((bits & mask) == value)
                if len(bad):
                    element = (low - begin + int(bad[0]) * size) // (DTYPE_BITS[dtype] // 8)
                    raise non_finite_refusal(file_name, name, dtype, element)
            self._carry = bytes(data[whole:])
            if high < end:
                return
            self._next += 1
            self._carry = b""
