"""Small safetensors files written byte by byte for the corrupt-source tests and the header fuzzer:
read a shard into (header, data), write any header (a dict, or raw JSON text for what a dict
cannot say, such as a repeated key) in front of any data. No library writes these: a library
would refuse to write most of them."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any


def read_shard(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def shard_bytes(header: Any, data: bytes, *, length: int | None = None) -> bytes:
    """A safetensors file: header (a JSON value, or its text as str/bytes), padded with spaces to
    8 bytes as safetensors writes it; `length` overrides the 8-byte length field."""
    if isinstance(header, str):
        text = header.encode()
    elif isinstance(header, bytes):
        text = header
    else:
        text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def write_shard(path: Path, header: Any, data: bytes, **options: Any) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link into a shared copy
    path.write_bytes(shard_bytes(header, data, **options))


def tensor_layout(tensors: dict[str, tuple[str, list[int], bytes]]) -> tuple[dict[str, Any], bytes]:
    """A valid header and data area for name → (dtype, shape, bytes), in name order."""
    header: dict[str, Any] = {}
    data = b""
    for name, (dtype, shape, payload) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    return header, data
