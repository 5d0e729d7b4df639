"""MediaPipe LLM `.task` files, written byte-deterministically.

A `.task` is what the MediaPipe GenAI web runtime (`@mediapipe/tasks-genai`) loads for a
"converted" LLM: an uncompressed (stored) zip whose entries are named by MediaPipe's bundle tags

    TF_LITE_PREFILL_DECODE   the prefill/decode .tflite graph
    TOKENIZER_MODEL          the SentencePiece model (tokenizer.model)
    METADATA                 an `odml.infra.proto.LlmParameters` protobuf message
    [TF_LITE_EMBEDDER, TF_LITE_PER_LAYER_EMBEDDER, TF_LITE_VISION_ENCODER, TF_LITE_VISION_ADAPTER]

in that order (the order of MediaPipe's `llm_bundler._BundleTags`), laid out the way MediaPipe's
`model_asset_bundle_utils.AlignZipFile` lays it out: before every local file header it writes
`4 - (offset + len(header)) % 4` zero bytes (1 to 4, never 0), so that every member's data starts on
a 4-byte boundary. With `TF_LITE_PREFILL_DECODE` first (30 + 22 = 52 byte header, a multiple of 4)
the file starts with 4 zero bytes and `PK` at offset 4 — which is exactly what the web runtime's
format sniffer tests (`bytes[4] == 'P' && bytes[5] == 'K'`). A plain `zipfile` archive (PK at 0) or
another entry order (e.g. `METADATA` first: PK at 2) is not recognised, so the order is fixed here
and checked after writing.

Determinism: fixed entry order, every timestamp 1980-01-01 00:00:00, fixed permissions (0o600, as
MediaPipe's `writestr` gives), fixed "made by" system (Unix), no compression, no comment. The
METADATA message is encoded by a small hand-written protobuf encoder in field-number order (what
`SerializeToString` does), so no protoc/generated code is needed.
"""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ALIGNMENT",
    "ENTRY_ORDER",
    "LlmParams",
    "TaskFormatError",
    "encode_llm_parameters",
    "decode_llm_parameters",
    "gemma_params",
    "read_task",
    "task_entries",
    "task_layout",
    "write_task",
]

# MediaPipe: `_ALIGNMENT = 4` in mediapipe/tasks/python/metadata/metadata_writers/model_asset_bundle_utils.py
ALIGNMENT = 4
# MediaPipe: `_BundleTags` in mediapipe/tasks/python/genai/bundler/llm_bundler.py (this order).
ENTRY_ORDER = (
    "TF_LITE_PREFILL_DECODE",
    "TOKENIZER_MODEL",
    "METADATA",
    "TF_LITE_EMBEDDER",
    "TF_LITE_PER_LAYER_EMBEDDER",
    "TF_LITE_VISION_ENCODER",
    "TF_LITE_VISION_ADAPTER",
)
_FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_EXTERNAL_ATTR = 0o600 << 16
_COPY_CHUNK = 8 << 20


class TaskFormatError(ValueError):
    """A `.task` could not be written or read as the MediaPipe web runtime expects."""


# --------------------------------------------------------------------------------------------
# LlmParameters (odml.infra.proto, mediapipe/tasks/cc/genai/inference/proto/llm_params.proto)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlmParams:
    """What goes into the `.task` METADATA entry (`odml.infra.proto.LlmParameters`).

    Field numbers (llm_params.proto / prompt_template.proto):
      2  vocab_size (int32, optional here)
      5  stop_tokens (repeated string)
      6  start_token (string; oneof start_token_union with start_token_id = 4)
      7  input_output_normalizations (repeated enum; 1 = BYTES_TO_UNICODE)
      8  prompt_template (PromptTemplate, deprecated; 1 session_prefix, 2 prompt_prefix, 3 prompt_suffix)
      11 user_role_token, 12 system_role_token, 13 model_role_token, 14 end_role_token (strings)
      17 prompt_templates (PromptTemplates: 1 user_template, 2 model_template, 3 system_template)

    The deprecated `prompt_template` is filled the way MediaPipe's Python bundler did:
    prefix = user prefix, suffix = user suffix + model prefix, session_prefix = system_prompt.

    `max_tokens` is NOT part of LlmParameters (the proto has no such field; the web runtime takes
    it as the `maxTokens` task option, default 512). It is carried here so that callers have one
    place for it; it must not exceed the KV-cache length the graph was exported with.
    """

    start_token: str
    stop_tokens: tuple[str, ...]
    prompt_prefix_user: str = ""
    prompt_suffix_user: str = ""
    prompt_prefix_model: str = ""
    prompt_suffix_model: str = ""
    prompt_prefix_system: str = ""
    prompt_suffix_system: str = ""
    system_prompt: str = ""
    user_role_token: str = ""
    system_role_token: str = ""
    model_role_token: str = ""
    end_role_token: str = ""
    enable_bytes_to_unicode_mapping: bool = False
    vocab_size: int = 0
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop_tokens, (str, bytes)):
            raise TypeError("stop_tokens must be a sequence of strings, not a string")
        object.__setattr__(self, "stop_tokens", tuple(self.stop_tokens))
        if not self.stop_tokens:
            raise ValueError("stop_tokens must not be empty (the runtime would never stop)")
        if not all(isinstance(t, str) and t for t in self.stop_tokens):
            raise ValueError("stop_tokens must be non-empty strings")
        if not self.start_token:
            raise ValueError("start_token must not be empty")
        if self.system_prompt and (self.prompt_prefix_system or self.prompt_suffix_system):
            raise ValueError("system_prompt and prompt_*_system are mutually exclusive (as in MediaPipe's bundler)")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError("max_tokens must be positive")

    def to_proto_bytes(self) -> bytes:
        return encode_llm_parameters(self)


