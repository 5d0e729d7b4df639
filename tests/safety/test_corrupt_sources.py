"""Corrupt and hostile source checkpoints, generated here from the tiny fixture: each is refused
before anything is planned (or, for NaN weights, while the bytes are copied) with a SourceError
(exit 4) whose one line names the file and the tensor or key. Never exit 0, never exit 70
("a modelforge bug"), never a hang on a FIFO."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

import numpy
import pytest
import yaml

from checkpoint_support import read_shard, tensor_layout, write_shard
from modelforge import api
from modelforge.errors import SourceError
from modelforge.safetensors_io import read_header
from modelforge.source_checks import FiniteScanner
from safety_support import TEXT_ONLY, cli, make_project

SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"
INDEX = "model.safetensors.index.json"
K_PROJ = "language_model.model.layers.0.self_attn.k_proj.weight"
V_PROJ = "language_model.model.layers.0.self_attn.v_proj.weight"
DOWN_PROJ = "language_model.model.layers.0.mlp.down_proj.weight"


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "project")


def _source(project: Path) -> Path:
    return project / "fixtures" / "tiny-medgemma"


def _manifest(project: Path) -> Path:
    return project / "manifests" / f"{TEXT_ONLY}.yaml"


def _edit_header(source: Path, shard: str, edit) -> None:
    header, data = read_shard(source / shard)
    edit(header)
    write_shard(source / shard, header, data)


def _edit_json(source: Path, name: str, text) -> None:
    path = source / name
    content = path.read_text()
    path.unlink()
    path.write_text(text(content))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---------------------------------------------------------------------------------------- corruptions
# name → (damage(source dir), pattern the one-line message must match: the file and the tensor or key)


def _dtype_f99(source):
    _edit_header(source, SHARD1, lambda header: header[K_PROJ].update(dtype="F99"))


def _float_shape(source):
    def edit(header):
        header[K_PROJ]["shape"] = [float(dimension) for dimension in header[K_PROJ]["shape"]]

    _edit_header(source, SHARD1, edit)


def _overlap(source):
    # The k_proj/v_proj case: v_proj's offsets point at k_proj's bytes.
    def edit(header):
        assert header[K_PROJ]["shape"] == header[V_PROJ]["shape"]
        header[V_PROJ]["data_offsets"] = header[K_PROJ]["data_offsets"]

    _edit_header(source, SHARD1, edit)


def _duplicate_name(source):
    header, data = read_shard(source / SHARD1)
    text = json.dumps(header, separators=(",", ":"))
    # One entry of the header renamed to its neighbour's name: the same tensor name twice.
    text = text.replace(json.dumps(V_PROJ), json.dumps(K_PROJ), 1)
    write_shard(source / SHARD1, text, data)


def _tensor_in_two_shards(source):
    header, data = read_shard(source / SHARD2)
    first = read_shard(source / SHARD1)[0]
    header[K_PROJ] = dict(first[K_PROJ])
    size = first[K_PROJ]["data_offsets"][1] - first[K_PROJ]["data_offsets"][0]
    header[K_PROJ]["data_offsets"] = [len(data), len(data) + size]
    write_shard(source / SHARD2, header, data + bytes(size))


def _header_list(source):
    _, data = read_shard(source / SHARD1)
    write_shard(source / SHARD1, [], data)


def _header_length_past_end(source):
    header, data = read_shard(source / SHARD1)
    write_shard(source / SHARD1, header, data, length=(source / SHARD1).stat().st_size * 2)


def _truncated(source):
    raw = (source / SHARD1).read_bytes()
    (source / SHARD1).unlink()
    (source / SHARD1).write_bytes(raw[:-4])


def _gap_at_end(source):
    raw = (source / SHARD1).read_bytes()
    (source / SHARD1).unlink()
    (source / SHARD1).write_bytes(raw + bytes(8))


def _metadata_not_strings(source):
    _edit_header(source, SHARD1, lambda header: header.update({"__metadata__": {"format": 1}}))


def _extra_entry_key(source):
    _edit_header(source, SHARD1, lambda header: header[K_PROJ].update(offsets_too=[0, 0]))


def _nan_in_header(source):
    header, data = read_shard(source / SHARD1)
    text = json.dumps(header, separators=(",", ":")).replace('"format":"pt"', '"format":NaN')
    write_shard(source / SHARD1, text, data)


def _deep_config(source):
    _edit_json(source, "config.json", lambda text: text.replace('"text_config": {', f'"deep": {_nested(100)}, "text_config": {{', 1))


def _very_deep_config(source):
    # Deeper than Python's recursion limit: once an internal error (exit 70).
    _edit_json(source, "config.json", lambda text: text.replace('"text_config": {', f'"deep": {_nested(100_000)}, "text_config": {{', 1))


def _nan_in_config(source):
    _edit_json(source, "config.json", lambda text: re.sub(r'"rms_norm_eps": [^,\n]+', '"rms_norm_eps": NaN', text, count=1))


def _overflow_in_config(source):
    _edit_json(source, "config.json", lambda text: re.sub(r'"rms_norm_eps": [^,\n]+', '"rms_norm_eps": 1e999', text, count=1))


def _infinity_in_generation_config(source):
    _edit_json(source, "generation_config.json", lambda text: text.replace("{", '{"temperature": -Infinity,', 1))


def _duplicate_key_in_config(source):
    _edit_json(source, "config.json", lambda text: text.replace('"text_config": {', '"text_config": {"hidden_size": 1, ', 1))


def _duplicate_key_in_tokenizer_config(source):
    _edit_json(source, "tokenizer_config.json", lambda text: text.replace("{", '{"model_max_length": 1, "model_max_length": 2,', 1))


def _config_not_object(source):
    _edit_json(source, "config.json", lambda text: "[" + text + "]")


def _config_not_utf8(source):
    (source / "config.json").unlink()
    (source / "config.json").write_bytes(b'{"a": "\xff"}')


def _auto_map_in_config(source):
    _edit_json(source, "config.json", lambda text: text.replace("{", '{"auto_map": {"AutoConfig": "evil.EvilConfig"}, ', 1))


def _auto_map_in_tokenizer_config(source):
    _edit_json(source, "tokenizer_config.json", lambda text: text.replace("{", '{"auto_map": {"AutoTokenizer": ["evil.EvilTokenizer", null]}, ', 1))


def _fifo_shard(source):
    (source / SHARD2).unlink()
    os.mkfifo(source / SHARD2)


def _directory_shard(source):
    (source / SHARD2).unlink()
    (source / SHARD2).mkdir()
    (source / SHARD2 / "x").write_text("x")


def _fifo_carried(source):
    (source / "tokenizer.model").unlink()
    os.mkfifo(source / "tokenizer.model")


def _device_carried(source):
    (source / "tokenizer.model").unlink()
    os.symlink("/dev/zero", source / "tokenizer.model")


def _symlink_escape(source):
    # tokenizer.model → a system-like file outside the source directory.
    outside = source.parent.parent / "outside" / "passwd"
    outside.parent.mkdir()
    outside.write_text("root:x:0:0:root:/root:/bin/bash\n")
    (source / "tokenizer.model").unlink()
    os.symlink(outside, source / "tokenizer.model")


def _symlink_escape_relative(source):
    (source / "special_tokens_map.json").unlink()
    os.symlink("../../manifests/../fixtures/../lock/../manifests/tiny-medgemma-text-only.yaml", source / "special_tokens_map.json")


def _index_wrong_shard(source):
    def text(content):
        index = json.loads(content)
        index["weight_map"][K_PROJ] = SHARD2
        return json.dumps(index)

    _edit_json(source, INDEX, text)


def _index_lacks_tensor(source):
    def text(content):
        index = json.loads(content)
        del index["weight_map"][V_PROJ]
        return json.dumps(index)

    _edit_json(source, INDEX, text)


def _index_names_missing_shard(source):
    def text(content):
        index = json.loads(content)
        index["weight_map"]["language_model.model.ghost.weight"] = "model-00003-of-00003.safetensors"
        return json.dumps(index)

    _edit_json(source, INDEX, text)


def _index_without_weight_map(source):
    _edit_json(source, INDEX, lambda content: '{"metadata": {}}')


CORRUPTIONS = {
    "dtype F99": (_dtype_f99, rf"{SHARD1}: tensor '{re.escape(K_PROJ)}' has dtype 'F99'"),
    "float shape": (_float_shape, rf"{SHARD1}: tensor '{re.escape(K_PROJ)}' has shape \[\d+\.0, \d+\.0\]"),
    "overlapping offsets": (_overlap, rf"{SHARD1}: tensor '{re.escape(V_PROJ)}' .* overlaps tensor '{re.escape(K_PROJ)}'"),
    "duplicate tensor name": (_duplicate_name, rf"{SHARD1}: the top level of the safetensors header repeats the key '{re.escape(K_PROJ)}'"),
    "tensor in two shards": (_tensor_in_two_shards, rf"{SHARD2}: tensor '{re.escape(K_PROJ)}' is also in {SHARD1}"),
    "header is a list": (_header_list, rf"{SHARD1}: the safetensors header is a JSON list, not an object"),
    "header length past the end": (_header_length_past_end, rf"{SHARD1}: safetensors header length \d+ runs past the end"),
    "truncated data": (_truncated, rf"{SHARD1}: the data area .* runs past the end of the file"),
    "bytes after the last tensor": (_gap_at_end, rf"{SHARD1}: the data area .* leaves 8 bytes after the last tensor"),
    "metadata not strings": (_metadata_not_strings, rf"{SHARD1}: the header's __metadata__ is not a map of strings"),
    "extra key in an entry": (_extra_entry_key, rf"{SHARD1}: tensor '{re.escape(K_PROJ)}' has header entry \[.*offsets_too.*\], not exactly"),
    "NaN literal in a header": (_nan_in_header, rf"{SHARD1}: key '__metadata__.format' of the safetensors header is NaN"),
    "deep config.json": (_deep_config, r"config.json: key 'deep(\[0\]){63}' of the file nests deeper than 64 levels"),
    "very deep config.json": (_very_deep_config, r"config.json: the file nests deeper than 64 levels"),
    "NaN in config.json": (_nan_in_config, r"config.json: key 'text_config.rms_norm_eps' of the file is NaN"),
    "overflow in config.json": (_overflow_in_config, r"config.json: key 'text_config.rms_norm_eps' of the file is 1e999"),
    "Infinity in generation_config.json": (_infinity_in_generation_config, r"generation_config.json: key 'temperature' of the file is -Infinity"),
    "duplicate key in config.json": (_duplicate_key_in_config, r"config.json: key 'text_config' of the file repeats the key 'hidden_size'"),
    "duplicate key in tokenizer_config.json": (_duplicate_key_in_tokenizer_config, r"tokenizer_config.json: the top level of the file repeats the key 'model_max_length'"),
    "config.json not an object": (_config_not_object, r"config.json: holds a JSON list, not an object"),
    "config.json not UTF-8": (_config_not_utf8, r"config.json: the file is not UTF-8 text"),
    "auto_map in config.json": (_auto_map_in_config, r"config.json: has the key 'auto_map', which makes transformers import Python code"),
    "auto_map in tokenizer_config.json": (_auto_map_in_tokenizer_config, r"tokenizer_config.json: has the key 'auto_map'"),
    "FIFO shard": (_fifo_shard, rf"{SHARD2}: is a FIFO \(named pipe\), not a regular file"),
    "directory shard": (_directory_shard, rf"{SHARD2}: is a directory, not a regular file"),
    "FIFO carried file": (_fifo_carried, r"tokenizer.model: is a FIFO \(named pipe\), not a regular file"),
    "device carried file": (_device_carried, r"tokenizer.model: is a symlink to /dev/zero, outside the source directory"),
    "symlink out of the source": (_symlink_escape, r"tokenizer.model: is a symlink to .*/outside/passwd, outside the source directory"),
    "relative symlink out of the source": (_symlink_escape_relative, r"special_tokens_map.json: is a symlink to .*/manifests/tiny-medgemma-text-only.yaml, outside"),
    "index maps a tensor to the wrong shard": (_index_wrong_shard, rf"{INDEX}: tensor '{re.escape(K_PROJ)}' is mapped to {SHARD2}, which does not hold it"),
    "index lacks a tensor": (_index_lacks_tensor, rf"{INDEX}: tensor '{re.escape(V_PROJ)}' of {SHARD1} is missing from the weight_map"),
    "index names a missing shard": (_index_names_missing_shard, rf"{INDEX}: tensor 'language_model.model.ghost.weight' is mapped to model-00003-of-00003.safetensors, which is not among"),
    "index without weight_map": (_index_without_weight_map, rf"{INDEX}: has no weight_map"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_a_corrupt_source_is_refused_before_planning_naming_the_file_and_the_tensor_or_key(project, case):
    damage, pattern = CORRUPTIONS[case]
    damage(_source(project))
    with pytest.raises(SourceError, match=pattern) as caught:
        api.plan(_manifest(project))
    assert "\n" not in str(caught.value)


CLI_CASES = ["header is a list", "very deep config.json", "auto_map in config.json", "FIFO shard", "overlapping offsets", "symlink out of the source", "NaN in config.json"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_the_cli_exits_4_with_one_line_for_a_corrupt_source_and_writes_nothing(project, case):
    damage, pattern = CORRUPTIONS[case]
    damage(_source(project))
    result = cli("build", str(_manifest(project)), cwd=project, timeout=120)
    assert result.returncode == 4, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), result.stderr
    assert "modelforge bug" not in result.stderr
    assert not (project / "dist").exists() and not list((project / "lock").iterdir())


def test_links_inside_the_source_and_a_hub_snapshot_layout_are_accepted(project, tmp_path):
    source = _source(project)
    tensors = api.plan(_manifest(project)).plan.facts["coverage"]["tensors"]
    # The Hugging Face cache's layout: snapshots/<commit>/<file> → ../../blobs/<hash>.
    repo = tmp_path / "hub" / "models--google--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for index, path in enumerate(sorted(source.iterdir())):
        blob = repo / "blobs" / f"{index:064x}"
        blob.write_bytes(path.read_bytes())
        os.symlink(os.path.relpath(blob, snapshot), snapshot / path.name)
    report = api.plan(_manifest(project), source_dir=snapshot)
    assert report.plan.facts["coverage"]["tensors"] == tensors
    # A link from one file of the source to another inside it.
    os.makedirs(source / "sub")
    os.replace(source / "tokenizer.model", source / "sub" / "real.model")
    os.symlink("sub/real.model", source / "tokenizer.model")
    assert api.plan(_manifest(project)).plan.facts["coverage"]["tensors"] == tensors


# ------------------------------------------------------------------------------------- weight values


def _poison(source: Path, tensor: str, value: float, position: int = 5) -> None:
    header, data = read_shard(source / SHARD1)
    begin = header[tensor]["data_offsets"][0] + position * 4
    data = data[:begin] + struct.pack("<f", value) + data[begin + 4 :]
    write_shard(source / SHARD1, header, data)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_by_default_naming_the_tensor(project, tmp_path, value):
    _poison(_source(project), DOWN_PROJ, value)
    result = cli("build", str(_manifest(project)), "--store", str(tmp_path / "store"), cwd=project, timeout=120)
    assert result.returncode == 4, result.stderr
    assert re.search(rf"error: {SHARD1}: tensor '{re.escape(DOWN_PROJ)}' \(F32\) holds NaN or infinity \(element 5\); .*non_finite_weights: allow", result.stderr), result.stderr
    assert "modelforge bug" not in result.stderr
    assert not list((project / "lock").iterdir())


def test_non_finite_weights_ship_under_the_allow_policy_and_the_policy_is_part_of_the_step_key(project, tmp_path):
    from safetensors.numpy import load_file

    from modelforge.plan import compute_keys

    _poison(_source(project), DOWN_PROJ, math.nan)
    manifest = _manifest(project)
    refused = api.plan(manifest, store_dir=tmp_path / "store")
    with pytest.raises(SourceError, match=rf"{SHARD1}: tensor '{re.escape(DOWN_PROJ)}' \(F32\) holds NaN"):
        api.build(manifest, store_dir=tmp_path / "store")
    data = yaml.safe_load(manifest.read_text())
    data["source"]["non_finite_weights"] = "allow"
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    allowed = api.plan(manifest, store_dir=tmp_path / "store")
    before, after = compute_keys(refused.plan, refused.toolchain), compute_keys(allowed.plan, allowed.toolchain)
    assert before["text.weights"]["key"] != after["text.weights"]["key"]
    assert before["config"]["key"] == after["config"]["key"]
    result = api.build(manifest, store_dir=tmp_path / "store")
    assert "text.weights" in result.ran
    arrays = {}
    for path in (result.out_dir / "text").glob("*.safetensors"):
        arrays.update(load_file(path))
    assert numpy.isnan(arrays["model.layers.0.mlp.down_proj.weight"].reshape(-1)[5])
    assert numpy.isfinite(arrays["model.layers.0.self_attn.k_proj.weight"]).all()


def _float_bits(dtype: str, values: numpy.ndarray) -> bytes:
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F64":
        return values.astype("<f8").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    if dtype == "BF16":  # the upper half of a float32
        return (values.astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    if dtype == "C64":
        return numpy.stack([values, numpy.zeros_like(values)]).T.astype("<f4").tobytes()
    raise AssertionError(dtype)


@pytest.mark.parametrize("dtype", ["F32", "F64", "F16", "BF16", "C64"])
@pytest.mark.parametrize("piece", [1, 3, 7, 4096])
def test_the_scanner_finds_nan_and_infinity_in_every_float_dtype_however_the_bytes_are_cut(dtype, piece):
    rng = numpy.random.default_rng(0)
    values = rng.standard_normal(301).astype("f4")
    # A 3-byte integer tensor first, so that the float tensor starts at an odd position.
    clean = [("s", "i", "U8", 0, 3)]
    stream = bytes(3)
    payload = _float_bits(dtype, values)
    tensors = clean + [("s", "w", dtype, 3, 3 + len(payload))]
    for bad_value, where in [(math.nan, 0), (math.inf, 150), (-math.inf, 300)]:
        poisoned = values.copy()
        poisoned[where] = bad_value
        data = stream + _float_bits(dtype, poisoned)
        scanner = FiniteScanner(tensors)
        with pytest.raises(SourceError, match=rf"s: tensor 'w' \({dtype}\) holds NaN or infinity \(element {where}\)"):
            for start in range(0, len(data), piece):
                scanner.feed(start, memoryview(data[start : start + piece]))
    scanner = FiniteScanner(tensors)
    data = stream + payload
    for start in range(0, len(data), piece):
        scanner.feed(start, memoryview(data[start : start + piece]))


@pytest.mark.parametrize(("dtype", "bad", "good"), [
    ("F8_E5M2", 0x7C, 0x7B), ("F8_E5M2", 0xFF, 0x80), ("F8_E4M3", 0x7F, 0x7E), ("F8_E4M3", 0xFF, 0xFE),
    ("F8_E4M3FNUZ", 0x80, 0x7F), ("F8_E5M2FNUZ", 0x80, 0xFF), ("F8_E8M0", 0xFF, 0xFE),
])
def test_the_scanner_knows_the_nan_codes_of_the_8_bit_floats(dtype, bad, good):
    scanner = FiniteScanner([("s", "w", dtype, 0, 4)])
    scanner.feed(0, memoryview(bytes([good] * 4)))
    with pytest.raises(SourceError, match=rf"tensor 'w' \({dtype}\) holds NaN or infinity \(element 2\)"):
        FiniteScanner([("s", "w", dtype, 0, 4)]).feed(0, memoryview(bytes([good, good, bad, good])))


def test_integer_tensors_are_not_scanned():
    FiniteScanner([("s", "w", "I32", 0, 8), ("s", "b", "U16", 8, 12)]).feed(0, memoryview(b"\xff" * 12))


# ---------------------------------------------------------------------------------- valid sources


def _recast(source: Path, dtype: str) -> None:
    """Rewrite every shard of the fixture as dtype (float32 values converted), index unchanged."""
    for shard in (SHARD1, SHARD2):
        header, data = read_shard(source / shard)
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            values = numpy.frombuffer(data[begin:end], dtype="<f4")
            tensors[name] = (dtype, entry["shape"], _float_bits(dtype, values))
        new_header, new_data = tensor_layout(tensors)
        new_header["__metadata__"] = header["__metadata__"]
        write_shard(source / shard, new_header, new_data)
    # The config says what the weights are, as on the Hub (the architecture check holds the output to it).
    config_path = source / "config.json"
    config = json.loads(config_path.read_text())
    torch_dtype = {"F16": "float16", "BF16": "bfloat16"}[dtype]
    for section in (config, config.get("text_config", {}), config.get("vision_config", {})):
        for key in ("torch_dtype", "dtype"):
            if key in section:
                section[key] = torch_dtype
    config_path.write_text(json.dumps(config, indent=2) + "\n")


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_valid_checkpoints_still_build_and_the_reference_parser_loads_them(project, tmp_path, dtype):
    import safetensors

    if dtype != "F32":
        _recast(_source(project), dtype)
    result = api.build(_manifest(project), store_dir=tmp_path / "store")
    assert result.ran
    names = []
    for path in sorted((result.out_dir / "text").glob("*.safetensors")):
        loaded = safetensors.deserialize(path.read_bytes())
        assert {tensor["dtype"].upper() for _, tensor in loaded} <= {dtype, dtype.replace("BF16", "BFLOAT16")}
        names += [name for name, _ in loaded]
    assert len(names) == result.plan.facts["coverage"]["kept"]
    assert api.build(_manifest(project), store_dir=tmp_path / "store").ran == []


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_validating_a_shard_reads_its_header_only(tmp_path):
    # A 1 GiB tensor in a sparse file: validation must not read its data.
    size = 1 << 30
    header, _ = tensor_layout({"big": ("F32", [size // 4], b""), "small": ("U8", [4], b"")})
    header["big"]["data_offsets"] = [0, size]
    header["small"]["data_offsets"] = [size, size + 4]
    path = tmp_path / "big.safetensors"
    write_shard(path, header, b"")
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size + size + 4)
    before = _bytes_read()
    tensors, _ = read_header(path)
    assert _bytes_read() - before < (1 << 16)
    assert tensors["big"].nbytes == size


def test_a_carried_json_file_checked_once_is_checked_again_when_its_content_changes(project, tmp_path):
    # Large carried JSON files are validated once per content (remembered by sha256 in the store).
    store = tmp_path / "store"
    api.plan(_manifest(project), store_dir=store)
    api.plan(_manifest(project), store_dir=store)
    _duplicate_key_in_tokenizer_config(_source(project))
    with pytest.raises(SourceError, match=r"tokenizer_config.json: the top level of the file repeats the key 'model_max_length'"):
        api.plan(_manifest(project), store_dir=store)
