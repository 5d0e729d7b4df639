"""`modelforge diff` on a real git repository with two commits of a manifest, and on two files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def repo(tmp_project):
    git("init", "-q", "-b", "main", cwd=tmp_project)
    git("config", "user.email", "ci@example.org", cwd=tmp_project)
    git("config", "user.name", "CI", cwd=tmp_project)
    git("add", "-A", cwd=tmp_project)
    git("commit", "-qm", "first", cwd=tmp_project)
    return tmp_project


def test_diff_against_the_previous_commit_shows_fields_steps_config_and_tensors(repo):
    manifest = repo / "manifests" / "tiny-medgemma-text-only.yaml"
    text = manifest.read_text()
    text = text.replace("max_position_embeddings: 512", "max_position_embeddings: 2048")
    text = text.replace("  - kind: drop\n    components: [vision_encoder, projector]\n", "  - kind: drop\n    components: [vision_encoder, projector]\n  - kind: drop\n    match: [\"language_model.model.layers.1.*\"]\n")
    manifest.write_text(text)
    git("commit", "-qam", "second", cwd=repo)
    out = cli("diff", "manifests/tiny-medgemma-text-only.yaml", "--base", "HEAD~1", "--format", "json", cwd=repo)
    assert out.returncode == 1, out.stderr  # something would rebuild
    result = json.loads(out.stdout)
    paths = {change["path"] for change in result["fields"]}
    assert "config[1].values.max_position_embeddings" in paths
    assert "weights[1].match[0]" in paths
    status = {step["name"]: step["status"] for step in result["steps"]}
    assert status == {"config": "invalidated", "files": "cached", "text.weights": "invalidated", "text": "invalidated", "text.check": "invalidated"}
    assert '"max_position_embeddings": 2048' in result["config"]["config.json"]["new"]
    removed = result["tensors"]["text"]["removed"]
    assert len(removed) == 13 and all(name.startswith("model.layers.1.") for name in removed)
    assert result["sizes"]["text"]["new"] < result["sizes"]["text"]["old"]


def test_markdown_has_collapsible_sections_and_default_base_is_the_merge_base(repo):
    git("checkout", "-qb", "feature", cwd=repo)
    manifest = repo / "manifests" / "tiny-medgemma-text-only.yaml"
    manifest.write_text(manifest.read_text().replace("max_position_embeddings: 512", "max_position_embeddings: 1024"))
    git("commit", "-qam", "feature", cwd=repo)
    out = cli("diff", "manifests/tiny-medgemma-text-only.yaml", "--format", "markdown", cwd=repo)
    assert out.returncode == 1, out.stderr
    assert "<details>" in out.stdout and "config.json changes" in out.stdout
    assert "| `config` | rewrite_config | invalidated |" in out.stdout
    assert "| `text.weights` | transform_weights | cached |" in out.stdout


def test_an_unchanged_manifest_exits_zero(repo):
    out = cli("diff", "manifests/tiny-medgemma-text-only.yaml", "--base", "HEAD", cwd=repo)
    assert out.returncode == 0, out.stderr
    assert "nothing would rebuild" in out.stdout


def test_two_files_and_a_recipe_change(repo):
    old = repo / "manifests" / "tiny-medgemma-litertlm.yaml"
    new = repo / "manifests" / "new.yaml"
    new.write_text(old.read_text().replace("vision_encoder: {recipe: weight_only_wi8_afp32}", "vision_encoder: {recipe: dynamic_wi4b32_afp32}"))
    out = cli("diff", str(old), str(new), "--format", "json", cwd=repo)
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert [c["path"] for c in result["fields"]] == ["targets.bundle.quantization.vision_encoder.recipe"]
    invalidated = sorted(s["name"] for s in result["steps"] if s["status"] != "cached")
    assert invalidated == ["bundle.package", "bundle.parity", "bundle.quantize.vision_encoder"]


def test_diff_imports_no_heavy_library(repo):
    code = (
        "import sys; from pathlib import Path; from modelforge import diff; "
        "d = diff.diff_manifests(Path('manifests/tiny-medgemma-litertlm.yaml'), Path('manifests/tiny-medgemma-litertlm.yaml'), old_label='a', new_label='b'); "
        "print(sorted(m for m in ('torch', 'transformers', 'litert_torch', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_container_that_gains_its_first_items_is_named_by_the_items_only():
    from modelforge.manifest import changed_fields

    old = {"targets": {"onnx": {"kind": "onnx", "precision": {}}, "web": {"headers": []}}}
    new = {"targets": {"onnx": {"kind": "onnx", "precision": {"text": "int4", "vision": "int8"}}, "web": {"headers": ["a"]}}}
    assert changed_fields(old, new) == [
        ("targets.onnx.precision.text", None, "int4", "added"),
        ("targets.onnx.precision.vision", None, "int8", "added"),
        ("targets.web.headers[0]", None, "a", "added"),
    ]
    assert changed_fields(new, old) == [
        ("targets.onnx.precision.text", "int4", None, "removed"),
        ("targets.onnx.precision.vision", "int8", None, "removed"),
        ("targets.web.headers[0]", "a", None, "removed"),
    ]
    # an empty container that replaces a value is still a change of that field; an added null is added
    assert changed_fields({"a": 1}, {"a": {}}) == [("a", 1, {}, "changed")]
    assert changed_fields({}, {"a": None}) == [("a", None, None, "added")]
    assert changed_fields({"a": {"b": 1}}, {"a": {"b": 1}}) == []


def test_a_recipe_change_shows_the_quality_figures_both_locks_record_side_by_side(repo):
    """A reviewer weighs a recipe change by what it does to the model: the figures each lock's check
    recorded, before → after, in text, markdown and json."""
    import shutil

    import yaml

    from conftest import ROOT

    manifest = repo / "manifests" / "tiny-medgemma-litertlm.yaml"
    lock = repo / "lock" / "tiny-medgemma-litertlm.lock"
    shutil.copyfile(ROOT / "lock" / lock.name, lock)
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "lock", cwd=repo)
    manifest.write_text(manifest.read_text().replace("text_decoder: {recipe: dynamic_wi8_afp32}", "text_decoder: {recipe: dynamic_wi4b32_afp32}"))
    data = yaml.safe_load(lock.read_text())
    data["checks"]["bundle.parity"] |= {"top1_agreement": 0.61, "mean_kl": 0.42}  # what the head's build would record
    lock.write_text(yaml.safe_dump(data, sort_keys=True))
    git("commit", "-qam", "int4 text", cwd=repo)

    out = cli("diff", "manifests/tiny-medgemma-litertlm.yaml", "--base", "HEAD~1", cwd=repo)
    assert out.returncode == 1, out.stderr
    assert "  bundle.parity: top-1 0.8698 → 0.61, KL 0.038 → 0.42, p99 KL 0.31 → 0.31, perplexity ratio 1.046 → 1.046, max |Δlogit| 5.8 → 5.8" in out.stdout
    assert "  web.parity.tiny-float:" not in out.stdout  # neither re-run nor changed
    markdown = cli("diff", "manifests/tiny-medgemma-litertlm.yaml", "--base", "HEAD~1", "--format", "markdown", cwd=repo).stdout
    assert "| `bundle.parity` | top-1 | 0.8698 | 0.61 |" in markdown
    result = json.loads(cli("diff", "manifests/tiny-medgemma-litertlm.yaml", "--base", "HEAD~1", "--format", "json", cwd=repo).stdout)
    assert result["quality"]["bundle.parity"]["mean_kl"] == {"old": 0.038, "new": 0.42}