def gemma_params(*, max_tokens: int | None = None, system_prompt: str = "") -> LlmParams:
    """Gemma 3 / MedGemma turn format (https://ai.google.dev/gemma/docs/formatting)."""
    return LlmParams(
        start_token="<bos>",
        stop_tokens=("<eos>", "<end_of_turn>"),
        prompt_prefix_user="<start_of_turn>user\n",
        prompt_suffix_user="<end_of_turn>\n",
        prompt_prefix_model="<start_of_turn>model\n",
        prompt_suffix_model="<end_of_turn>\n",
        system_prompt=system_prompt,
        max_tokens=max_tokens,
    )


def _varint(value: int) -> bytes:
    if value < 0:  # int32 negatives are encoded as 10-byte two's complement
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _len_field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _str_field(number: int, value: str) -> bytes:
    return _len_field(number, value.encode("utf-8"))


def _prompt_template(prefix: str, suffix: str, session_prefix: str = "") -> bytes:
    out = b""
    if session_prefix:
        out += _str_field(1, session_prefix)
    if prefix:
        out += _str_field(2, prefix)
    if suffix:
        out += _str_field(3, suffix)
    return out


def encode_llm_parameters(params: LlmParams) -> bytes:
    """Serialize like protobuf's SerializeToString: fields in number order, proto3 defaults omitted,
    set `optional` sub-messages always written (even when empty)."""
    out = bytearray()
    if params.vocab_size:
        out += _tag(2, 0) + _varint(params.vocab_size)
    for token in params.stop_tokens:
        out += _str_field(5, token)
    out += _str_field(6, params.start_token)
    if params.enable_bytes_to_unicode_mapping:
        # packed repeated enum (proto3 default for repeated scalars)
        out += _len_field(7, _varint(1))
    legacy = _prompt_template(
        params.prompt_prefix_user,
        params.prompt_suffix_user + params.prompt_prefix_model if params.prompt_suffix_user else "",
        params.system_prompt,
    )
    if legacy:
        out += _len_field(8, legacy)
    for number, value in (
        (11, params.user_role_token),
        (12, params.system_role_token),
        (13, params.model_role_token),
        (14, params.end_role_token),
    ):
        if value:
            out += _str_field(number, value)
    templates = bytearray()
    if params.prompt_prefix_user or params.prompt_suffix_user:
        templates += _len_field(1, _prompt_template(params.prompt_prefix_user, params.prompt_suffix_user))
    if params.prompt_prefix_model or params.prompt_suffix_model:
        templates += _len_field(2, _prompt_template(params.prompt_prefix_model, params.prompt_suffix_model))
    if params.prompt_prefix_system or params.prompt_suffix_system:
        templates += _len_field(3, _prompt_template(params.prompt_prefix_system, params.prompt_suffix_system))
    if templates:
        out += _len_field(17, bytes(templates))
    return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise TaskFormatError("truncated varint in protobuf message")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def _fields(data: bytes) -> list[tuple[int, int, int | bytes]]:
    """Generic protobuf wire decoding: [(field number, wire type, value)]."""
    out = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            value = data[pos : pos + length]
            if len(value) != length:
                raise TaskFormatError("truncated length-delimited field")
            pos += length
        elif wire == 5:
            value = struct.unpack_from("<I", data, pos)[0]
            pos += 4
        elif wire == 1:
            value = struct.unpack_from("<Q", data, pos)[0]
            pos += 8
        else:
            raise TaskFormatError(f"unsupported wire type {wire}")
        out.append((number, wire, value))
    return out


