"""The `.task` writer: MediaPipe's aligned-zip layout, byte determinism, and the LlmParameters encoding."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from modelforge.web.taskfile import (
    ALIGNMENT,
    ENTRY_ORDER,
    LlmParams,
    TaskFormatError,
    decode_llm_parameters,
    encode_llm_parameters,
    gemma_params,
    read_task,
    task_layout,
    write_task,
)

from .conftest import fake_tflite


def test_write_twice_same_bytes(tmp_path, tokenizer_model):
    graph = fake_tflite(tmp_path / "g.tflite", size=10_001)
    a, b = tmp_path / "a.task", tmp_path / "sub" / "b.task"
    write_task(a, tflite=graph, tokenizer=tokenizer_model, params=gemma_params(max_tokens=256))
    # a different mtime on the inputs must not matter
    graph.touch()
    write_task(b, tflite=graph, tokenizer=tokenizer_model, params=gemma_params(max_tokens=256))
    assert a.read_bytes() == b.read_bytes()


def test_layout_is_mediapipes_aligned_zip(small_task):
    data = small_task.read_bytes()
    # The web runtime's format sniffer: bytes[4:6] == b"PK"; MediaPipe's writer pads 4 zero bytes first.
    assert data[:6] == b"\x00\x00\x00\x00PK"
    layout = task_layout(small_task)
    assert [entry["name"] for entry in layout] == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"]
    for entry in layout:
        assert entry["data_offset"] % ALIGNMENT == 0, entry
    with zipfile.ZipFile(small_task) as zf:
        for info in zf.infolist():
            assert info.compress_type == zipfile.ZIP_STORED
            assert info.date_time == (1980, 1, 1, 0, 0, 0)
            assert info.external_attr == 0o600 << 16
            assert info.create_system == 3
            assert info.extra == b""
            assert info.comment == b""
        assert zf.comment == b""
        assert zf.testzip() is None


def test_padding_follows_mediapipe_rule(small_task):
    """Before each local header: 4 - (offset + header) % 4 zero bytes (1..4, never 0)."""
    data = small_task.read_bytes()
    layout = task_layout(small_task)
    previous_end = 0
    for entry in layout:
        header_len = 30 + len(entry["name"])
        padding = entry["header_offset"] - previous_end
        assert padding == ALIGNMENT - (previous_end + header_len) % ALIGNMENT
        assert 1 <= padding <= ALIGNMENT
        assert data[previous_end : entry["header_offset"]] == b"\x00" * padding
        previous_end = entry["data_offset"] + entry["size"]


def _mediapipe_reference(path: Path, artifacts: dict[str, bytes]) -> None:
    """What mediapipe/tasks/python/metadata/metadata_writers/model_asset_bundle_utils.py does
    (AlignZipFile + writestr, alignment 4), with the timestamp pinned (MediaPipe uses the clock)."""

    class AlignZipFile(zipfile.ZipFile):
        def _writecheck(self, zinfo):
            offset = self.fp.tell()
            header_length = len(zinfo.FileHeader())
            padding_length = 4 - (offset + header_length) % 4
            if padding_length:
                offset += padding_length
                self.fp.write(b"\x00" * padding_length)
                zinfo.header_offset = offset
            super()._writecheck(zinfo)

    with AlignZipFile(path, mode="w") as zf:
        for name, data in artifacts.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o600 << 16
            info.create_system = 3
            zf.writestr(info, data)


def test_byte_identical_to_mediapipes_writer(tmp_path, tokenizer_model):
    graph = fake_tflite(tmp_path / "g.tflite", size=7_777)
    params = gemma_params()
    ours = tmp_path / "ours.task"
    write_task(ours, tflite=graph, tokenizer=tokenizer_model, params=params)
    reference = tmp_path / "reference.task"
    _mediapipe_reference(
        reference,
        {
            "TF_LITE_PREFILL_DECODE": graph.read_bytes(),
            "TOKENIZER_MODEL": tokenizer_model.read_bytes(),
            "METADATA": encode_llm_parameters(params),
        },
    )
    assert ours.read_bytes() == reference.read_bytes()


def test_read_task_round_trip(tmp_path, tokenizer_model):
    graph = fake_tflite(tmp_path / "g.tflite")
    path = tmp_path / "m.task"
    params = gemma_params(system_prompt="You are a careful clinical assistant.")
    write_task(path, tflite=graph, tokenizer=tokenizer_model, params=params)
    entries = read_task(path)
    assert list(entries) == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA"]
    assert entries["TF_LITE_PREFILL_DECODE"] == graph.read_bytes()
    assert entries["TOKENIZER_MODEL"] == tokenizer_model.read_bytes()
    assert decode_llm_parameters(entries["METADATA"]) == {
        "stop_tokens": ["<eos>", "<end_of_turn>"],
        "start_token": "<bos>",
        "prompt_template": {
            "session_prefix": "You are a careful clinical assistant.",
            "prompt_prefix": "<start_of_turn>user\n",
            "prompt_suffix": "<end_of_turn>\n<start_of_turn>model\n",
        },
        "prompt_templates": {
            "user_template": {"prompt_prefix": "<start_of_turn>user\n", "prompt_suffix": "<end_of_turn>\n"},
            "model_template": {"prompt_prefix": "<start_of_turn>model\n", "prompt_suffix": "<end_of_turn>\n"},
        },
    }


def test_optional_vision_entries_keep_mediapipes_order(tmp_path, tokenizer_model):
    path = tmp_path / "mm.task"
    write_task(
        path,
        tflite=fake_tflite(tmp_path / "g.tflite"),
        tokenizer=tokenizer_model,
        params=gemma_params(),
        vision_adapter=fake_tflite(tmp_path / "a.tflite", seed=2),
        vision_encoder=fake_tflite(tmp_path / "e.tflite", seed=1),
        embedder=fake_tflite(tmp_path / "emb.tflite", seed=3),
    )
    names = [entry["name"] for entry in task_layout(path)]
    assert names == ["TF_LITE_PREFILL_DECODE", "TOKENIZER_MODEL", "METADATA", "TF_LITE_EMBEDDER",
                     "TF_LITE_VISION_ENCODER", "TF_LITE_VISION_ADAPTER"]
    assert names == [n for n in ENTRY_ORDER if n in names]
    assert all(entry["data_offset"] % 4 == 0 for entry in task_layout(path))


# ---------------------------------------------------------------------------------------------
# LlmParameters encoding, checked against the real protobuf runtime with a descriptor built from
# llm_params.proto / prompt_template.proto (no protoc, no generated code).
# ---------------------------------------------------------------------------------------------


def _message_classes():
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="modelforge_test_llm_params.proto",
                                              package="modelforge_test.odml", syntax="proto3")
    template = file.message_type.add(name="PromptTemplate")
    for number, name in ((1, "session_prefix"), (2, "prompt_prefix"), (3, "prompt_suffix")):
        template.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    templates = file.message_type.add(name="PromptTemplates")
    for number, name in ((1, "user_template"), (2, "model_template"), (3, "system_template")):
        templates.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                            type_name=".modelforge_test.odml.PromptTemplate", proto3_optional=True,
                            oneof_index=number - 1)
        templates.oneof_decl.add(name=f"_{name}")
    params = file.message_type.add(name="LlmParameters")
    enum = params.enum_type.add(name="InputOutputNormalization")
    enum.value.add(name="INPUT_OUTPUT_NORMALIZATION_UNKNOWN", number=0)
    enum.value.add(name="INPUT_OUTPUT_NORMALIZATION_BYTES_TO_UNICODE", number=1)
    params.oneof_decl.add(name="start_token_union")
    params.field.add(name="vocab_size", number=2, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
    params.field.add(name="start_token_id", number=4, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL, oneof_index=0)
    params.field.add(name="stop_tokens", number=5, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    params.field.add(name="start_token", number=6, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=0)
    params.field.add(name="input_output_normalizations", number=7, type=F.TYPE_ENUM, label=F.LABEL_REPEATED,
                     type_name=".modelforge_test.odml.LlmParameters.InputOutputNormalization")
    params.field.add(name="prompt_template", number=8, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                     type_name=".modelforge_test.odml.PromptTemplate")
    oneof = 1
    for number, name in ((11, "user_role_token"), (12, "system_role_token"), (13, "model_role_token"),
                         (14, "end_role_token")):
        params.oneof_decl.add(name=f"_{name}")
        params.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL,
                         proto3_optional=True, oneof_index=oneof)
        oneof += 1
    params.oneof_decl.add(name="_prompt_templates")
    params.field.add(name="prompt_templates", number=17, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                     type_name=".modelforge_test.odml.PromptTemplates", proto3_optional=True, oneof_index=oneof)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("modelforge_test.odml.LlmParameters"))


def _reference_bytes(p: LlmParams) -> bytes:
    """The message as MediaPipe's Python llm_bundler filled it, serialized by protobuf itself."""
    LlmParameters = _message_classes()
    msg = LlmParameters()
    if p.vocab_size:
        msg.vocab_size = p.vocab_size
    msg.start_token = p.start_token
    msg.stop_tokens.extend(p.stop_tokens)
    if p.enable_bytes_to_unicode_mapping:
        msg.input_output_normalizations.append(1)
    if p.system_prompt:
        msg.prompt_template.session_prefix = p.system_prompt
    else:
        if p.prompt_prefix_system:
            msg.prompt_templates.system_template.prompt_prefix = p.prompt_prefix_system
        if p.prompt_suffix_system:
            msg.prompt_templates.system_template.prompt_suffix = p.prompt_suffix_system
    if p.prompt_prefix_user:
        msg.prompt_template.prompt_prefix = p.prompt_prefix_user
        msg.prompt_templates.user_template.prompt_prefix = p.prompt_prefix_user
    if p.prompt_suffix_user:
        msg.prompt_template.prompt_suffix = p.prompt_suffix_user + p.prompt_prefix_model
        msg.prompt_templates.user_template.prompt_suffix = p.prompt_suffix_user
    if p.prompt_prefix_model:
        msg.prompt_templates.model_template.prompt_prefix = p.prompt_prefix_model
    if p.prompt_suffix_model:
        msg.prompt_templates.model_template.prompt_suffix = p.prompt_suffix_model
    for name in ("user_role_token", "system_role_token", "model_role_token", "end_role_token"):
        if getattr(p, name):
            setattr(msg, name, getattr(p, name))
    return msg.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    "params",
    [
        gemma_params(),
        gemma_params(system_prompt="Be brief."),
        LlmParams(start_token="<s>", stop_tokens=("</s>",)),
        LlmParams(
            start_token="<bos>",
            stop_tokens=("<eos>", "<end_of_turn>", "ü"),
            prompt_prefix_user="<start_of_turn>user\n",
            prompt_suffix_user="<end_of_turn>\n",
            prompt_prefix_model="<start_of_turn>model\n",
            prompt_suffix_model="<end_of_turn>\n",
            prompt_prefix_system="<start_of_turn>system\n",
            prompt_suffix_system="<end_of_turn>\n",
            user_role_token="user",
            system_role_token="system",
            model_role_token="model",
            end_role_token="<end_of_turn>",
            enable_bytes_to_unicode_mapping=True,
            vocab_size=262_208,
        ),
    ],
    ids=["gemma", "gemma-system-prompt", "minimal", "everything"],
)
def test_metadata_matches_protobuf_serialization(params):
    assert encode_llm_parameters(params) == _reference_bytes(params)


