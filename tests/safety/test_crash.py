"""Crash safety: builds killed with SIGKILL (or failing with ENOSPC) at named points of every step
kind, interrupted with Ctrl-C/SIGTERM, or run out of disk, then rebuilt. Afterwards the store is
whole (no partial object under a final name, no record without its objects, no temporary outside
tmp/), dist/ holds the old complete target or the new one, `verify` passes only on a matching
pair, and the rebuild gives byte-identical outputs to an uninterrupted build.

The kill points come from faults.fault_point (MODELFORGE_KILL_AT="name:N"); their names and counts
are read from a traced build first, so a new step or write is covered without editing this file.
Rerun one point with MODELFORGE_SAFETY_POINT="transform_weights/progress:5"."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import session_uses
from modelforge import api
from modelforge.lock import read_lock
from safety_support import (
    LITERTLM,
    TEXT_ONLY,
    cli,
    cli_env,
    descendants_alive,
    forked_cli,
    kill_workers,
    make_project,
    record_figure,
    records,
    store_problems,
    tmp_entries,
    tree,
    workers_of,
)

ONLY = os.environ.get("MODELFORGE_SAFETY_POINT")


@dataclass
class Versions:
    """The text-only target in two complete versions, and the project the kills happen in."""

    project: Path
    manifest: Path
    old_dist: Path  # a copy of dist/<name>/ as built from a variant of the manifest
    old_lock: bytes
    new_tree: dict
    new_lock: bytes
    new_records: dict

    @property
    def dist(self) -> Path:
        return self.project / "dist" / TEXT_ONLY

    @property
    def lock(self) -> Path:
        return self.project / "lock" / f"{TEXT_ONLY}.lock"

    def reset(self, store: Path) -> None:
        """Before each kill: an empty store, and the old version in dist/ and lock/."""
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(self.project / "dist", ignore_errors=True)
        shutil.copytree(self.old_dist, self.dist, symlinks=True)
        shutil.rmtree(self.project / "lock")
        (self.project / "lock").mkdir()
        self.lock.write_bytes(self.old_lock)


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> Versions:
    base = tmp_path_factory.mktemp("crash")
    project = make_project(base / "project")
    manifest = project / "manifests" / f"{TEXT_ONLY}.yaml"
    real = manifest.read_text()
    variant = real.replace("max_shard_size: 400KB", "max_shard_size: 300KB").replace("max_position_embeddings: 512", "max_position_embeddings: 384")
    assert variant != real
    manifest.write_text(variant)
    old = api.build(manifest, store_dir=base / "old-store")
    old_dist = base / "old-dist"
    shutil.copytree(old.out_dir, old_dist)
    old_lock = old.project.lock_path.read_bytes()
    manifest.write_text(real)
    shutil.rmtree(project / "dist")
    new = api.build(manifest, store_dir=base / "new-store")
    versions = Versions(project, manifest, old_dist, old_lock, tree(new.out_dir / "text"), new.project.lock_path.read_bytes(), records(base / "new-store"))
    assert tree(old_dist / "text") != versions.new_tree and old_lock != versions.new_lock
    return versions


def _points(versions: Versions, store: Path, trace: Path) -> list[str]:
    """name:N for every fault point an uninterrupted build reaches (progress thinned to 8)."""
    versions.reset(store)
    done = cli("build", str(versions.manifest), "--store", str(store), cwd=versions.project, MODELFORGE_FAULT_TRACE=str(trace))
    assert done.returncode == 0, done.stderr
    counts: dict[str, int] = {}
    points = []
    for name in trace.read_text().split():
        counts[name] = counts.get(name, 0) + 1
        points.append(f"{name}:{counts[name]}")
    keep = []
    for point in points:
        name, _, nth = point.rpartition(":")
        total = counts[name]
        if name.endswith("/progress") and total > 8 and int(nth) not in {1, total, *range(1, total, max(1, total // 6))}:
            continue
        keep.append(point)
    return keep


def _check_after_failure(versions: Versions, store: Path, point: str) -> list[str]:
    """What is wrong after a build died at point (empty when nothing)."""
    problems = [f"{point}: {problem}" for problem in store_problems(store)]
    now = tree(versions.dist / "text")
    old = tree(versions.old_dist / "text")
    is_old, is_new = now == old, now == versions.new_tree
    if not (is_old or is_new):
        problems.append(f"{point}: dist/{TEXT_ONLY}/text is neither the old nor the new version ({sorted((now or {}).items())[:3]}…)")
    stray = sorted(set(os.listdir(versions.dist)) - {"text"})
    stray += sorted(set(os.listdir(versions.project / "lock")) - {versions.lock.name})
    if stray:
        problems.append(f"{point}: temporaries outside store/tmp: {stray}")
    lock = versions.lock.read_bytes() if versions.lock.exists() else None
    if lock not in (versions.old_lock, versions.new_lock):
        problems.append(f"{point}: the lock is neither the old nor the new one")
    # verify passes exactly when dist/ and the lock are the same version: never on a mix.
    consistent = (is_old and lock == versions.old_lock) or (is_new and lock == versions.new_lock)
    passed = lock is not None and api.verify(versions.lock) == []
    if passed != consistent:
        problems.append(f"{point}: verify {'passed' if passed else 'failed'} on dist {'old' if is_old else 'new'} with the {'old' if lock == versions.old_lock else 'new'} lock")
    return problems


def _rebuild_and_compare(versions: Versions, store: Path, point: str) -> tuple[list[str], int]:
    result = api.build(versions.manifest, store_dir=store)
    problems = [f"{point} (after the rebuild): {problem}" for problem in store_problems(store)]
    if tree(result.out_dir / "text") != versions.new_tree:
        problems.append(f"{point}: the rebuilt target differs from the uninterrupted build")
    if versions.lock.read_bytes() != versions.new_lock:
        problems.append(f"{point}: the rebuilt lock differs from the uninterrupted build's")
    if records(store) != versions.new_records:
        problems.append(f"{point}: the store's records differ from the uninterrupted build's")
    if tmp_entries(store):
        problems.append(f"{point}: store/tmp keeps {tmp_entries(store)} after the rebuild (the dead build's are swept)")
    if api.verify(versions.lock):
        problems.append(f"{point}: verify fails after the rebuild")
    return problems, len(result.cached)


def test_sigkill_at_every_point_of_a_text_only_build_then_rebuild(versions, tmp_path):
    store = tmp_path / "store"
    points = _points(versions, store, tmp_path / "trace.txt")
    if ONLY:
        points = [ONLY]
    kinds = {point.split("/")[0] for point in points}
    assert {"rewrite_config", "carry_files", "transform_weights", "assemble", "materialize", "store"} <= kinds
    assert len(points) >= 50 or ONLY
    problems, reused, started = [], 0, time.monotonic()
    for index, point in enumerate(points):
        versions.reset(store)
        runner = cli if index % 5 == 0 else forked_cli  # a fresh interpreter for every 5th point
        killed = runner("build", str(versions.manifest), "--store", str(store), cwd=versions.project, MODELFORGE_KILL_AT=point)
        if killed.returncode != -signal.SIGKILL:
            problems.append(f"{point}: the build was not killed there (exit {killed.returncode}): {killed.stderr[-300:]}")
            continue
        problems += _check_after_failure(versions, store, point)
        found, cached = _rebuild_and_compare(versions, store, point)
        problems += found
        reused += cached
    record_figure("kill_text_only", {
        "kill_points": len(points), "step_kinds": sorted(kinds), "points": points, "problems": problems,
        "steps_reused_by_rebuilds": reused, "seconds": round(time.monotonic() - started, 1),
    })
    assert not problems, "\n".join(problems)


def test_enospc_at_every_other_point_fails_cleanly_then_rebuilds(versions, tmp_path):
    """The same points raising ENOSPC: one line on stderr naming the full disk, a whole store."""
    store = tmp_path / "store"
    points = _points(versions, store, tmp_path / "trace.txt")[::2]
    if ONLY:
        points = [ONLY]
    problems = []
    for index, point in enumerate(points):
        versions.reset(store)
        runner = cli if index % 5 == 0 else forked_cli
        failed = runner("build", str(versions.manifest), "--store", str(store), cwd=versions.project, MODELFORGE_FAIL_AT=point)
        lines = failed.stderr.strip().splitlines()
        if failed.returncode in (0, -signal.SIGKILL) or not lines or not lines[-1].startswith("error: ") or "space" not in lines[-1].lower():
            problems.append(f"{point}: exit {failed.returncode}, stderr ends {lines[-1:] or failed.stderr[-200:]!r}")
        if "Traceback" in failed.stderr:
            problems.append(f"{point}: a traceback")
        problems += _check_after_failure(versions, store, point)
        if tmp_entries(store):
            problems.append(f"{point}: store/tmp keeps {tmp_entries(store)} after a failed build")
        problems += _rebuild_and_compare(versions, store, point)[0]
    record_figure("enospc_injected", {"points": len(points), "problems": problems})
    assert len(points) >= 25 or ONLY
    assert not problems, "\n".join(problems)


def _mount_tmpfs(directory: Path, size: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True).returncode == 0


def test_a_build_into_a_full_filesystem_fails_in_one_line_and_leaves_the_store_whole(versions, tmp_path):
    """A real small tmpfs (as root), at sizes that fill up at different moments of the build."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN); ENOSPC is injected by the test above")
    outcomes = {}
    try:
        for size in ("16k", "64k", "160k", "300k", "420k", "560k", "700k", "1m"):
            for entry in disk.iterdir():
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)
            store, out = disk / "store", disk / "out"
            # The plan's disk check refuses a build the tmpfs cannot hold before anything runs; told the
            # disk is larger than it is, the build runs into the real ENOSPC this test is about.
            result = cli("build", str(versions.manifest), "--store", str(store), "--out", str(out), cwd=versions.project, MODELFORGE_DISK_LIMIT="1GB")
            lines = result.stderr.strip().splitlines()
            outcomes[size] = result.returncode
            assert "Traceback" not in result.stderr, (size, result.stderr)
            if result.returncode != 0:
                assert lines[-1].startswith("error: no space left on the device while "), (size, lines[-1:])
                assert lines[-1].endswith("free space or point MODELFORGE_STORE elsewhere"), (size, lines[-1])
            assert store_problems(store) == [], size
            assert tree(out / "text") in (None, versions.new_tree), size
            assert not [name for name in (os.listdir(out) if out.exists() else []) if name != "text"], size
            # Room again (the disk was cleaned up, not the store): the same store builds the same bytes.
            subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
            again = cli("build", str(versions.manifest), "--store", str(store), "--out", str(out), cwd=versions.project)
            assert again.returncode == 0, (size, again.stderr)
            assert tree(out / "text") == versions.new_tree, size
            assert store_problems(store) == [] and tmp_entries(store) == [], size
        # Without the override, the smallest disk is refused by the plan, in one line, with nothing written.
        for entry in disk.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        subprocess.run(["mount", "-o", "remount,size=64k", str(disk)], check=True)
        refused = cli("build", str(versions.manifest), "--store", str(disk / "store"), "--out", str(disk / "out"), cwd=versions.project)
        assert refused.returncode == 3 and refused.stderr.startswith("error: this build would write about "), refused.stderr
        assert not [path for path in (disk / "store" / "objects").rglob("*") if path.is_file()] and not (disk / "out").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    record_figure("disk_full_tmpfs", outcomes)
    assert any(code != 0 for code in outcomes.values()), "no size was small enough to fill up"


