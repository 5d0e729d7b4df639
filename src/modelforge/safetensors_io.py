"""Reads safetensors headers and writes shards by streaming byte ranges, never loading a shard:
memory stays at one copy buffer whatever the model size. Imports only `errors`, `hashing` and
`source_checks` (which holds every rule a header must meet)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence, Union

from modelforge.errors import SourceError
from modelforge.hashing import CHUNK
from modelforge.source_checks import (
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    FiniteScanner,
    HeaderEntry,
    check_header,
    check_header_object,
    open_regular,
)

# Bytes per element of the whole-byte dtypes (the sub-byte ones have no whole size; see DTYPE_BITS).
# A tensor's bytes for write_tensors: the bytes, or a callable giving them or an iterable of chunks.
TensorData = Union[bytes, Callable[[], Union[bytes, Iterable[bytes]]]]
DTYPE_BYTES = {dtype: bits // 8 for dtype, bits in DTYPE_BITS.items() if bits % 8 == 0}


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
    """Tensors and metadata of one safetensors file, from its header only (never its data), held
    to the reference parser's rules (source_checks.check_header). Refuses a FIFO or a device
    without blocking on it."""
    file_name = file_name or path.name
    descriptor = open_regular(path, file_name)
    try:
        with open(descriptor, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise SourceError(f"{file_name}: {size} bytes is too short to be a safetensors file; re-fetch the source")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise SourceError(f"{file_name}: safetensors header length {length} is over the limit of {MAX_HEADER_BYTES} bytes; the file is damaged")
            if 8 + length > size:
                raise SourceError(f"{file_name}: safetensors header length {length} runs past the end of the {size}-byte file; the file is truncated or damaged")
            raw = handle.read(length)
            if len(raw) != length:
                raise SourceError(f"{file_name}: shrank while its header was read; re-fetch the source")
    except OSError as error:
        raise SourceError(f"{file_name}: cannot read ({error.strerror}); check the source directory") from None
    return parse_header(raw, 8 + length, size, file_name)


def parse_header(raw: bytes, data_start: int, file_size: int | None, file_name: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensors (absolute offsets) and metadata of a header's bytes; file_size None when only the
    header is known (then the data area's length cannot be checked)."""
    entries, metadata = check_header(raw, None if file_size is None else file_size - data_start, file_name)
    return _infos(entries, data_start, file_name), metadata


def parse_header_object(header: dict, file_name: str) -> dict[str, TensorInfo]:
    """Tensors of a header the Hub already parsed (its data area's length unknown)."""
    entries, _ = check_header_object(header, None, file_name)
    return _infos(entries, 0, file_name)


def _infos(entries: Mapping[str, HeaderEntry], data_start: int, file_name: str) -> dict[str, TensorInfo]:
    return {
        name: TensorInfo(name, entry.dtype, entry.shape, file_name, data_start + entry.begin, data_start + entry.end)
        for name, entry in entries.items()
    }


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


def tensor_nbytes(dtype: str, shape: Sequence[int]) -> int:
    """Bytes of a tensor of a whole-byte dtype."""
    count = 1
    for size in shape:
        count *= size
    return count * DTYPE_BYTES[dtype]


def write_tensors(
    path: Path, tensors: Sequence[tuple[str, str, Sequence[int], TensorData]], metadata: dict[str, str] | None = None,
) -> str:
    """Write one safetensors file from (name, dtype, shape, data) in the given order, then fsync it.
    data is the tensor's bytes, or a callable called when the file reaches that tensor that returns
    its bytes or an iterable of chunks of them: a writer holds one tensor (or one chunk) in memory,
    never the model. The header is write_shard's (same serialization, same padding). Returns the
    file's sha256."""
    infos = [(name, TensorInfo(name, dtype, tuple(shape), "", 0, tensor_nbytes(dtype, shape))) for name, dtype, shape, _ in tensors]
    header, _ = _header_bytes(infos, metadata or {})
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in (struct.pack("<Q", len(header)), header):
            out.write(chunk)
            digest.update(chunk)
        for (name, info), (_, _, _, data) in zip(infos, tensors):
            data = data() if callable(data) else data
            written = 0
            for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
                out.write(chunk)
                digest.update(chunk)
                written += len(chunk)
            if written != info.nbytes:
                raise ValueError(f"tensor {name!r}: {written} bytes for {info.dtype} {list(info.shape)}, which takes {info.nbytes}")
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def write_shard(
    path: Path,
    entries: Sequence[tuple[str, TensorInfo]],
    source_paths: Mapping[str, Path],
    metadata: dict[str, str],
    progress: Callable[[int], None] | None = None,
    check_finite: bool = False,
) -> str:
    """Write one safetensors file whose tensors are byte ranges of source shards, in the given
    order (`source_paths` maps each TensorInfo.file to where it is). Returns the output's sha256.

    The bytes move in the kernel (copy_file_range: no trip through Python, a reflink where the
    filesystem offers one) while a second thread hashes the output as it grows, reading it back
    from the page cache: the two cores overlap I/O and hashing, and the hash is of the bytes that
    are really in the file. Memory is one hashing buffer whatever the model size. With
    check_finite, the hashing thread also looks for NaN and infinity in the float tensors in the
    same pass (no second read) and a SourceError names the first source tensor that holds one."""
    header, offsets = _header_bytes(entries, metadata)
    prefix = struct.pack("<Q", len(header)) + header
    total = len(prefix) + sum(info.nbytes for _, info in entries)
    scanner = None
    if check_finite:
        scanner = FiniteScanner([
            (info.file, info.name, info.dtype, len(prefix) + offset, len(prefix) + offset + info.nbytes)
            for (_, info), offset in zip(entries, offsets)
        ])
    written = _Progress()
    hasher = _TailHasher(path, total, written, scanner)
    handles: dict[str, object] = {}
    try:
        with open(path, "wb", buffering=0) as out:
            out.write(prefix)
            written.advance(len(prefix))
            hasher.start()
            for _, info in entries:
                source = handles.get(info.file)
                if source is None:
                    source = handles[info.file] = open(open_regular(source_paths[info.file], info.file), "rb", buffering=0)
                if not _copy_range(source, out, info, written, progress):
                    break  # the hashing thread refused what it read; result() says why
            else:
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
        self.refused = False  # set by the hasher when the bytes it read are refused: copying stops

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
    def __init__(self, path: Path, total: int, written: _Progress, scanner: FiniteScanner | None = None):
        super().__init__(daemon=True, name="modelforge-hash")
        self.path, self.total, self.written, self.scanner = path, total, written, scanner
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
                        if self.scanner is not None:
                            self.scanner.feed(position, view[:count])
                        position += count
        except BaseException as error:  # reported by result()
            self.error = error
            self.written.refused = True

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        return self.sha.hexdigest()


def _copy_range(source, out, info: TensorInfo, written: _Progress, progress) -> bool:
    """Copy one tensor's bytes; False when the hashing thread refused what it read (stop copying)."""
    position, remaining = info.begin, info.nbytes
    while remaining:
        if written.refused:
            return False
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
    return True


def _copy_chunk(source, out, position: int, count: int) -> int:
    """Userspace fallback where the kernel cannot copy between these files."""
    source.seek(position)
    data = source.read(min(count, CHUNK))
    out.write(data)
    return len(data)
