"""A manifest can do no more than build: no pickle is taken (let alone loaded) unless the manifest
opts in with source.allow_pickle, trust_remote_code can only be false, the opt-ins enter the
digest and the lock only when set (so adding them changed no existing lock), and a Hub token never
reaches the lock, the store, the output or the CLI's output (tests/test_hub.py covers its errors)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from hubserver import fake_hub  # noqa: F401  (fixture)
from modelforge import api
from modelforge.errors import ManifestError
from modelforge.lock import read_lock
from modelforge.manifest import load_manifest, manifest_digest
from safety_support import ROOT, TEXT_ONLY, cli, make_project

TOKEN = "hf_SafetySentinelTokenDoNotLeak0123456789"


class _Payload:
    """Unpickling this creates a file: the proof that nothing ever unpickles a source file."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (Path.touch, (self.sentinel,))


def _with_pickle(project: Path, allow: bool) -> Path:
    manifest = project / "manifests" / f"{TEXT_ONLY}.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["source"]["files"] = [*data["source"]["files"], "*.bin"]
    if allow:
        data["source"]["allow_pickle"] = True
    data["files"]["drop"] = [*data["files"]["drop"], "training_args.bin"]
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    return manifest


def test_pickle_files_are_refused_unless_the_manifest_opts_in_and_are_never_unpickled(tmp_path):
    project = make_project(tmp_path / "project")
    sentinel = tmp_path / "unpickled"
    (project / "fixtures" / "tiny-medgemma" / "training_args.bin").write_bytes(pickle.dumps(_Payload(sentinel)))
    refused = _with_pickle(project, allow=False)
    with pytest.raises(ManifestError, match=r"source: files pattern '\*\.bin' can take \.bin files, which are pickles.*allow_pickle: true"):
        load_manifest(refused)
    out = cli("plan", str(refused), "--store", str(tmp_path / "store"), cwd=project)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "pickles" in out.stderr
    allowed = _with_pickle(project, allow=True)
    result = api.build(allowed, store_dir=tmp_path / "store")
    assert not sentinel.exists(), "a source pickle was unpickled"
    lock = read_lock(result.project.lock_path)
    assert "training_args.bin" in lock.source.files
    assert lock.manifest.content["source"]["allow_pickle"] is True


def test_trust_remote_code_can_only_be_false_and_explicit_false_changes_no_digest(tmp_path):
    project = make_project(tmp_path / "project")
    manifest = project / "manifests" / f"{TEXT_ONLY}.yaml"
    before = manifest_digest(load_manifest(manifest))
    data = yaml.safe_load(manifest.read_text())
    for value, allowed in ((True, False), ("yes", False), (1, False), (False, True)):
        data["source"]["trust_remote_code"] = value
        manifest.write_text(yaml.safe_dump(data, sort_keys=False))
        if allowed:
            assert manifest_digest(load_manifest(manifest)) == before
        else:
            with pytest.raises(ManifestError, match=r"trust_remote_code: true would run Python code|not a number"):
                load_manifest(manifest)
    data["source"]["allow_pickle"] = False
    manifest.write_text(yaml.safe_dump(data, sort_keys=False))
    assert manifest_digest(load_manifest(manifest)) == before


def test_the_committed_locks_still_match_their_manifests():
    """The new source fields are omitted from the digest when unset: no committed lock went stale."""
    for name in (TEXT_ONLY,):
        lock = read_lock(ROOT / "lock" / f"{name}.lock")
        manifest = load_manifest(ROOT / "manifests" / f"{name}.yaml")
        assert lock.manifest.digest == manifest_digest(manifest)
        assert "allow_pickle" not in lock.manifest.content["source"] and "trust_remote_code" not in lock.manifest.content["source"]


def test_a_hub_token_never_reaches_the_lock_the_store_the_outputs_or_the_cli_output(fake_hub, tmp_path, monkeypatch):  # noqa: F811
    project = make_project(tmp_path / "project")
    fake_hub.add_repo("example/tiny-medgemma", project / "fixtures" / "tiny-medgemma")
    fake_hub.require_token(TOKEN)
    manifest = project / "manifests" / "tiny-from-hub.yaml"
    manifest.write_text((project / "manifests" / f"{TEXT_ONLY}.yaml").read_text().replace(f"name: {TEXT_ONLY}", "name: tiny-from-hub").replace(
        "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n",
        f"source:\n  kind: hub\n  repo: example/tiny-medgemma\n  revision: {fake_hub.commit}\n",
    ))
    store = tmp_path / "store"
    outputs = []
    for args in (["plan", str(manifest)], ["build", str(manifest)], ["lock", str(manifest)], ["build", str(manifest), "--frozen"]):
        done = cli(*args, "--store", str(store), cwd=project, HF_TOKEN=TOKEN, HF_HUB_DISABLE_TELEMETRY="1")
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    refused = cli("build", str(manifest), "--store", str(tmp_path / "cold-store"), cwd=project, HF_TOKEN=TOKEN[:-4] + "XXXX",
                  HF_HOME=str(tmp_path / "cold-hf"), HF_HUB_DISABLE_TELEMETRY="1")
    assert refused.returncode != 0 and refused.stderr.startswith("error: ")
    outputs.append(refused.stdout + refused.stderr)
    leaks = [text[:200] for text in outputs if TOKEN in text or TOKEN[:-4] in text]
    for directory in (project / "lock", project / "dist", store, tmp_path / "cold-store"):
        for path in directory.rglob("*"):
            if path.is_file() and TOKEN[3:-4].encode() in path.read_bytes():
                leaks.append(str(path))
    assert not leaks, leaks
    assert fake_hub.requests, "the build went to the fake Hub"
    shutil.rmtree(project / "dist")


def test_every_from_pretrained_call_refuses_remote_code():
    """Every transformers `from_pretrained` in modelforge says trust_remote_code=False, so no
    transformers default, environment variable or builder option can make it import a
    checkpoint's code (a source that asks for it is refused earlier: tests/safety/test_corrupt_sources.py)."""
    import ast

    unguarded = []
    for path in sorted((ROOT / "src" / "modelforge").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained"):
                continue
            keyword = {item.arg: item.value for item in node.keywords}.get("trust_remote_code")
            forwarded = any(item.arg is None for item in node.keywords)  # **kwargs: the wrapper must pin it first
            if isinstance(keyword, ast.Constant) and keyword.value is False:
                continue
            if forwarded and 'kwargs["trust_remote_code"] = False' in ast.get_source_segment(path.read_text(), _enclosing(tree, node)):
                continue
            unguarded.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert unguarded == []


def _enclosing(tree, target):
    import ast

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(child is target for child in ast.walk(node)):
            return node
    return tree
