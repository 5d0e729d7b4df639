"""Every class of bad manifest gives a one-line error with file:line and the fix, a non-zero
exit, and no traceback — through the real CLI."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

GOOD = """\
name: t
source: {kind: local, path: ../fixtures/tiny-medgemma}
components:
  text_decoder: {match: ["language_model.*"]}
  vision_encoder: {match: ["vision_tower.*"]}
  projector: {match: ["multi_modal_projector.*"]}
weights:
  - {kind: drop, components: [vision_encoder, projector]}
  - {kind: rename_prefix, prefix: language_model., to: ""}
files:
  carry: [tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json, chat_template.jinja, added_tokens.json]
  drop: [preprocessor_config.json, processor_config.json]
targets:
  text: {kind: hf_text_only, components: [text_decoder]}
"""

CASES = {
    # class of error: (manifest text, expected line, pattern in the message)
    "yaml syntax": ("name: t\nsource: [unclosed\n", 3, r"fix the YAML syntax|expected"),
    "unknown key": (GOOD.replace("name: t\n", "name: t\ncolour: blue\n"), 2, r"unknown key 'colour'; remove it"),
    "unknown nested key": (GOOD.replace("kind: hf_text_only,", "kind: hf_text_only, shards: 2,"), 14, r"targets\.text\.shards: unknown key"),
    "wrong type": (GOOD.replace("components: [text_decoder]}", "components: [text_decoder], max_shard_size: lots}"), 14, r"max_shard_size: size 'lots' is not a number"),
    "unpinned revision": (
        GOOD.replace("source: {kind: local, path: ../fixtures/tiny-medgemma}", "source: {kind: hub, repo: google/medgemma-1.5-4b-it, revision: main}"),
        2,
        r"pin `revision` to a 40-hex commit",
    ),
    "unknown kind": (GOOD.replace("kind: hf_text_only", "kind: hf_text_onyl"), 14, r"kind|hf_text_onyl"),
    "undeclared component": (GOOD.replace("components: [text_decoder]}", "components: [decoder]}"), None, r"component 'decoder', which is not declared"),
    "rule matching nothing": (GOOD.replace("prefix: language_model.", "prefix: langauge_model."), None, r"weights\[1\] \(rename_prefix\) matches no tensor"),
    "component matching nothing": (GOOD.replace('["vision_tower.*"]', '["vision.*"]'), None, r"component 'vision_encoder' matches no tensor"),
    "tensor neither used nor dropped": (GOOD.replace("  - {kind: drop, components: [vision_encoder, projector]}\n", "  - {kind: drop, components: [vision_encoder]}\n"), None, r"neither used by a target nor dropped"),
    "two tensors to one name": (
        GOOD.replace('  - {kind: rename_prefix, prefix: language_model., to: ""}', '  - {kind: rename_regex, pattern: "language_model\\\\.model\\\\.layers\\\\.\\\\d+\\\\.(.*)", to: "\\\\1"}'),
        None,
        r"both become",
    ),
    "file neither carried nor dropped": (GOOD.replace(", added_tokens.json]", "]"), None, r"neither carried nor dropped"),
    "catastrophic regex": (GOOD.replace('  - {kind: rename_prefix, prefix: language_model., to: ""}', '  - {kind: rename_regex, pattern: "(a+)+b", to: x}'), 9, r"exponential time"),
    "yaml alias": ("name: &n t\ndescription: *n\n", 2, r"aliases"),
    "duplicate key": ("name: t\nname: u\n", 2, r"appears twice"),
    "not a mapping": ("- a\n- b\n", 1, r"a manifest is a mapping"),
    "empty": ("", None, r"empty"),
    "source path missing": (GOOD.replace("../fixtures/tiny-medgemma", "../fixtures/nowhere"), None, r"does not exist; fix source.path"),
    "bad name": (GOOD.replace("name: t", "name: Has Spaces"), 1, r"name"),
}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_manifest_gives_one_line_error(case, tmp_project):
    text, line, pattern = CASES[case]
    manifest = tmp_project / "manifests" / "bad.yaml"
    manifest.write_text(text)
    result = run_cli("plan", str(manifest), cwd=tmp_project)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert str(manifest) in lines[0] or "bad.yaml" in lines[0] or "fixtures/nowhere" in lines[0]
    if line is not None:
        assert re.search(rf"bad\.yaml:{line}(:\d+)?:", lines[0]), lines[0]
    assert re.search(pattern, lines[0]), lines[0]


def test_output_escaping_paths_are_refused():
    from modelforge.manifest.base import check_relative

    for bad in ("../x", "/etc/passwd", "a/../../b", "C:\\x"):
        with pytest.raises(ValueError, match="absolute|climbs out"):
            check_relative(bad)
    assert check_relative("models/a.task") == "models/a.task"


def test_reordering_keys_changes_no_digest(tmp_path):
    from modelforge.manifest import load_manifest, manifest_digest

    original = ROOT / "manifests" / "tiny-medgemma-text-only.yaml"
    import yaml

    data = yaml.safe_load(original.read_text())
    reordered = dict(reversed(list(data.items())))
    reordered["source"] = dict(reversed(list(data["source"].items())))
    path = tmp_path / "manifests" / "m.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(reordered, sort_keys=False))
    assert manifest_digest(load_manifest(path)) == manifest_digest(load_manifest(original))


def test_hub_shorthand_expands():
    from modelforge.manifest.models import HubSourceSpec

    spec = HubSourceSpec.model_validate({"kind": "hub", "repo": "google/medgemma-1.5-4b-it@" + "a" * 40})
    assert spec.repo == "google/medgemma-1.5-4b-it" and spec.revision == "a" * 40


def test_schema_file_is_current():
    from modelforge.api import schema_text

    assert (ROOT / "schemas" / "manifest.schema.json").read_text() == schema_text()


def test_registry_matches_manifest_union():
    import typing

    from modelforge.manifest.targets import TargetSpec
    from modelforge.targets import TARGETS

    inner = typing.get_args(TargetSpec)[0]
    union = typing.get_args(inner) or (inner,)
    kinds = {typing.get_args(model.model_fields["kind"].annotation)[0] for model in union}
    assert kinds == set(TARGETS)
