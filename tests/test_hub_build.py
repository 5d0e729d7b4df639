"""Building a Hub-pinned manifest for real: huggingface_hub against the fake Hub on 127.0.0.1
serving the tiny model, then offline from the cache."""

from __future__ import annotations

import huggingface_hub.constants
import pytest

from conftest import TINY
from hubserver import fake_hub  # noqa: F401  (fixture)
from modelforge import api
from modelforge.errors import HubError
from modelforge.hashing import hash_file


def _hub_manifest(tmp_project, commit):
    manifest = tmp_project / "manifests" / "tiny-from-hub.yaml"
    text = (tmp_project / "manifests" / "tiny-medgemma-text-only.yaml").read_text()
    text = text.replace("name: tiny-medgemma-text-only", "name: tiny-from-hub").replace(
        "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n",
        f"source:\n  kind: hub\n  repo: example/tiny-medgemma\n  revision: {commit}\n",
    )
    manifest.write_text(text)
    return manifest


def test_build_from_the_hub_then_offline_from_the_cache(fake_hub, tmp_project, tmp_path, monkeypatch):  # noqa: F811
    fake_hub.add_repo("example/tiny-medgemma", TINY)
    manifest = _hub_manifest(tmp_project, fake_hub.commit)
    first = api.build(manifest, store_dir=tmp_path / "store")
    assert "text.weights" in first.ran
    from modelforge.lock import read_lock

    lock = read_lock(first.project.lock_path)
    assert lock.source.kind == "hub" and lock.source.revision == fake_hub.commit
    assert lock.source.files["model-00001-of-00002.safetensors"].sha256 == hash_file(TINY / "model-00001-of-00002.safetensors")
    assert api.verify(first.project.lock_path) == []

    # Offline, in a fresh store: everything comes from the HF cache, not one request is made.
    served = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    second = api.build(manifest, store_dir=tmp_path / "store2", out=tmp_path / "out2")
    assert len(fake_hub.requests) == served
    for name in lock.targets["text"].files:
        assert (second.out_dir / "text" / name).read_bytes() == (first.out_dir / "text" / name).read_bytes()


def test_plan_reads_headers_without_downloading_weights(fake_hub, tmp_project, tmp_path):  # noqa: F811
    fake_hub.add_repo("example/tiny-medgemma", TINY)
    manifest = _hub_manifest(tmp_project, fake_hub.commit)
    report = api.plan(manifest, store_dir=tmp_path / "store")
    assert report.plan.facts["coverage"]["tensors"] == 51
    weights = [r for r in fake_hub.body_requests() if (r.file or "").endswith(".safetensors")]
    assert weights, "the headers come from the weight files"
    assert all(r.headers.get("range") for r in weights), "only range requests may touch weight files"
    for request in weights:  # huggingface_hub reads the first 100 kB: the header, never the whole shard
        assert request.body_bytes < (TINY / request.file).stat().st_size / 2, request.file


def test_offline_with_a_cold_cache_is_a_clear_error(fake_hub, tmp_project, tmp_path, monkeypatch):  # noqa: F811
    fake_hub.add_repo("example/tiny-medgemma", TINY)
    manifest = _hub_manifest(tmp_project, fake_hub.commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline"):
        api.build(manifest, store_dir=tmp_path / "store")
