"""Shared fixtures: every test runs with an isolated environment (HF cache, store, offline mode),
and session-scoped builds of the tiny manifests are shared where building is slow."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
TINY = ROOT / "fixtures" / "tiny-medgemma"
REFERENCE = ROOT / "src" / "modelforge" / "reference_data"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """No test may touch the user's caches or reach a hub: offline, private HF home and store."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MODELFORGE_STORE", str(home / "store"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    # No test may push to or pull from a developer's shared cache, or sign with their key.
    monkeypatch.delenv("MODELFORGE_CACHE", raising=False)
    monkeypatch.setenv("MODELFORGE_SIGNING_KEY", str(home / "no-signing-key"))
    for name in ("MODELFORGE_PROVENANCE_KEY", "MODELFORGE_PROVENANCE_PUBLIC_KEY", "MODELFORGE_BUILDER_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tmp_project(tmp_path):
    """A copy of the project's manifests, fixtures and lock dir in tmp, so builds write nothing in the repo."""
    return copy_project(tmp_path)


MANIFEST_LITERTLM = "tiny-medgemma-litertlm.yaml"


def copy_project(base: Path) -> Path:
    for name in ("manifests", "fixtures"):
        shutil.copytree(ROOT / name, base / name)
    (base / "lock").mkdir()
    return base


@pytest.fixture(scope="session")
def litertlm_store(tmp_path_factory):
    """The store of the shared litertlm build. CI builds the README's first command before the tests
    (to prove it leaves `git status` clean) and names its store in MODELFORGE_TEST_SEED_STORE: the
    session starts from a copy of it instead of building the same steps a second time."""
    store = tmp_path_factory.mktemp("litertlm-store")
    seed = os.environ.get("MODELFORGE_TEST_SEED_STORE")
    if seed:
        shutil.copytree(seed, store, symlinks=True, dirs_exist_ok=True, ignore=shutil.ignore_patterns("tmp", "locks"))
    return store


@pytest.fixture(scope="session")
def litertlm_build(tmp_path_factory, litertlm_store):
    """One real build of the tiny litertlm manifest (litert-torch exports, quantization, packaging,
    parity, web bundle) shared by the litertlm and web tests: about two minutes."""
    from modelforge import api

    project = copy_project(tmp_path_factory.mktemp("litertlm-project"))
    return api.build(project / "manifests" / MANIFEST_LITERTLM, store_dir=litertlm_store)