def _decode_template(data: bytes) -> dict[str, str]:
    names = {1: "session_prefix", 2: "prompt_prefix", 3: "prompt_suffix"}
    return {names[n]: v.decode() for n, _, v in _fields(data) if n in names}


def decode_llm_parameters(data: bytes) -> dict:
    """Decode the fields `encode_llm_parameters` writes (for tests and `modelforge inspect`-style tools)."""
    result: dict = {"stop_tokens": []}
    roles = {11: "user_role_token", 12: "system_role_token", 13: "model_role_token", 14: "end_role_token"}
    for number, wire, value in _fields(data):
        if number == 2:
            result["vocab_size"] = value
        elif number == 4:
            result["start_token_id"] = value
        elif number == 5:
            result["stop_tokens"].append(value.decode())
        elif number == 6:
            result["start_token"] = value.decode()
        elif number == 7:
            items = [value] if wire == 0 else [v for v, _ in _iter_packed(value)]
            result.setdefault("input_output_normalizations", []).extend(items)
        elif number == 8:
            result["prompt_template"] = _decode_template(value)
        elif number in roles:
            result[roles[number]] = value.decode()
        elif number == 17:
            names = {1: "user_template", 2: "model_template", 3: "system_template"}
            result["prompt_templates"] = {names[n]: _decode_template(v) for n, _, v in _fields(value) if n in names}
        else:
            result.setdefault("unknown_fields", []).append(number)
    return result


def _iter_packed(data: bytes):
    pos = 0
    while pos < len(data):
        value, new_pos = _read_varint(data, pos)
        yield value, new_pos
        pos = new_pos


# --------------------------------------------------------------------------------------------
# The aligned zip (MediaPipe's AlignZipFile), deterministic.
# --------------------------------------------------------------------------------------------


