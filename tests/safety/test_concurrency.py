"""Concurrency: two and four `modelforge build` processes at once, of the same manifest and of
overlapping ones (sharing steps by key), on one store, the same lock/ and dist/. Each step key
runs exactly once across all of them (the others wait on its lock and then reuse its record), no
build deadlocks (every one ends within the timeout), the store is whole and every target is
byte-identical to a build made alone.

MODELFORGE_PAUSE_AT holds each step 0.3 s after it starts (under its lock), so the builds do
overlap on this small model instead of finishing one after another."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelforge import api
from safety_support import TEXT_ONLY, cli_env, make_project, record_figure, store_problems, tmp_entries, tree

TIMEOUT = 600  # a deadlock fails here; a loaded CI machine must not
PAUSE = "*/start:0.3"


def _variants(project: Path) -> dict[str, Path]:
    """Four manifests that share steps: a (the tiny text-only one), b (other shard size: other
    weights, same config and files), c (another config edit: same weights and files), d (a under
    another name: every key the same as a's)."""
    real = (project / "manifests" / f"{TEXT_ONLY}.yaml").read_text()
    texts = {
        "a": real.replace(f"name: {TEXT_ONLY}", "name: tiny-a"),
        "b": real.replace(f"name: {TEXT_ONLY}", "name: tiny-b").replace("max_shard_size: 400KB", "max_shard_size: 300KB"),
        "c": real.replace(f"name: {TEXT_ONLY}", "name: tiny-c").replace("max_position_embeddings: 512", "max_position_embeddings: 256"),
        "d": real.replace(f"name: {TEXT_ONLY}", "name: tiny-d"),
    }
    paths = {}
    for label, text in texts.items():
        assert text.count("name: tiny-") == 1
        paths[label] = project / "manifests" / f"tiny-{label}.yaml"
        paths[label].write_text(text)
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Each variant built alone, one after another: the bytes every concurrent build must match."""
    base = tmp_path_factory.mktemp("concurrency-reference")
    project = make_project(base / "project")
    manifests = _variants(project)
    trees, locks = {}, {}
    for label, manifest in manifests.items():
        result = api.build(manifest, store_dir=base / "store")
        trees[label] = tree(result.out_dir / "text")
        locks[label] = result.project.lock_path.read_text()
    return trees, locks


RAN = re.compile(r"^run\s+(\S+) \(")


def _race(tmp_path: Path, labels: list[str], reference) -> dict:
    trees, locks = reference
    project = make_project(tmp_path / "project")
    manifests = _variants(project)
    store = tmp_path / "store"
    keys = {label: {s.name: s.key for s in api.plan(manifests[label], store_dir=tmp_path / "plan-store").statuses} for label in set(labels)}
    started = time.monotonic()
    builds = [
        subprocess.Popen(
            [sys.executable, "-m", "modelforge.cli", "build", str(manifests[label]), "--store", str(store)],
            cwd=project, env=cli_env(MODELFORGE_PAUSE_AT=PAUSE), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for label in labels
    ]
    runs: dict[str, int] = {}
    try:
        for label, build in zip(labels, builds):
            out, err = build.communicate(timeout=TIMEOUT)  # a deadlock fails here
            assert build.returncode == 0, (label, err[-2000:])
            assert "Traceback" not in err
            for line in err.splitlines():
                match = RAN.match(line.strip())
                if match:
                    key = keys[label][match.group(1)]
                    runs[key] = runs.get(key, 0) + 1
    finally:
        for build in builds:
            if build.poll() is None:
                build.kill()
    seconds = time.monotonic() - started
    distinct = {key for label in labels for key in keys[label].values()}
    assert runs == {key: 1 for key in distinct}, f"runs per step key: {runs}, expected each of {len(distinct)} once"
    assert store_problems(store) == []
    assert tmp_entries(store) == []
    for label in set(labels):
        name = f"tiny-{label}"
        assert tree(project / "dist" / name / "text") == trees[label], label
        assert sorted(p.name for p in (project / "dist" / name).iterdir()) == ["text"], label
        assert (project / "lock" / f"{name}.lock").read_text() == locks[label], label
        assert api.verify(project / "lock" / f"{name}.lock") == [], label
    assert sorted(p.name for p in (project / "lock").iterdir()) == sorted({f"tiny-{label}.lock" for label in labels})
    shutil.rmtree(project)
    return {"builds": len(labels), "manifests": sorted(set(labels)), "distinct_steps": len(distinct), "step_runs": sum(runs.values()), "seconds": round(seconds, 1)}


SCENARIOS = {
    "same manifest, 2 builds": ["a", "a"],
    "same manifest, 4 builds": ["a", "a", "a", "a"],
    "overlapping manifests, 2 builds": ["a", "b"],
    "overlapping manifests, 4 builds": ["a", "b", "c", "d"],
    "overlapping manifests, 4 builds, 2 of each": ["a", "c", "a", "c"],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_concurrent_builds_share_one_store_and_run_each_step_once(scenario, tmp_path, reference):
    figures = _race(tmp_path, SCENARIOS[scenario], reference)
    record_figure(f"concurrency-{scenario.replace(' ', '_').replace(',', '')}", figures)
