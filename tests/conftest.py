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


# Under pytest-xdist (`-n 2 --dist loadgroup`, as .ci/run runs the suite) a group of modules runs on
# one worker, so that a session or module fixture is built once: every module with a test over the
# tiny litertlm build (or a store made from it: LITERTLM_FIXTURES) in one group, the two modules
# over multi-GB files in another (never both at once in memory), every other module on its own.
# xdist's own loadgroup rewrites node ids, which pytest 9 ignores, so the scheduler below groups
# by module; tests/test_ci_groups.py checks that LITERTLM_MODULES lists every such module.
LITERTLM_FIXTURES = {"litertlm_build", "litertlm_store", "litertlm_second_build", "litertlm_baseline", "onnx_store", "tiny_web_bundle"}
LITERTLM_MODULES = {
    "tests/safety/test_crash.py", "tests/test_disk.py", "tests/test_image_attention.py", "tests/test_litertlm.py", "tests/test_lock_figures.py",
    "tests/test_onnx.py", "tests/test_store_budget.py", "tests/web/test_browser.py",
    "tests/web/test_fidelity.py", "tests/web/test_limits.py", "tests/web/test_streamed_weights.py",
}
LARGE_MODULES = {"tests/test_large_export.py", "tests/web/test_large_model.py"}


def module_group(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return "litertlm" if module in LITERTLM_MODULES else "large" if module in LARGE_MODULES else module


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid)

    return ModuleGroups(config, log)


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


def session_uses(request, fixture: str) -> bool:
    """Whether a test of this session asks for `fixture`: a module may then take the steps it needs
    from that fixture's store instead of building them again, and builds them itself when run alone."""
    return any(fixture in item.fixturenames for item in request.session.items)


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


@pytest.fixture(scope="session")
def litertlm_second_store(tmp_path_factory):
    return tmp_path_factory.mktemp("litertlm-second-store")


@pytest.fixture(scope="session")
def litertlm_second_build(tmp_path_factory, litertlm_build, litertlm_second_store):
    """The same manifest built a second time, in another project and an empty store: what the
    byte-identity tests compare with litertlm_build (test_onnx's takes its onnx target from here)."""
    from modelforge import api

    project = copy_project(tmp_path_factory.mktemp("litertlm-second-project"))
    return api.build(project / "manifests" / MANIFEST_LITERTLM, store_dir=litertlm_second_store)
