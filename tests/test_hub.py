"""modelforge.hub against the real huggingface_hub talking to a fake Hub on 127.0.0.1 (tests/hubserver.py):
no mocks of huggingface_hub, no traffic off the machine."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi
from safetensors.numpy import save_file

from hubserver import FakeHub, fake_hub, git_blob_id  # noqa: F401  (fake_hub is a fixture)
from modelforge import hub
from modelforge.errors import HubError, SourceError
from modelforge.hashing import HashCache

REPO = "org/tiny"
TOKEN = "hf_ModelforgeTestSecret0123456789abcdef"
TINY_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tiny-medgemma"

TENSORS = {
    "model.embed.weight": ((64, 1024), np.float32),  # 256 KiB: bigger than the 100 kB first range read
    "model.norm.weight": ((1024,), np.float16),
    "model.layers.0.index": ((3, 2), np.int64),
}
SHARD2 = {"lm_head.weight": ((8, 16), np.float32)}


def _write_safetensors(path: Path, spec: dict, metadata: dict | None = None) -> None:
    rng = np.random.default_rng(0)
    arrays = {name: rng.standard_normal(shape).astype(dtype) if dtype != np.int64 else np.arange(np.prod(shape)).reshape(shape)
              for name, (shape, dtype) in spec.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path), metadata=metadata)


@pytest.fixture
def repo_dir(tmp_path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "hidden_size": 1024}))
    (root / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    (root / "README.md").write_text("# tiny\n")
    _write_safetensors(root / "model.safetensors", TENSORS, {"format": "pt"})
    _write_safetensors(root / "extra" / "head.safetensors", SHARD2)
    return root


@pytest.fixture
def tiny(fake_hub: FakeHub, repo_dir: Path) -> FakeHub:
    fake_hub.add_repo(REPO, repo_dir)
    return fake_hub


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------- resolve_commit
def test_branch_is_refused_unless_allowed(tiny):
    with pytest.raises(HubError) as caught:
        hub.resolve_commit(REPO, "main")
    message = _one_line(caught.value)
    assert "pin revision to a 40-hex commit" in message
    assert tiny.commit in message  # says where the branch points now
    assert isinstance(caught.value, SourceError)


def test_branch_allowed_gives_the_commit(tiny):
    assert hub.resolve_commit(REPO, "main", allow_branch=True) == tiny.commit
    assert any(r.route == f"/api/models/{REPO}/revision/main" for r in tiny.requests)


def test_pinned_sha_is_checked_once_then_served_from_cache(tiny):
    assert hub.resolve_commit(REPO, tiny.commit.upper()) == tiny.commit
    assert [r.route for r in tiny.requests] == [f"/api/models/{REPO}/revision/{tiny.commit}"]
    listed = hub.list_files(REPO, tiny.commit, None)
    tiny.clear_requests()
    # the cache holds this commit's file list now: a commit never changes, so no need to ask again
    assert hub.resolve_commit(REPO, tiny.commit) == tiny.commit
    assert hub.list_files(REPO, tiny.commit, None) == listed
    assert tiny.requests == []


def test_unknown_revision_and_repo(tiny):
    unknown_sha = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(HubError, match="revision not found"):
        hub.resolve_commit(REPO, unknown_sha)
    with pytest.raises(HubError, match="revision not found"):
        hub.resolve_commit(REPO, "no-such-branch", allow_branch=True)
    with pytest.raises(HubError, match="revision not found"):
        hub.list_files(REPO, unknown_sha, None)
    for call in (
        lambda: hub.resolve_commit("org/missing", tiny.commit),
        lambda: hub.list_files("org/missing", tiny.commit, None),
        lambda: hub.download("org/missing", tiny.commit, [hub.RemoteFile("config.json", 1, None, None)], cache_dir=None),
        lambda: hub.safetensors_headers("org/missing", tiny.commit),
    ):
        with pytest.raises(HubError) as caught:
            call()
        message = _one_line(caught.value)
        assert "org/missing" in message and "repository not found" in message and "HF_TOKEN" in message


def test_invalid_arguments(tiny):
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        hub.resolve_commit("not a repo", tiny.commit)
    with pytest.raises(HubError, match="40-hex commit"):
        hub.list_files(REPO, "main", None)
    with pytest.raises(HubError, match="40-hex commit"):
        hub.download(REPO, "abc123", [], cache_dir=None)


def test_unreachable_hub(fake_hub, monkeypatch):
    fake_hub.stop()  # the port is closed now
    with pytest.raises(HubError, match="cannot reach the Hub") as caught:
        hub.resolve_commit(REPO, "main", allow_branch=True)
    assert "HF_HUB_OFFLINE=1" in _one_line(caught.value)


# ---------------------------------------------------------------------- list_files
def test_list_files_with_lfs_metadata_and_patterns(tiny, repo_dir):
    files = hub.list_files(REPO, tiny.commit, None)
    assert [f.path for f in files] == sorted(
        ["README.md", "config.json", "extra/head.safetensors", "model.safetensors", "tokenizer_config.json"]
    )
    by_path = {f.path: f for f in files}
    weights = by_path["model.safetensors"]
    data = (repo_dir / "model.safetensors").read_bytes()
    assert weights.sha256 == hashlib.sha256(data).hexdigest() and weights.size == len(data) and weights.blob_id is None
    config = by_path["config.json"]
    data = (repo_dir / "config.json").read_bytes()
    assert config.sha256 is None and config.blob_id == git_blob_id(data) and config.size == len(data)

    assert [f.path for f in hub.list_files(REPO, tiny.commit, ["*.safetensors"])] == ["extra/head.safetensors", "model.safetensors"]
    assert [f.path for f in hub.list_files(REPO, tiny.commit, ["*.json", "README.md"])] == [
        "README.md", "config.json", "tokenizer_config.json",
    ]
    assert hub.list_files(REPO, tiny.commit, ["*.bin"]) == []
    listing = [r for r in tiny.requests if r.route.startswith("/api/models/")]
    assert len(listing) == 1 and listing[0].route == f"/api/models/{REPO}/tree/{tiny.commit}"
    assert "recursive=true" in listing[0].path


def test_cached_file_list_is_huggingface_hubs_own(tiny):
    """list_files keeps the list where and how huggingface_hub 2.4.0 keeps it (trees/<commit>.json),
    so its own reader (used by snapshot_download) accepts it."""
    from huggingface_hub._tree_cache import read_tree_cache

    files = hub.list_files(REPO, tiny.commit, None)
    folder = hub.cache_dir_default() / "models--org--tiny"
    entries = read_tree_cache(str(folder), tiny.commit)
    assert entries is not None and sorted(entries) == [f.path for f in files]
    for f in files:
        assert entries[f.path].lfs_sha256 == f.sha256 and (f.blob_id is None or entries[f.path].blob_id == f.blob_id)
    assert (folder / "snapshots").is_dir()  # `hf cache scan` does not see a half-made repo folder


def test_fake_hub_tree_endpoint_matches_listing(tiny):
    """The fake server's tree endpoint, as huggingface_hub's list_repo_tree reads it."""
    tree = list(HfApi(endpoint=tiny.url).list_repo_tree(REPO, revision=tiny.commit, recursive=True, expand=True))
    files = {item.path: item for item in tree if hasattr(item, "blob_id")}
    listed = hub.list_files(REPO, tiny.commit, None)
    assert sorted(files) == [f.path for f in listed]
    for remote in listed:
        lfs = files[remote.path].lfs
        assert (lfs.sha256 if lfs else None) == remote.sha256
    assert "extra" in {item.path for item in tree} - set(files)


# ---------------------------------------------------------------------- download
def test_download_then_reuse_from_cache(tiny, repo_dir):
    files = hub.list_files(REPO, tiny.commit, None)
    seen: dict[str, tuple[int, int]] = {}
    paths = hub.download(REPO, tiny.commit, files, cache_dir=None, progress=lambda p, done, total: seen.__setitem__(p, (done, total)))
    assert set(paths) == {f.path for f in files}
    for f in files:
        assert paths[f.path].read_bytes() == (repo_dir / f.path).read_bytes()
        assert seen[f.path] == (f.size, f.size)
    assert str(paths["config.json"]).startswith(str(hub.cache_dir_default()))
    assert len(tiny.body_requests()) == len(files)
    # LFS content comes from the "CDN" origin, without the Hub token
    assert {r.server for r in tiny.body_requests("model.safetensors")} == {"cdn"}

    tiny.clear_requests()
    again = hub.download(REPO, tiny.commit, files, cache_dir=None)
    assert again == paths
    assert tiny.body_requests() == []
    assert tiny.requests == []  # a commit already in the cache needs no request at all


def test_download_into_explicit_cache_dir_with_a_hash_cache(tiny, tmp_path):
    files = hub.list_files(REPO, tiny.commit, ["config.json", "model.safetensors"])
    hashes = HashCache(tmp_path / "hashes.sqlite")
    paths = hub.download(REPO, tiny.commit, files, cache_dir=tmp_path / "elsewhere", hash_cache=hashes)
    assert paths["config.json"].is_relative_to(tmp_path / "elsewhere")
    assert hashes.lookup(paths["model.safetensors"]) == files[1].sha256  # remembered for the next process
    hashes.close()


def test_download_resumes_after_a_dropped_connection(fake_hub, tmp_path):
    """huggingface_hub 2.4.0 retries a broken transfer in the same call with a Range request from the last
    whole 10 MiB chunk it wrote (bytes of a partial chunk are lost), so the file must be over 10 MiB."""
    root = tmp_path / "big"
    _write_safetensors(root / "big.safetensors", {"w": ((3 * 1024 * 1024 + 1000,), np.float32)})  # ~12 MiB
    fake_hub.add_repo("org/big", root)
    files = hub.list_files("org/big", fake_hub.commit, None)
    chunk = 10 * 1024 * 1024
    fake_hub.drop_connection_once("big.safetensors", after_bytes=chunk + 12345)
    paths = hub.download("org/big", fake_hub.commit, files, cache_dir=None)
    assert paths["big.safetensors"].read_bytes() == (root / "big.safetensors").read_bytes()
    first, second = fake_hub.body_requests("big.safetensors")
    assert first.dropped and first.body_bytes == chunk + 12345 and "range" not in first.headers
    assert second.status == 206 and second.headers["range"] == f"bytes={chunk}-"
    assert second.body_bytes == files[0].size - chunk


@pytest.mark.parametrize("path, what", [("model.safetensors", "sha256"), ("config.json", "git blob id")])
def test_corrupted_file_on_the_server(tiny, path, what):
    files = hub.list_files(REPO, tiny.commit, [path])
    tiny.corrupt(REPO, path)
    with pytest.raises(HubError) as caught:
        hub.download(REPO, tiny.commit, files, cache_dir=None)
    message = _one_line(caught.value)
    assert path in message and what in message and "run again" in message
    # the damaged copy is not left in the cache to be reused by the next run
    snapshot = hub.cache_dir_default() / "models--org--tiny" / "snapshots" / tiny.commit
    assert not (snapshot / path).exists()
    blobs = hub.cache_dir_default() / "models--org--tiny" / "blobs"
    assert not any(blob.name == (files[0].sha256 or files[0].blob_id) for blob in blobs.iterdir())


def test_damaged_cached_file_is_detected(tiny):
    files = hub.list_files(REPO, tiny.commit, ["model.safetensors"])
    paths = hub.download(REPO, tiny.commit, files, cache_dir=None)
    blob = paths["model.safetensors"].resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(HubError, match="model.safetensors has sha256"):
        hub.download(REPO, tiny.commit, files, cache_dir=None)
    assert hub.download(REPO, tiny.commit, files, cache_dir=None)["model.safetensors"].read_bytes() != bytes(data)


# ---------------------------------------------------------------------- offline
def test_offline_with_a_warm_cache(tiny, monkeypatch):
    files = hub.list_files(REPO, tiny.commit, None)
    online = hub.download(REPO, tiny.commit, files, cache_dir=None)
    headers_online = hub.safetensors_headers(REPO, tiny.commit)
    tiny.clear_requests()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.is_offline()
    assert hub.resolve_commit(REPO, tiny.commit) == tiny.commit
    assert hub.list_files(REPO, tiny.commit, None) == files  # from the snapshot: every file was downloaded
    assert hub.download(REPO, tiny.commit, files, cache_dir=None) == online
    assert hub.safetensors_headers(REPO, tiny.commit) == headers_online
    assert tiny.requests == []


def test_offline_with_a_cold_cache(tiny, monkeypatch):
    files = hub.list_files(REPO, tiny.commit, None)
    hub.download(REPO, tiny.commit, [f for f in files if f.path == "config.json"], cache_dir=None)
    tiny.clear_requests()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError) as caught:
        hub.download(REPO, tiny.commit, files, cache_dir=None)
    message = _one_line(caught.value)
    assert "HF_HUB_OFFLINE" in message and "model.safetensors" in message and "README.md" in message
    assert "tokenizer_config.json" in message and message.count("config.json") == 1  # config.json is cached

    with pytest.raises(HubError, match="pin revision to a 40-hex commit"):
        hub.resolve_commit(REPO, "main", allow_branch=True)
    other = "fedcba9876543210fedcba9876543210fedcba98"
    for call in (lambda: hub.resolve_commit(REPO, other), lambda: hub.list_files(REPO, other, None)):
        with pytest.raises(HubError, match="not in the Hugging Face cache"):
            call()
    # the list is cached, the weights are not: their headers cannot be read offline
    with pytest.raises(HubError, match="extra/head.safetensors, model.safetensors, whose tensor headers"):
        hub.safetensors_headers(REPO, tiny.commit)
    assert tiny.requests == []


# ---------------------------------------------------------------------- token hygiene
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def test_token_is_sent_to_the_hub_and_never_shown(tiny, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    tiny.require_token(TOKEN)
    records = _Records()
    loggers = [logging.getLogger(name) for name in ("modelforge", "huggingface_hub")]
    levels = [item.level for item in loggers]
    for item in loggers:
        item.addHandler(records)
        item.setLevel(logging.DEBUG)
    try:
        commit = hub.resolve_commit(REPO, "main", allow_branch=True)
        files = hub.list_files(REPO, commit, None)
        hub.download(REPO, commit, files, cache_dir=None)
        assert "model.safetensors" in hub.safetensors_headers(REPO, commit)
        hub_requests = [r for r in tiny.requests if r.server == "hub"]
        assert hub_requests and all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in hub_requests)
        cdn_requests = [r for r in tiny.requests if r.server == "cdn"]
        assert cdn_requests and all("authorization" not in r.headers for r in cdn_requests)

        errors = []
        for call in (
            lambda: hub.resolve_commit("org/missing", "main", allow_branch=True),
            lambda: hub.resolve_commit(REPO, "no-such-branch", allow_branch=True),
            lambda: hub.resolve_commit(REPO, "main"),
            lambda: hub.list_files(REPO, "0" * 40, None),
        ):
            with pytest.raises(HubError) as caught:
                call()
            errors.append(caught.value)
        fresh = hub.list_files(REPO, commit, ["README.md"])
        tiny.require_token("hf_SomeOtherTokenTheServerWants00000")  # the sent token is now rejected (401)
        monkeypatch.setenv("HF_HOME", str(Path(hub.cache_dir_default()).parent.parent / "cold-home"))
        for call in (
            lambda: hub.resolve_commit(REPO, "main", allow_branch=True),
            lambda: hub.list_files(REPO, commit, None),
            lambda: hub.download(REPO, commit, fresh, cache_dir=None),
            lambda: hub.safetensors_headers(REPO, commit),
        ):
            with pytest.raises(HubError) as caught:
                call()
            assert "HF_TOKEN" in str(caught.value) or "credentials" in str(caught.value)
            errors.append(caught.value)
    finally:
        for item, level in zip(loggers, levels):
            item.removeHandler(records)
            item.setLevel(level)
    for error in errors:
        assert TOKEN not in "".join(traceback.format_exception(error))
        assert TOKEN not in repr(error.args)
    assert records.lines and not any(TOKEN in line for line in records.lines)


def test_a_required_token_that_is_missing(tiny):
    tiny.require_token(TOKEN)
    with pytest.raises(HubError, match="HF_TOKEN"):
        hub.resolve_commit(REPO, "main", allow_branch=True)


def test_redaction_of_token_shaped_text(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "plain-secret-value")
    assert hub._redact("a plain-secret-value b hf_abcdefghijklmnop\nc") == "a *** b hf_*** c"


# ---------------------------------------------------------------------- safetensors headers
def test_safetensors_headers_without_fetching_weights(tiny, repo_dir):
    headers = hub.safetensors_headers(REPO, tiny.commit)
    assert set(headers) == {"model.safetensors", "extra/head.safetensors"}
    main = headers["model.safetensors"]
    assert main["__metadata__"] == {"format": "pt"}
    for name, (shape, dtype) in TENSORS.items():
        assert main[name]["shape"] == list(shape)
        assert main[name]["dtype"] == {np.float32: "F32", np.float16: "F16", np.int64: "I64"}[dtype]
    assert headers["extra/head.safetensors"]["lm_head.weight"] == {"dtype": "F32", "shape": [8, 16], "data_offsets": [0, 512]}
    # same as the header in the file itself
    raw = (repo_dir / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + length]) == main

    size = (repo_dir / "model.safetensors").stat().st_size
    reads = tiny.body_requests("model.safetensors")
    assert reads and all("range" in r.headers for r in reads)
    assert sum(r.body_bytes for r in reads) < size
    assert not (hub.cache_dir_default() / "models--org--tiny" / "blobs").exists()  # nothing was downloaded


def test_tiny_medgemma_fixture_served_as_a_repo(fake_hub):
    if not (TINY_FIXTURE / "config.json").exists():
        pytest.skip("fixtures/tiny-medgemma is not there yet")
    fake_hub.add_repo("google/tiny-medgemma", TINY_FIXTURE)
    commit = hub.resolve_commit("google/tiny-medgemma", fake_hub.commit)
    files = hub.list_files("google/tiny-medgemma", commit, ["*.json", "*.safetensors"])
    headers = hub.safetensors_headers("google/tiny-medgemma", commit)
    assert set(headers) == {f.path for f in files if f.path.endswith(".safetensors")} != set()
    index = json.loads((TINY_FIXTURE / "model.safetensors.index.json").read_text()) if (TINY_FIXTURE / "model.safetensors.index.json").exists() else None
    if index:
        names = {name for header in headers.values() for name in header if name != "__metadata__"}
        assert names == set(index["weight_map"])


# ---------------------------------------------------------------------- module hygiene
def test_hub_module_imports_neither_torch_nor_transformers():
    code = "import sys, modelforge.hub; bad = {'torch', 'transformers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
