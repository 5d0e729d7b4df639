"""End to end on the tiny model: the text-only target, the store, the lock and verify."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import TINY
from modelforge import api
from modelforge.lock import read_lock
from modelforge.provenance import SIGNATURE_FILES


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def built(tmp_project, tmp_path):
    manifest = tmp_project / "manifests" / "tiny-medgemma-text-only.yaml"
    store = tmp_path / "store"
    result = api.build(manifest, store_dir=store)
    return manifest, store, result


def test_text_only_checkpoint_loads_with_no_missing_or_unexpected_keys_and_identical_logits(built):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, Gemma3ForConditionalGeneration

    manifest, _, result = built
    out = result.out_dir / "text"
    model, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert info["missing_keys"] == [] or info["missing_keys"] == set()
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    multimodal = Gemma3ForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32)
    model.eval(), multimodal.eval()
    tokens = torch.tensor([[2, 5, 17, 42, 99, 7, 3, 250, 11, 60]])
    with torch.no_grad():
        text_logits = model(input_ids=tokens).logits
        multimodal_logits = multimodal(input_ids=tokens).logits
    # A pure rename must not change a single bit.
    assert torch.equal(text_logits, multimodal_logits)


def test_second_build_runs_zero_steps_and_leaves_the_lock_byte_identical(built):
    manifest, store, first = built
    lock_bytes = first.project.lock_path.read_bytes()
    second = api.build(manifest, store_dir=store)
    assert second.ran == []
    assert len(second.cached) == len(first.ran) > 0
    assert second.lock_written is False
    assert first.project.lock_path.read_bytes() == lock_bytes


def test_same_inputs_in_two_empty_stores_give_identical_bytes(built, tmp_path):
    manifest, _, first = built
    second = api.build(manifest, store_dir=tmp_path / "other-store", out=tmp_path / "other-out")
    names = sorted(p.relative_to(first.out_dir).as_posix() for p in first.out_dir.rglob("*") if p.is_file() and p.name not in SIGNATURE_FILES)
    assert names == sorted(p.relative_to(second.out_dir).as_posix() for p in second.out_dir.rglob("*") if p.is_file() and p.name not in SIGNATURE_FILES)
    # The provenance beside them is the same too, but for its times (tests/test_provenance.py).
    for name in names:
        assert (first.out_dir / name).read_bytes() == (second.out_dir / name).read_bytes(), name


def test_reordering_manifest_keys_changes_no_step_key_and_no_lock_byte(built, tmp_path):
    manifest, store, first = built
    before = first.project.lock_path.read_bytes()
    data = yaml.safe_load(manifest.read_text())
    manifest.write_text(yaml.safe_dump(dict(reversed(list(data.items()))), sort_keys=False))
    result = api.build(manifest, store_dir=store)
    assert result.ran == []
    assert first.project.lock_path.read_bytes() == before


def test_flipping_one_output_byte_makes_verify_fail_naming_that_file(built):
    manifest, _, result = built
    project = result.project
    ok = run_cli("verify", str(project.lock_path), cwd=project.root)
    assert ok.returncode == 0, ok.stderr
    target = result.out_dir / "text" / "model-00001-of-00002.safetensors"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.chmod(0o644)
    target.unlink()  # break the hard link so the store object stays intact
    target.write_bytes(bytes(data))
    bad = run_cli("verify", str(project.lock_path), cwd=project.root)
    assert bad.returncode != 0
    assert "text/model-00001-of-00002.safetensors" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_damaged_store_object_is_rebuilt_not_reused(built):
    manifest, store, result = built
    locked = read_lock(result.project.lock_path).targets["text"].files["model-00002-of-00002.safetensors"]
    shard = store / "objects" / locked.sha256[:2] / locked.sha256  # dist/ holds a copy: damage the object itself
    shard.chmod(0o644)
    with open(shard, "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff\xff")
    rebuilt = api.build(manifest, store_dir=store)
    assert "text.weights" in rebuilt.ran
    assert api.verify(result.project.lock_path) == []


def test_changing_a_parameter_reruns_only_what_depends_on_it_and_says_why(built):
    manifest, store, _ = built
    manifest.write_text(manifest.read_text().replace("max_position_embeddings: 512", "max_position_embeddings: 1024"))
    report = api.plan(manifest, store_dir=store)
    reasons = {status.name: (status.cached, status.reason) for status in report.statuses}
    assert reasons["config"] == (False, "parameters changed")
    assert reasons["text.weights"][0] is True
    assert reasons["files"][0] is True
    assert reasons["text"] == (False, "input changed: config")


def test_frozen_refuses_an_out_of_date_lock(built):
    manifest, store, result = built
    manifest.write_text(manifest.read_text().replace("max_position_embeddings: 512", "max_position_embeddings: 2048"))
    out = run_cli("build", str(manifest), "--frozen", "--store", str(store), cwd=result.project.root)
    assert out.returncode != 0
    assert "--frozen" in out.stderr and "out of date" in out.stderr and "manifest" in out.stderr
    assert "Traceback" not in out.stderr


def test_source_dir_override_is_checked_against_the_lock(built, tmp_path):
    import shutil

    manifest, store, result = built
    hub_manifest = manifest.parent / "hub-tiny.yaml"
    text = manifest.read_text().replace(
        "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n",
        "source:\n  kind: hub\n  repo: example/tiny-medgemma\n  revision: " + "ab" * 20 + "\n",
    ).replace("name: tiny-medgemma-text-only", "name: hub-tiny")
    hub_manifest.write_text(text)
    copy = tmp_path / "download"
    shutil.copytree(TINY, copy)
    first = api.build(hub_manifest, store_dir=store, source_dir=copy)
    assert first.project.lock_path.exists()
    config = json.loads((copy / "config.json").read_text())
    config["initializer_range"] = 0.5
    (copy / "config.json").write_text(json.dumps(config))
    out = run_cli("build", str(hub_manifest), "--source-dir", str(copy), "--store", str(store), cwd=result.project.root)
    assert out.returncode != 0
    assert "config.json (sha256 differs)" in out.stderr
    assert "Traceback" not in out.stderr


LIGHT_COMMANDS = """
import sys
from modelforge import api
manifest = sys.argv[1]
api.plan(manifest)
api.lock(manifest)
api.build(manifest)  # a no-op: everything is cached
api.verify(api.open_project(manifest).lock_path)
heavy = sorted(name for name in ("torch", "transformers", "litert_torch", "tensorflow", "ai_edge_quantizer") if name in sys.modules)
print(heavy)
"""


def test_plan_lock_verify_and_noop_build_import_no_heavy_library(built):
    manifest, store, _ = built
    out = subprocess.run(
        [sys.executable, "-c", LIGHT_COMMANDS, str(manifest)],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "MODELFORGE_STORE": str(store)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_check_rebuild_reproduces_the_lock_and_reports_a_file_that_differs(built):
    manifest, _, result = built
    project = result.project
    ok = run_cli("check", str(manifest), "--rebuild", cwd=project.root)
    assert ok.returncode == 0, ok.stderr
    assert "reproduces every locked file" in ok.stdout
    # Pretend an earlier build had produced other bytes for one file: the rebuild must say which.
    lock_text = project.lock_path.read_text()
    from modelforge.lock import read_lock

    locked = read_lock(project.lock_path).targets["text"].files["config.json"].sha256
    project.lock_path.write_text(lock_text.replace(locked, "ab" * 32))
    bad = run_cli("check", str(manifest), "--rebuild", cwd=project.root)
    assert bad.returncode != 0
    assert "MISMATCH text/config.json" in bad.stderr and "not reproducible: made by step text" in bad.stderr
