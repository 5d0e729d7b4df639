"""Reads safetensors headers and writes shards by streaming byte ranges, never loading a shard:
memory stays at one copy buffer whatever the model size. Imports only `errors` and `hashing`."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from modelforge.errors import SourceError
from modelforge.hashing import CHUNK

MAX_HEADER_BYTES = 100 << 20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str  # the shard's name, relative to the checkpoint directory
    begin: int  # absolute byte offset of the data in the shard
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def read_header(path: Path, file_name: str | None = None) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensors and metadata of one safetensors file, from its header only."""
    file_name = file_name or path.name
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise SourceError(f"{file_name}: too short to be a safetensors file; re-download it")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise SourceError(f"{file_name}: safetensors header of {length} bytes is implausible; the file is damaged")
            raw = handle.read(length)
            size = os.fstat(handle.fileno()).st_size
    except OSError as error:
        raise SourceError(f"{file_name}: cannot read ({error.strerror}); check the source directory") from None
    return parse_header(raw, 8 + length, size, file_name)


def parse_header(raw: bytes, data_start: int, file_size: int | None, file_name: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SourceError(f"{file_name}: the safetensors header is not valid JSON; the file is damaged") from None
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            begin, end = entry["data_offsets"]
            info = TensorInfo(name, entry["dtype"], tuple(entry["shape"]), file_name, data_start + begin, data_start + end)
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{file_name}: header entry for {name!r} is malformed; the file is damaged") from None
        expected = DTYPE_BYTES.get(info.dtype)
        count = 1
        for dimension in info.shape:
            count *= dimension
        if expected is not None and count * expected != info.nbytes:
            raise SourceError(f"{file_name}: tensor {name!r} has {info.nbytes} bytes for shape {list(info.shape)}; the file is damaged")
        if file_size is not None and info.end > file_size:
            raise SourceError(f"{file_name}: tensor {name!r} runs past the end of the file; the file is truncated, re-fetch it")
        tensors[name] = info
    return tensors, metadata


def _header_bytes(entries: Sequence[tuple[str, TensorInfo]], metadata: dict[str, str]) -> tuple[bytes, list[int]]:
    """Serialized header (padded with spaces to 8 bytes, as safetensors does) and data offsets."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    offset = 0
    offsets = []
    for name, info in entries:
        header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offsets.append(offset)
        offset += info.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return encoded, offsets


def write_shard(
    path: Path,
    entries: Sequence[tuple[str, TensorInfo]],
    source_paths: Mapping[str, Path],
    metadata: dict[str, str],
    progress: Callable[[int], None] | None = None,
) -> str:
    """Write one safetensors file whose tensors are byte ranges of source shards, in the given
    order (`source_paths` maps each TensorInfo.file to where it is), hashing the output in
    the same pass. Returns the output's sha256."""
    header, _ = _header_bytes(entries, metadata)
    sha = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    handles: dict[str, object] = {}
    try:
        with open(path, "wb", buffering=0) as out:
            for chunk in (struct.pack("<Q", len(header)), header):
                out.write(chunk)
                sha.update(chunk)
            for _, info in entries:
                source = handles.get(info.file)
                if source is None:
                    source = handles[info.file] = open(source_paths[info.file], "rb", buffering=0)
                source.seek(info.begin)
                remaining = info.nbytes
                while remaining:
                    count = source.readinto(view[: min(CHUNK, remaining)])
                    if not count:
                        raise SourceError(f"{info.file}: ended early while copying {info.name!r}; the file is truncated, re-fetch it")
                    sha.update(view[:count])
                    written = 0
                    while written < count:
                        written += out.write(view[written:count])
                    remaining -= count
                    if progress:
                        progress(count)
            os.fsync(out.fileno())
    finally:
        for handle in handles.values():
            handle.close()
    return sha.hexdigest()
