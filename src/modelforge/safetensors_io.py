"""Reads safetensors headers and writes shards by streaming byte ranges, never loading a shard:
memory stays at one copy buffer whatever the model size. Imports only `errors` and `hashing`."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import threading
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
    order (`source_paths` maps each TensorInfo.file to where it is). Returns the output's sha256.

    The bytes move in the kernel (copy_file_range: no trip through Python, a reflink where the
    filesystem offers one) while a second thread hashes the output as it grows, reading it back
    from the page cache: the two cores overlap I/O and hashing, and the hash is of the bytes that
    are really in the file. Memory is one hashing buffer whatever the model size."""
    header, _ = _header_bytes(entries, metadata)
    prefix = struct.pack("<Q", len(header)) + header
    total = len(prefix) + sum(info.nbytes for _, info in entries)
    written = _Progress()
    hasher = _TailHasher(path, total, written)
    handles: dict[str, object] = {}
    try:
        with open(path, "wb", buffering=0) as out:
            out.write(prefix)
            written.advance(len(prefix))
            hasher.start()
            for _, info in entries:
                source = handles.get(info.file)
                if source is None:
                    source = handles[info.file] = open(source_paths[info.file], "rb", buffering=0)
                _copy_range(source, out, info, written, progress)
            os.fsync(out.fileno())
    except BaseException:
        written.abort()
        raise
    finally:
        for handle in handles.values():
            handle.close()
        hasher.join()
    return hasher.result()


class _Progress:
    """How many bytes of the output are written; the hasher waits on it."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.count = 0
        self.aborted = False

    def advance(self, count: int) -> None:
        with self._condition:
            self.count += count
            self._condition.notify_all()

    def abort(self) -> None:
        with self._condition:
            self.aborted = True
            self._condition.notify_all()

    def wait_beyond(self, position: int) -> int:
        with self._condition:
            while self.count <= position and not self.aborted:
                self._condition.wait(timeout=1.0)
            return self.count


class _TailHasher(threading.Thread):
    def __init__(self, path: Path, total: int, written: _Progress):
        super().__init__(daemon=True, name="modelforge-hash")
        self.path, self.total, self.written = path, total, written
        self.sha = hashlib.sha256()
        self.error: BaseException | None = None

    def run(self) -> None:
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        position = 0
        try:
            with open(self.path, "rb", buffering=0) as handle:
                while position < self.total:
                    available = self.written.wait_beyond(position)
                    if self.written.aborted:
                        return
                    while position < available:
                        count = handle.readinto(view[: min(CHUNK, available - position)])
                        if not count:
                            raise OSError(f"{self.path.name} shrank while being hashed")
                        self.sha.update(view[:count])
                        position += count
        except BaseException as error:  # reported by result()
            self.error = error

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        return self.sha.hexdigest()


def _copy_range(source, out, info: TensorInfo, written: _Progress, progress) -> None:
    position, remaining = info.begin, info.nbytes
    while remaining:
        step = min(remaining, 64 << 20)
        try:
            count = os.copy_file_range(source.fileno(), out.fileno(), step, position)
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                raise
            count = _copy_chunk(source, out, position, step)
        if count == 0:
            raise SourceError(f"{info.file}: ended early while copying {info.name!r}; the file is truncated, re-fetch it")
        position += count
        remaining -= count
        written.advance(count)
        if progress:
            progress(count)


def _copy_chunk(source, out, position: int, count: int) -> int:
    """Userspace fallback where the kernel cannot copy between these files."""
    source.seek(position)
    data = source.read(min(count, CHUNK))
    out.write(data)
    return len(data)