# ------------------------------------------------------------------------------------ litertlm


def _copy_steps(source: Path, store: Path, keys: list[str]) -> None:
    """Copy the records of keys that source holds, and their objects, into store (a new one)."""
    for key in keys:
        record = source / "steps" / key[:2] / f"{key}.json"
        if not record.exists():
            continue
        for output in json.loads(record.read_text())["outputs"].values():
            target = store / "objects" / output["sha256"][:2] / output["sha256"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / "objects" / output["sha256"][:2] / output["sha256"], target)
        (store / "steps" / key[:2]).mkdir(parents=True, exist_ok=True)
        shutil.copy2(record, store / "steps" / key[:2] / record.name)


@pytest.fixture(scope="module")
def litertlm_baseline(request, tmp_path_factory):
    """One uninterrupted build of the litertlm bundle (a minute), whose store each test copies. When
    the session builds the whole tiny litertlm manifest anyway (conftest's litertlm_build), the
    bundle's steps (the same keys) come from its store and this build only lays the bundle out."""
    base = tmp_path_factory.mktemp("litertlm-crash")
    project = make_project(base / "project")
    manifest = project / "manifests" / f"{LITERTLM}.yaml"
    if session_uses(request, "litertlm_build"):
        request.getfixturevalue("litertlm_build")
        keys = [status.key for status in api.plan(manifest, store_dir=base / "plan-store").statuses]
        _copy_steps(request.getfixturevalue("litertlm_store"), base / "store", keys)
    result = api.build(manifest, store_dir=base / "store")
    lock = read_lock(result.project.lock_path)
    keys = {name: step.key for name, step in lock.steps.items()}
    return {
        "base": base, "project": project, "manifest": manifest, "store": base / "store", "keys": keys,
        "tree": tree(result.out_dir / "bundle"), "lock": result.project.lock_path.read_bytes(), "records": records(base / "store"),
    }