def test_max_tokens_is_not_serialized():
    assert encode_llm_parameters(gemma_params(max_tokens=4096)) == encode_llm_parameters(gemma_params())


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_rejects_a_file_that_is_not_tflite(tmp_path, tokenizer_model):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(TaskFormatError, match="TFL3"):
        write_task(tmp_path / "x.task", tflite=bogus, tokenizer=tokenizer_model, params=gemma_params())
    assert not (tmp_path / "x.task").exists()


def test_rejects_hf_tokenizer_json(tmp_path):
    with pytest.raises(TaskFormatError, match="SentencePiece"):
        write_task(tmp_path / "x.task", tflite=fake_tflite(tmp_path / "g.tflite"),
                   tokenizer=Path(__file__).parents[2] / "fixtures" / "tiny-medgemma" / "tokenizer.json",
                   params=gemma_params())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"start_token": "<bos>", "stop_tokens": ()}, "stop_tokens"),
        ({"start_token": "<bos>", "stop_tokens": "<eos>"}, "sequence"),
        ({"start_token": "", "stop_tokens": ("<eos>",)}, "start_token"),
        ({"start_token": "<bos>", "stop_tokens": ("<eos>",), "system_prompt": "x", "prompt_prefix_system": "y"},
         "mutually exclusive"),
        ({"start_token": "<bos>", "stop_tokens": ("<eos>",), "max_tokens": 0}, "max_tokens"),
    ],
)
def test_params_validation(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        LlmParams(**kwargs)


def test_no_partial_file_left_on_failure(tmp_path, tokenizer_model, monkeypatch):
    import modelforge.web.taskfile as taskfile

    def broken(path):
        raise TaskFormatError("simulated")

    monkeypatch.setattr(taskfile, "_verify_layout", broken)
    target = tmp_path / "out.task"
    with pytest.raises(TaskFormatError):
        write_task(target, tflite=fake_tflite(tmp_path / "g.tflite"), tokenizer=tokenizer_model, params=gemma_params())
    assert list(tmp_path.glob("*.task*")) == [] and list(tmp_path.glob(".out.task*")) == []


def test_local_headers_carry_real_sizes_and_crc(small_task):
    """zipfile rewrites each local header after streaming; the runtime reads local headers."""
    import zlib

    data = small_task.read_bytes()
    for entry in task_layout(small_task):
        offset = entry["header_offset"]
        (sig, _ver, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = struct.unpack_from("<IHHHHHIIIHH", data, offset)
        assert sig == 0x04034B50 and flags == 0 and method == 0
        assert csize == usize == entry["size"]
        payload = data[entry["data_offset"] : entry["data_offset"] + entry["size"]]
        assert crc == zlib.crc32(payload)


@pytest.mark.parametrize("graph_size", [980, 1001, 5000])
def test_zip64_members_stay_aligned(tmp_path, tokenizer_model, monkeypatch, graph_size):
    """Members over 4 GiB get zip64 local headers (20 more bytes; zipfile already uses them from
    size * 1.05 > limit, so 980 is in that band). Scaled down by lowering the limit."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    path = tmp_path / "z.task"
    write_task(path, tflite=fake_tflite(tmp_path / "g.tflite", size=graph_size), tokenizer=tokenizer_model,
               params=gemma_params())
    layout = task_layout(path)
    assert all(entry["data_offset"] % ALIGNMENT == 0 for entry in layout)
    assert path.read_bytes()[:6] == b"\x00\x00\x00\x00PK"
    assert read_task(path)["TF_LITE_PREFILL_DECODE"] == (tmp_path / "g.tflite").read_bytes()
