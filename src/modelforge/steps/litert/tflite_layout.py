"""Deterministic layout of large .tflite files (run by the export worker on every graph it writes).

A .tflite flatbuffer cannot exceed 2 GiB, so above that the LiteRT converter (litert-torch 0.10.0's
`converter_api_ext.export_flatbuffer_to_file`) writes the weights after the flatbuffer and records
each one in its `Buffer` table as an absolute file `offset` and a `size`. With lightweight
conversion the weights are MLIR resource blobs that share the PyTorch tensors' memory, and the
converter appends them in an order that follows their addresses: two runs with identical tensors
give the same flatbuffer and the same buffer contents, but in a different order after it
(measured: 2 different hashes in 4 runs). `normalize` rewrites that tail in buffer-index order,
with the converter's own alignment, and patches the `offset` fields in place (fixed-width scalars,
so the flatbuffer keeps its size and every other byte). A file without external buffers (every
graph under 2 GiB) is left untouched.

The rewrite checks what it assumes (every byte after the flatbuffer belongs to a buffer or is
zero padding; no two buffers overlap unless identical) and raises LayoutError otherwise, so a
converter that changes its format fails loudly instead of producing a damaged model.

Imports flatbuffers and ai_edge_litert's schema only.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from pathlib import Path

BUFFER_OFFSET_SLOT = 6  # vtable offset of Buffer.offset (field 1: data=4, offset=6, size=8)
# The converter starts every buffer on a 16-byte boundary and leaves at least one zero byte after
# it (next start = the first multiple of 16 after its end); the rewrite keeps both rules.
ALIGNMENT = 16
COPY_CHUNK = 64 << 20


class LayoutError(RuntimeError):
    """The .tflite's external buffers are not laid out as this module expects."""


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def external_buffers(data) -> list[tuple[int, int, int, int]]:
    """(buffer index, offset, size, position of the offset field) of every buffer stored after the
    flatbuffer. Offsets 0 and 1 mean "inline" and "none" in TFLite's schema."""
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    found = []
    for index in range(model.BuffersLength()):
        buffer = model.Buffers(index)
        offset, size = buffer.Offset(), buffer.Size()
        if offset > 1:
            slot = buffer._tab.Offset(BUFFER_OFFSET_SLOT)
            found.append((index, offset, size, buffer._tab.Pos + slot))
    return found


def _next_start(end: int) -> int:
    return end + ALIGNMENT - end % ALIGNMENT


def plan_layout(buffers: list[tuple[int, int, int, int]], file_size: int) -> tuple[int, int, dict[int, int]]:
    """(tail start, tail end, new offset per old offset) for buffers ordered by index."""
    by_offset: dict[int, int] = {}
    for _, offset, size, _ in buffers:
        if by_offset.setdefault(offset, size) != size:
            raise LayoutError(f"two buffers start at {offset} with different sizes")
    spans = sorted(by_offset.items())
    for (offset, size), (next_offset, _) in zip(spans, spans[1:]):
        if offset + size > next_offset:
            raise LayoutError(f"buffers at {offset} (+{size}) and {next_offset} overlap")
    if spans[-1][0] + spans[-1][1] > file_size:
        raise LayoutError(f"a buffer at {spans[-1][0]} runs past the end of the file ({file_size} bytes)")
    start = spans[0][0]
    if any(offset % ALIGNMENT for offset, _ in spans):
        raise LayoutError(f"a buffer offset is not a multiple of {ALIGNMENT}: not a layout this module knows")
    new_offsets: dict[int, int] = {}
    cursor = start
    for _, offset, size, _ in sorted(buffers):
        if offset not in new_offsets:
            new_offsets[offset] = cursor
            cursor = _next_start(cursor + size)
    return start, cursor, new_offsets


def normalize(path: Path) -> bool:
    """Rewrite `path` with its external buffers in index order; True if the bytes changed."""
    path = Path(path)
    file_size = path.stat().st_size
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        buffers = external_buffers(data)
        if not buffers:
            return False
        start, end, new_offsets = plan_layout(buffers, file_size)
        sizes = {offset: size for _, offset, size, _ in buffers}
        _check_padding(data, start, file_size, sizes)
        if end == file_size and all(new == old for old, new in new_offsets.items()):
            return False
        temporary = path.with_name(path.name + ".layout")
        with open(temporary, "wb") as out, open(path, "r+b") as original:
            header = bytearray(data[:start])
            for _, offset, _, field in buffers:
                struct.pack_into("<Q", header, field, new_offsets[offset])
            out.write(header)
            cursor = start
            punch = HolePuncher(original.fileno())
            for old, new in sorted(new_offsets.items(), key=lambda item: item[1]):
                out.write(b"\0" * (new - cursor))
                copy_freeing(data, out, old, sizes[old], punch)
                cursor = new + sizes[old]
            out.write(b"\0" * (end - cursor))
            out.flush()
            os.fsync(out.fileno())
    os.replace(temporary, path)
    return True


class HolePuncher:
    """Frees the whole filesystem blocks of a byte range of an open file (fallocate's
    PUNCH_HOLE | KEEP_SIZE: the file keeps its size, the range reads as zeros). A partial block at
    either end is left as it is: it may hold the neighbouring buffer's bytes. Gives up quietly, and
    for good, where the filesystem cannot punch holes (the copy then simply needs its space)."""

    KEEP_SIZE, PUNCH_HOLE = 0x01, 0x02

    def __init__(self, descriptor: int):
        self.descriptor = descriptor
        self.block = os.fstat(descriptor).st_blksize or 4096
        try:
            self._fallocate = ctypes.CDLL(None, use_errno=True).fallocate
            self._fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        except (OSError, AttributeError):
            self._fallocate = None

    def __call__(self, start: int, end: int) -> None:
        first, last = -(-start // self.block) * self.block, end // self.block * self.block
        if self._fallocate is None or last <= first:
            return
        if self._fallocate(self.descriptor, self.KEEP_SIZE | self.PUNCH_HOLE, first, last - first) != 0:
            error = ctypes.get_errno()
            if error not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise OSError(error, f"freeing the copied blocks of a .tflite: {os.strerror(error)}")
            self._fallocate = None


def copy_freeing(data, out, offset: int, size: int, punch: HolePuncher) -> None:
    """Write data[offset : offset + size] to `out` chunk by chunk, freeing each chunk's whole
    blocks in the original once written (never read again: each buffer is copied once)."""
    for chunk in range(offset, offset + size, COPY_CHUNK):
        stop = min(chunk + COPY_CHUNK, offset + size)
        out.write(data[chunk:stop])
        punch(chunk if chunk == offset else chunk - chunk % punch.block, stop)


def _check_padding(data, start: int, end: int, sizes: dict[int, int]) -> None:
    """Every tail byte outside a buffer must be zero: nothing but buffers lives after the flatbuffer."""
    cursor = start
    for offset in sorted(sizes) + [end]:
        gap = bytes(data[cursor:offset]) if offset > cursor else b""
        if gap.strip(b"\0"):
            raise LayoutError(f"non-zero bytes between buffers at {cursor}..{offset}: not a layout this module knows")
        if offset < end:
            cursor = max(cursor, offset + sizes[offset])
