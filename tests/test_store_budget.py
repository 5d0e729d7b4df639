"""A store budget (`build --store-budget`, retention.py): over it, a build drops the objects of
intermediate steps once nothing more reads them, and the executor builds on demand, so a rebuild
runs nothing though those objects are gone; `plan` predicts the store the budget leaves. Issue #26.

The budgeted builds start from a copy of the shared tiny litertlm build's store, so no step runs
again: what they prove is what is dropped, what stays, and what the next build does."""

from __future__ import annotations

import json
import shutil

import pytest

from modelforge import api
from modelforge.disk import store_size
from modelforge.errors import ConfigError
from modelforge.retention import Candidate, budget_from, choose
from modelforge.store import Store

from conftest import MANIFEST_LITERTLM, copy_project


@pytest.fixture
def budgeted(tmp_path, litertlm_build, litertlm_store):
    """A copy of the shared build's store, built again under a 1-byte budget: everything droppable goes."""
    store = tmp_path / "store"
    shutil.copytree(litertlm_store, store, ignore=shutil.ignore_patterns("tmp", "locks"))
    project = copy_project(tmp_path / "project")
    shutil.copy(litertlm_build.project.lock_path, project / "lock")
    result = api.build(project / "manifests" / MANIFEST_LITERTLM, store_dir=store, store_budget=1)
    return result, store, project


def _records(store_dir, result) -> dict:
    """step name → its record in the store, for every step of the build's plan."""
    from modelforge.plan import compute_keys

    store = Store(store_dir)
    try:
        keys = compute_keys(result.plan, api.tools_of(result.plan))
        return {step.name: store.get_record(keys[step.name]["key"]) for step in result.plan.steps}
    finally:
        store.close()


def _objects_of(store_dir, result) -> dict[str, bool]:
    """step name → whether all its objects are in the store."""
    store = Store(store_dir)
    try:
        return {name: all(store.object_path(item.sha256).exists() for item in record.outputs.values())
                for name, record in _records(store_dir, result).items()}
    finally:
        store.close()


def test_a_budget_drops_intermediates_keeps_targets_checks_and_records(budgeted, litertlm_store):
    result, store, _ = budgeted
    assert result.ran == []
    present = _objects_of(store, result)
    dropped = sorted(name for name, here in present.items() if not here)
    # Quick to remake, dropped: the quantized graphs the bundle packs, the metadata.
    assert {"bundle.metadata", "bundle.quantize.vision_encoder", "bundle.quantize.projector"} <= set(dropped), dropped
    targets = {target.node for target in result.plan.targets}
    checks = {name for name in result.checks}
    assert not (targets | checks) & set(dropped)
    assert store_size(store) < store_size(litertlm_store)
    # dist/ and the lock are whole: verify reads them only.
    assert api.verify(result.project.lock_path, directory=result.out_dir) == []


def test_a_rebuild_after_the_budget_runs_nothing(budgeted):
    """The executor builds on demand: a step whose record stands is not run again only because its
    objects were dropped (before, every such step ran again: 9 of them here)."""
    result, store, project = budgeted
    again = api.build(project / "manifests" / MANIFEST_LITERTLM, store_dir=store)
    assert again.ran == []
    assert again.checks == result.checks


def test_a_recipe_change_after_the_budget_runs_what_it_touches_and_what_it_reads_that_was_dropped(budgeted):
    result, store, project = budgeted
    before = {status.name: status.key for status in api.plan(project / "manifests" / MANIFEST_LITERTLM, store_dir=store).statuses}
    dropped = {name for name, here in _objects_of(store, result).items() if not here}
    manifest = project / "manifests" / MANIFEST_LITERTLM
    text = manifest.read_text()
    assert "text_decoder: {recipe: dynamic_wi8_afp32}" in text
    manifest.write_text(text.replace("text_decoder: {recipe: dynamic_wi8_afp32}", "text_decoder: {recipe: weight_only_wi8_afp32}"))
    report = api.plan(manifest, store_dir=store)
    runs = {status.name for status in report.statuses if not status.cached}
    touched = {status.name for status in report.statuses if before.get(status.name) != status.key}
    assert "bundle.quantize.text_decoder" in touched and "bundle.package" in runs
    assert runs <= touched | dropped, runs - touched - dropped
    assert not {name for name in runs if name.startswith("onnx")}  # the onnx target is untouched: nothing of it runs
    assert "bundle.export_text" not in runs  # its graphs stayed (the web bundle ships them): no re-export


def _size_of_this_plan_only(store_dir, result) -> int:
    """Removes the store's objects that no step of this plan wrote (the shared store it was copied
    from also holds what other tests of its group built) and returns the size left."""
    names = {item.sha256 for record in _records(store_dir, result).values() for item in record.outputs.values()}
    for path in (store_dir / "objects").glob("*/*"):
        if path.name not in names:
            path.unlink()
    return store_size(store_dir)


def test_plan_predicts_the_store_a_budget_leaves(budgeted, tmp_path):
    result, store, project = budgeted
    manifest = project / "manifests" / MANIFEST_LITERTLM
    predicted = api.plan(manifest, store_dir=tmp_path / "empty", store_budget=1).disk
    unbudgeted = api.plan(manifest, store_dir=tmp_path / "empty").disk
    actual = _size_of_this_plan_only(store, result)
    assert predicted.store_after < unbudgeted.store_after
    assert abs(predicted.store_after - actual) <= 0.02 * actual, (predicted.store_after, actual)


def test_the_policy_drops_quick_to_remake_first_then_the_largest():
    candidates = [Candidate("export", 100, True), Candidate("quantized", 30, False), Candidate("metadata", 1, False), Candidate("task", 50, False)]
    assert choose(candidates, 200, 1000) == []
    assert choose(candidates, 200, 150) == ["task"]
    assert choose(candidates, 200, 120) == ["task", "quantized"]
    assert choose(candidates, 200, 119) == ["task", "quantized", "metadata"]
    assert choose(candidates, 200, 0) == ["task", "quantized", "metadata", "export"]


def test_a_budget_that_is_not_a_size_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("MODELFORGE_STORE_BUDGET", "lots")
    with pytest.raises(ConfigError, match=r"MODELFORGE_STORE_BUDGET 'lots' is not a size"):
        budget_from(None)
    assert budget_from("2GB") == 2 * 10**9
    monkeypatch.delenv("MODELFORGE_STORE_BUDGET")
    assert budget_from(None) is None


def test_plan_json_carries_the_budget(tmp_project, tmp_path):
    from test_disk import run_cli

    out = run_cli("plan", "manifests/tiny-medgemma-text-only.yaml", "--store", str(tmp_path / "s"), "--json", "--store-budget", "1GB", cwd=tmp_project)
    assert json.loads(out.stdout)["disk"]["store_budget_bytes"] == 10**9