def _litertlm_store_without(baseline, tmp_path: Path, step: str | None) -> Path:
    """A copy of the baseline store less one step's record, so that only that step runs again."""
    store = tmp_path / "store"
    shutil.copytree(baseline["store"], store)
    if step is not None:
        key = baseline["keys"][step]
        (store / "steps" / key[:2] / f"{key}.json").unlink()
    return store


def _check_litertlm(baseline, store: Path, point: str) -> list[str]:
    project = baseline["project"]
    problems = [f"{point}: {problem}" for problem in store_problems(store)]
    if tree(project / "dist" / LITERTLM / "bundle") != baseline["tree"]:
        problems.append(f"{point}: dist/{LITERTLM}/bundle is not the complete bundle")
    if sorted(os.listdir(project / "dist" / LITERTLM)) != ["bundle"]:
        problems.append(f"{point}: temporaries beside the target: {os.listdir(project / 'dist' / LITERTLM)}")
    lock = project / "lock" / f"{LITERTLM}.lock"
    if lock.read_bytes() != baseline["lock"] or api.verify(lock):
        problems.append(f"{point}: the lock changed or verify fails")
    return problems


def _orphans(store: Path) -> int:
    """Workers of this store still running 30 s after their build died (killed, and counted); a
    worker dies with its build (PR_SET_PDEATHSIG), so this returns as soon as the kernel reaped it."""
    deadline = time.monotonic() + 30
    while workers_of(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    return kill_workers(store)


# A litert worker held by faults.fault_point (MODELFORGE_PAUSE_AT) until the test acts: a kill or a
# signal then lands while the worker runs, however fast or slow this machine exports.
HOLD_SECONDS = 600


def _held(point: str) -> dict[str, str]:
    """The environment that holds every litert worker of a build at its first worker/* point."""
    return {"MODELFORGE_PAUSE_AT": f"worker/*:{HOLD_SECONDS}"} if point.split("/")[-1].startswith("progress:") else {}


def _wait_for_point(build: subprocess.Popen, trace: Path, point: str, timeout: float = 300) -> None:
    """Until the build (or its worker) has reached point, as its MODELFORGE_FAULT_TRACE says."""
    deadline = time.monotonic() + timeout
    while not (trace.exists() and point in trace.read_text().split()):
        assert build.poll() is None, f"the build exited ({build.returncode}) before reaching {point}"
        assert time.monotonic() < deadline, f"the build never reached {point}"
        time.sleep(0.05)


def _wait_gone(pids: list[int], timeout: float = 30) -> list[int]:
    """Those of pids still alive once all are gone, or after timeout."""
    deadline = time.monotonic() + timeout
    while descendants_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return descendants_alive(pids)


LITERTLM_POINTS = [
    # (step whose record is removed so that it runs, kill point); at a progress point the worker is
    # held (_held), so the build dies while its worker runs, never after the step finished
    ("bundle.export_vision", "litert_export/progress:4"),  # while the litert-torch export worker runs
    ("bundle.quantize.vision_encoder", "litert_quantize/start:1"),
    ("bundle.quantize.vision_encoder", "litert_quantize/adopt:1"),
    ("bundle.quantize.text_decoder", "store/write:1"),  # its record, as it is written
    ("bundle.package", "litertlm_package/ran:1"),
    ("bundle.package", "litertlm_package/record:1"),
    ("bundle.parity", "litert_parity/progress:3"),
    (None, "materialize/swap:1"),
]


@pytest.mark.slow
def test_sigkill_during_export_quantize_package_and_parity_then_rebuild(litertlm_baseline, tmp_path):
    baseline, project = litertlm_baseline, litertlm_baseline["project"]
    problems, orphans = [], {}
    for index, (step, point) in enumerate(LITERTLM_POINTS):
        if ONLY and ONLY != point:
            continue
        store = _litertlm_store_without(baseline, tmp_path / str(index), step)
        killed = cli("build", str(baseline["manifest"]), "--store", str(store), cwd=project, MODELFORGE_KILL_AT=point, timeout=300, **_held(point))
        if killed.returncode != -signal.SIGKILL:
            problems.append(f"{point}: not killed there (exit {killed.returncode}): {killed.stderr[-300:]}")
            continue
        orphans[point] = _orphans(store)
        if orphans[point]:
            problems.append(f"{point}: {orphans[point]} worker(s) outlived the killed build")
        problems += _check_litertlm(baseline, store, point)
        rebuilt = api.build(baseline["manifest"], store_dir=store)
        if step is not None and rebuilt.ran != [step]:
            problems.append(f"{point}: the rebuild ran {rebuilt.ran}, expected only {step}")
        if records(store) != baseline["records"]:
            problems.append(f"{point}: the rebuilt records differ from the uninterrupted build's (not byte-identical)")
        if tmp_entries(store):
            problems.append(f"{point}: store/tmp keeps {tmp_entries(store)} after the rebuild")
        problems += [f"{p} (after the rebuild)" for p in _check_litertlm(baseline, store, point)]
    record_figure("kill_litertlm", {"kill_points": [p for _, p in LITERTLM_POINTS], "orphaned_workers": orphans, "problems": problems})
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_sigkill_when_the_quantize_worker_is_seen_running(litertlm_baseline, tmp_path):
    """Hook-free: kill the build the moment its quantize worker process shows up (the worker is held
    at its start, so that it cannot come and go between two looks)."""
    import psutil

    baseline = litertlm_baseline
    store = _litertlm_store_without(baseline, tmp_path, "bundle.quantize.text_decoder")
    build = subprocess.Popen(
        [sys.executable, "-m", "modelforge.cli", "build", str(baseline["manifest"]), "--store", str(store)],
        cwd=baseline["project"], env=cli_env(MODELFORGE_PAUSE_AT=f"worker/quantize:{HOLD_SECONDS}"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    seen = None
    while time.monotonic() < deadline and build.poll() is None and seen is None:
        for child in psutil.Process(build.pid).children(recursive=True):
            try:
                if "litert.worker" in " ".join(child.cmdline()):
                    seen = child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.02)
    assert seen is not None, "the quantize worker never showed up"
    build.kill()
    build.wait(timeout=30)
    assert _orphans(store) == 0, "the quantize worker outlived the killed build"
    assert _check_litertlm(baseline, store, "quantize worker seen") == []
    rebuilt = api.build(baseline["manifest"], store_dir=store)
    assert rebuilt.ran == ["bundle.quantize.text_decoder"]
    assert records(store) == baseline["records"]
    assert tmp_entries(store) == []


@pytest.mark.slow
def test_a_sigkilled_build_leaves_no_worker_running(litertlm_baseline, tmp_path):
    """The export worker dies with the build (PR_SET_PDEATHSIG), even when the build gets SIGKILL."""
    store = _litertlm_store_without(litertlm_baseline, tmp_path, "bundle.export_vision")
    killed = cli("build", str(litertlm_baseline["manifest"]), "--store", str(store), cwd=litertlm_baseline["project"],
                 MODELFORGE_KILL_AT="litert_export/progress:2", timeout=300, **_held("litert_export/progress:2"))
    assert killed.returncode == -signal.SIGKILL
    assert _orphans(store) == 0, "a worker outlived the killed build"


def _as_in_a_terminal() -> None:
    """SIGINT as a terminal's foreground job has it. A shell starts a background job (`cmd &`,
    nohup, some CI runners) with SIGINT ignored, every child inherits that, and a Python started so
    never raises KeyboardInterrupt: the build would ignore the test's Ctrl-C and run to the end."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt_during_export(baseline, tmp_path: Path, how: str) -> None:
    """Start a build that exports, wait until its worker is inside litert-torch (held there at the
    fault point worker/export/convert, which it announces in the trace), send the signal, check
    the aftermath."""
    import psutil

    store = _litertlm_store_without(baseline, tmp_path, "bundle.export_vision")
    stderr, trace = tmp_path / "stderr.txt", tmp_path / "trace.txt"
    with open(stderr, "w") as err:
        build = subprocess.Popen(
            [sys.executable, "-m", "modelforge.cli", "build", str(baseline["manifest"]), "--store", str(store)],
            cwd=baseline["project"], stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, preexec_fn=_as_in_a_terminal,
            env=cli_env(MODELFORGE_PAUSE_AT=f"worker/export/convert:{HOLD_SECONDS}", MODELFORGE_FAULT_TRACE=str(trace)),
        )
    try:
        _wait_for_point(build, trace, "worker/export/convert")
        family = [build.pid] + [child.pid for child in psutil.Process(build.pid).children(recursive=True)]
        assert any("litert.worker" in " ".join(psutil.Process(pid).cmdline()) for pid in family[1:]), "no export worker"
        if how == "ctrl-c":  # a terminal sends SIGINT to the whole foreground process group
            os.killpg(build.pid, signal.SIGINT)
        elif how == "sigint":
            os.kill(build.pid, signal.SIGINT)
        else:
            os.kill(build.pid, signal.SIGTERM)
        code = build.wait(timeout=60)
    finally:
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGKILL)
    lines = stderr.read_text().strip().splitlines()
    assert code == 130, (how, code, lines[-5:])
    assert lines[-1] == "interrupted: finished steps are kept in the store; temporaries were removed", lines[-3:]
    assert "Traceback" not in stderr.read_text()
    assert _wait_gone(family) == [], f"{how}: processes left running"
    assert workers_of(store) == []
    assert tmp_entries(store) == [], f"{how}: store/tmp keeps {tmp_entries(store)}"
    assert store_problems(store) == []
    assert tree(baseline["project"] / "dist" / LITERTLM / "bundle") == baseline["tree"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigint", "sigterm"])
def test_interrupting_the_export_stops_cleanly(litertlm_baseline, tmp_path, how):
    _interrupt_during_export(litertlm_baseline, tmp_path, how)