class _AlignedZipFile(zipfile.ZipFile):
    """Mirror of MediaPipe's `AlignZipFile`: zero padding before each local header so that the
    stored data starts on an `alignment` boundary. The padding is `alignment - (offset + header) %
    alignment`, i.e. 1..alignment bytes (MediaPipe never writes 0), and the local header offset
    recorded in the central directory points after the padding."""

    def __init__(self, *args, alignment: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._alignment = alignment

    def _writecheck(self, zinfo: zipfile.ZipInfo) -> None:  # noqa: D401 - zipfile hook
        if zinfo.compress_type != zipfile.ZIP_STORED:
            raise TaskFormatError("only stored (uncompressed) members are allowed in a .task")
        offset = self.fp.tell()
        # zipfile decides zip64 for the local header with this rule (`_open_to_write`); measure the
        # header the same way (MediaPipe measures without the 20-byte zip64 extra, which happens to
        # give the same padding for alignment 4, but this stays right for any alignment).
        zip64 = self._allowZip64 and zinfo.file_size * 1.05 > zipfile.ZIP64_LIMIT
        header_length = len(zinfo.FileHeader(zip64))
        padding = self._alignment - (offset + header_length) % self._alignment
        if padding:
            self.fp.write(b"\x00" * padding)
            zinfo.header_offset = offset + padding
        super()._writecheck(zinfo)


def _zipinfo(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = _EXTERNAL_ATTR
    info.create_system = 3  # Unix, whatever the host (zipfile would write 0 on Windows)
    info.file_size = size  # as writestr sets it before opening: decides the zip64 local header
    return info


def task_entries(
    *,
    tflite: Path,
    tokenizer: Path,
    params: LlmParams,
    embedder: Path | None = None,
    per_layer_embedder: Path | None = None,
    vision_encoder: Path | None = None,
    vision_adapter: Path | None = None,
) -> list[tuple[str, Path | bytes]]:
    """The entries of a `.task`, in MediaPipe's order: (name, file or bytes)."""
    if vision_adapter is not None and vision_encoder is None:
        raise TaskFormatError("a vision adapter without a vision encoder makes no sense")
    entries: list[tuple[str, Path | bytes]] = [
        ("TF_LITE_PREFILL_DECODE", Path(tflite)),
        ("TOKENIZER_MODEL", Path(tokenizer)),
        ("METADATA", encode_llm_parameters(params)),
    ]
    for name, path in (
        ("TF_LITE_EMBEDDER", embedder),
        ("TF_LITE_PER_LAYER_EMBEDDER", per_layer_embedder),
        ("TF_LITE_VISION_ENCODER", vision_encoder),
        ("TF_LITE_VISION_ADAPTER", vision_adapter),
    ):
        if path is not None:
            entries.append((name, Path(path)))
    return entries


def _check_inputs(tflite: Path, tokenizer: Path) -> None:
    with open(tflite, "rb") as handle:
        head = handle.read(8)
    if head[4:8] != b"TFL3":
        raise TaskFormatError(f"{tflite} is not a TFLite flatbuffer (no 'TFL3' identifier at offset 4)")
    with open(tokenizer, "rb") as handle:
        head = handle.read(2)
    # A SentencePiece ModelProto starts with field 1 (repeated SentencePiece pieces): tag 0x0a.
    if head[:1] != b"\x0a":
        raise TaskFormatError(
            f"{tokenizer} does not look like a SentencePiece model (tokenizer.model); "
            "the .task format has no HF tokenizer.json support"
        )


def write_task(path: Path, **members) -> None:
    """Write a MediaPipe LLM `.task` to `path` (atomically: a temp file in the same directory, then
    rename); members: task_entries' keyword arguments (tflite, tokenizer, params, and the optional
    graphs). Same inputs → same bytes. Members are streamed, so multi-GB graphs do not have to fit in
    memory; zip64 records are used where a member exceeds 4 GiB (as zipfile/MediaPipe would)."""
    path = Path(path)
    _check_inputs(Path(members["tflite"]), Path(members["tokenizer"]))
    entries = task_entries(**members)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, _AlignedZipFile(raw, mode="w", alignment=ALIGNMENT, allowZip64=True) as zf:
            for name, source in entries:
                if isinstance(source, bytes):
                    size = len(source)
                    info = _zipinfo(name, size)
                    with zf.open(info, mode="w") as dest:
                        dest.write(source)
                else:
                    size = os.stat(source).st_size
                    info = _zipinfo(name, size)
                    with open(source, "rb") as src, zf.open(info, mode="w") as dest:
                        shutil.copyfileobj(src, dest, _COPY_CHUNK)
        _verify_layout(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _verify_layout(path: Path) -> None:
    with open(path, "rb") as handle:
        head = handle.read(6)
    if head != b"\x00\x00\x00\x00PK":
        raise TaskFormatError(f"{path}: expected 4 zero bytes then 'PK' (MediaPipe's aligned zip); got {head!r}")
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise TaskFormatError(f"{path}: {info.filename} is compressed")
            data_offset = _data_offset(zf, info)
            if data_offset % ALIGNMENT:
                raise TaskFormatError(f"{path}: {info.filename} data at {data_offset} is not {ALIGNMENT}-aligned")


def _data_offset(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    fp = zf.fp
    fp.seek(info.header_offset)
    header = fp.read(30)
    if header[:4] != b"PK\x03\x04":
        raise TaskFormatError(f"{info.filename}: no local file header at {info.header_offset}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def read_task(path: Path) -> dict[str, bytes]:
    """All members of a `.task`, in archive order (small files only: for tests and inspection)."""
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def task_layout(path: Path) -> list[dict]:
    """[{name, header_offset, data_offset, size}] for each member, in archive order."""
    with zipfile.ZipFile(path) as zf:
        return [
            {
                "name": info.filename,
                "header_offset": info.header_offset,
                "data_offset": _data_offset(zf, info),
                "size": info.file_size,
            }
            for info in zf.infolist()
        ]


def pad_sentencepiece(source: Path, target: Path, vocab_size: int) -> Path:
    """A copy of a SentencePiece model with unused pieces appended up to `vocab_size`. Gemma's
    tokenizer.model has fewer pieces than the model's vocabulary (the ids above are image soft
    tokens); the web runtime's detokenizer aborts on an id it has no piece for, so the .task's
    tokenizer must cover every id the model can emit. Unchanged if it already does."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(source).read_bytes())
    for index in range(len(proto.pieces), vocab_size):
        piece = proto.pieces.add()
        piece.piece = f"<unused_id_{index}>"
        piece.score = 0.0
        piece.type = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
    Path(target).write_bytes(proto.SerializeToString())
    return Path(target)
