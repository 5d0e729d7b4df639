"""Building: the `build` verb (run the plan, lay the targets out, rewrite the lock) on this machine
or, for one or more manifests at once, on a Ray cluster (ray_executor); its result, and the line
that says how a target's files were laid out. Imports api.caching, api.gathering, api.locking,
api.planning, api.project and executor, ray_executor, store, lock, memory and disk (the refusals before
anything runs); heavy imports happen inside the steps, and ray inside ray_executor."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from modelforge.api.attesting import attest
from modelforge.api.caching import remote_for, trusted_writers
from modelforge.api.gathering import gather
from modelforge.api.locking import CHECK_REPORTS, make_lock
from modelforge.api.planning import disk_need, opened, plan_for, previous_steps, tools_of
from modelforge.api.project import Project, open_project
from modelforge.disk import refuse_if_full, store_size
from modelforge.errors import ConfigError, LockError
from modelforge.executor import Reporter, SilentReporter, materialize_targets, needed_objects, run_plan, statuses
from modelforge.faults import fault_point
from modelforge.lock import Lock, differences, read_lock, read_lock_or_none, write_lock
from modelforge.memory import refuse_if_too_large
from modelforge.outputs import LINK_FROM, Materialized
from modelforge.plan import Plan
from modelforge.retention import budget_from
from modelforge.store import FileRecord, Store, default_store_dir

EXECUTORS = ("local", "ray")


@dataclass
class BuildResult:
    project: Project
    plan: Plan
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)  # includes the pulled ones
    pulled: list[str] = field(default_factory=list)  # from the remote cache
    out_dir: Path | None = None
    lock_written: bool = False
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)  # per step that ran and measured itself
    materialized: dict[str, list[Materialized]] = field(default_factory=dict)  # per target: how each file was laid out
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)  # the lock's `checks`: parity and architecture reports
    placements: dict[str, str] = field(default_factory=dict)  # --executor ray: step that ran → the Ray node id it ran on
    started: float = field(default_factory=time.time)  # for the provenance's runDetails


def describe_materialized(directory: Path, placed: list[Materialized]) -> str:
    """One line for the build's output: how a target's files were laid out, and that hard-linked
    files are store objects (read-only, never to be edited in place)."""
    counts = {how: [item for item in placed if item.how == how] for how in ("copy", "reflink", "link")}
    parts = [f"{len(counts['copy'])} copied"] + ([f"{len(counts['reflink'])} reflinked"] if counts["reflink"] else [])
    line = f"{directory}: {', '.join(parts)} (0644, directories 0755)"
    if counts["link"]:
        names = ", ".join(item.relative for item in counts["link"][:3]) + (" …" if len(counts["link"]) > 3 else "")
        line += (
            f"; {len(counts['link'])} hard-linked to read-only store objects (files of {LINK_FROM >> 20} MiB or more, mode 0444: "
            f"{names}): copy one before editing it"
        )
    return line


class _Counting:
    """Wraps a reporter to count which steps ran; label (the manifest's name, when several build
    at once) prefixes the step names the inner reporter sees."""

    def __init__(self, inner: Reporter, result: BuildResult, label: str = ""):
        self.inner, self.result, self.label = inner, result, label

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step_started(self, name: str, kind: str, reason: str) -> None:
        self.inner.step_started(self.label + name, kind, reason)

    def step_progress(self, name: str, done: int, total: int, message: str) -> None:
        self.inner.step_progress(self.label + name, done, total, message)

    def step_finished(self, name: str, ran: bool, seconds: float) -> None:
        (self.result.ran if ran else self.result.cached).append(name)
        self.inner.step_finished(self.label + name, ran, seconds)

    def step_pulled(self, name: str, kind: str, size: int) -> None:
        self.result.pulled.append(name)
        self.inner.step_pulled(self.label + name, kind, size)


def build(manifest_path: str | Path, **options) -> BuildResult:
    """Build every target of one manifest: build_many's keyword options, for one manifest."""
    return build_many([manifest_path], **options)[0]


def _build_here(
    manifest_path: str | Path, *, out, source_dir, store_dir, frozen, write_lockfile, reporter, memory_limit, disk_limit, cache, cache_read_only,
    store_budget=None,
) -> BuildResult:
    """One manifest, on this machine."""
    reporter = reporter or SilentReporter()
    project = open_project(manifest_path)
    remote = remote_for(project.root, cache, cache_read_only, reporter)
    trusted = trusted_writers(project.root)
    budget = budget_from(store_budget)
    with opened(project, store_dir, source_dir, reporter, need_weights=True) as (store, gathered, the_plan):
        toolchain = tools_of(the_plan)
        node_statuses = statuses(the_plan, store, toolchain, {}, remote, trusted)
        if the_plan.facts.get("memory"):
            # Refuse now, not after an hour of swapping: the largest predicted peak of a step that would
            # run (a step the remote cache has is pulled, not run).
            to_run = [status.name for status in node_statuses if not status.cached and not status.remote]
            refuse_if_too_large(the_plan.facts["memory"], to_run, memory_limit)
        # And now, not when the disk fills an hour in: the objects of the steps that run or are pulled.
        dist = Path(out) if out else project.default_out
        refuse_if_full(disk_need(the_plan, node_statuses, store, dist, budget), store.root, dist, disk_limit)
        admit = None
        if frozen:
            _check_frozen(project, make_lock(project, the_plan, toolchain, store))
            admit = _frozen_admit(project, the_plan)

        result = BuildResult(project, the_plan)
        records = run_plan(
            the_plan, store, gathered.paths, toolchain, previous_steps(project), _Counting(reporter, result), result.measurements, remote,
            trusted, admit, needed_objects(the_plan), budget, lambda: store_size(store.root),
        )
        result.out_dir = Path(out) if out else project.default_out
        outputs = {target.name: records[target.node].outputs for target in the_plan.targets}
        fresh = make_lock(project, the_plan, toolchain, store)
        _lay_out(result, outputs, fresh, store, frozen, write_lockfile, reporter)
        attest(result, fresh, reporter)  # signed provenance beside each target's files
        return result




def _frozen_admit(project: Project, the_plan: Plan):
    """Under --frozen, a target's record is held to the lock the moment it is known: before a check
    runs on it, or it is pushed."""
    pinned, targets = read_lock(project.lock_path), {target.node: target.name for target in the_plan.targets}

    def admit(step, record) -> None:
        if step.name in targets:
            _check_outputs_frozen(project, pinned, {targets[step.name]: record.outputs})

    return admit


def build_many(
    manifest_paths: Sequence[str | Path],
    *,
    out: Path | None = None,
    source_dir: Path | None = None,
    store_dir: Path | None = None,
    frozen: bool = False,
    write_lockfile: bool = True,
    reporter: Reporter | None = None,
    memory_limit: str | int | None = None,
    disk_limit: str | int | None = None,
    store_budget: str | int | None = None,
    cache: str | None = None,
    cache_read_only: bool = False,
    executor: str = "local",
    address: str | None = None,
) -> list[BuildResult]:
    """Build several manifests: one after another locally; on Ray, every step of all of them at
    once across the cluster, each placed by its predicted peak memory, files exchanged through the
    remote cache (which must be set and writable). With Ray the cluster's nodes, not this machine's
    memory_limit, bound what a step may need; disk_limit (else $MODELFORGE_DISK_LIMIT, else the
    free space) bounds what the store and dist/ may grow by, locally; store_budget (else
    $MODELFORGE_STORE_BUDGET, else none), locally, drops intermediates as retention.py says
    while the store is over it. cache: the remote cache's URL ('' for none; None:
    $MODELFORGE_CACHE, else modelforge.toml's cache.url); cache_read_only: pull but never push.
    executor: "local" (this machine), or "ray" (the cluster at address)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    if not manifest_paths:
        raise ConfigError("no manifest to build; name one or more manifest files")
    if out is not None and len(manifest_paths) > 1:
        raise ConfigError("--out names one directory, for one manifest; build several without it (each goes to dist/<name>/)")
    options = dict(out=out, source_dir=source_dir, store_dir=store_dir, frozen=frozen, write_lockfile=write_lockfile, reporter=reporter, cache=cache)
    if executor == "local":
        return [
            _build_here(path, memory_limit=memory_limit, disk_limit=disk_limit, cache_read_only=cache_read_only, store_budget=store_budget, **options)
            for path in manifest_paths
        ]
    return _build_on_ray(manifest_paths, address=address, cache_read_only=cache_read_only, **options)


def _build_on_ray(
    manifest_paths: Sequence[str | Path], *, out, source_dir, store_dir, frozen, write_lockfile, reporter, cache, cache_read_only, address
) -> list[BuildResult]:
    from modelforge import ray_executor

    ray_executor.import_ray()  # one line saying how to install it, before anything is read
    reporter = reporter or SilentReporter()
    projects = [open_project(path) for path in manifest_paths]
    remotes = {str(project.root): remote_for(project.root, cache, cache_read_only) for project in projects}
    if len({None if remote is None else remote.url for remote in remotes.values()}) > 1:
        raise ConfigError("the manifests' projects name different remote caches; build them with one --cache URL")
    ray_executor.check_remote(next(iter(remotes.values())))
    remote = remote_for(projects[0].root, cache, cache_read_only, reporter)  # again, saying what is missing (keys)
    several = len(projects) > 1
    store = Store(store_dir or default_store_dir())
    try:
        jobs, results = [], []
        for project in projects:
            gathered = gather(project, store, source_dir, reporter, need_weights=True)
            the_plan = plan_for(project, gathered)
            toolchain = tools_of(the_plan)
            if frozen:
                _check_frozen(project, make_lock(project, the_plan, toolchain, store))
            result = BuildResult(project, the_plan)
            label = f"{project.manifest.name}:" if several else ""
            needed = {target.node for target in the_plan.targets} | {step.name for step in the_plan.steps if step.kind in CHECK_REPORTS}
            job = ray_executor.Job(
                the_plan, gathered.paths, toolchain, previous_steps(project), _Counting(reporter, result, label), frozenset(needed), label,
                measurements=result.measurements, placements=result.placements, trusted=frozenset(trusted_writers(project.root)),
            )
            jobs.append(job)
            results.append(result)
        ray_executor.run_plans(jobs, store, remote, address)
        for job, result in zip(jobs, results):
            project, the_plan = result.project, result.plan
            result.out_dir = Path(out) if out else project.default_out
            outputs = {target.name: job.records[target.node].outputs for target in the_plan.targets}
            fresh = make_lock(project, the_plan, job.toolchain, store)
            _lay_out(result, outputs, fresh, store, frozen, write_lockfile, reporter)
            attest(result, fresh, reporter)  # signed provenance beside each target's files
        return results
    finally:
        store.close()


def _lay_out(
    result: BuildResult, outputs: dict[str, Mapping[str, FileRecord]], fresh: Lock, store: Store, frozen: bool, write_lockfile: bool,
    reporter: Reporter,
) -> None:
    """Put the built targets under result.out_dir, bound by the lock. --frozen: every target file
    must be the one the lock pins, checked before anything reaches dist/. Otherwise a pinned output
    that changes is a warning, and dist/ keeps what the old lock pins until the new lock is written
    (the targets are staged, the lock written, then each target swapped in)."""
    project = result.project
    result.checks = dict(fresh.checks)
    pinned = read_lock(project.lock_path) if frozen else read_lock_or_none(project.lock_path)
    if frozen:
        _check_outputs_frozen(project, pinned, outputs)
    elif pinned is not None:
        changed = _changed_outputs(pinned, outputs)
        if changed:
            shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
            reporter.message(
                f"warning: this build changes what {project.lock_path.name} pins: {shown}; the lock is rewritten to pin the new bytes: "
                "review that diff (an input changed, the build is not reproducible, or a cached record names other bytes)"
            )

    def write_the_lock() -> None:
        if write_lockfile and not frozen:
            fault_point("build/lock")
            result.lock_written = write_lock(project.lock_path, fresh)

    names = list(outputs)  # the plan's order
    placed = materialize_targets([(outputs[name], result.out_dir / name) for name in names], store, before_swap=write_the_lock)
    for name, files in zip(names, placed):
        result.materialized[name] = files
        reporter.message(describe_materialized(result.out_dir / name, files))


def _check_outputs_frozen(project: Project, pinned: Lock, outputs: dict[str, Mapping[str, FileRecord]]) -> None:
    for name, files in sorted(outputs.items()):
        locked = pinned.targets.get(name)
        if locked is None or locked.files is None:
            raise LockError(
                f"--frozen: {project.lock_path.name} pins no files for target {name} (never built); nothing was written to dist/: "
                f"build without --frozen, then commit the lock"
            )
        differing = sorted(file for file in set(files) | set(locked.files) if _sha(files.get(file)) != _sha(locked.files.get(file)))
        if differing:
            first = differing[0]
            more = f" (and {len(differing) - 1} more file(s))" if len(differing) > 1 else ""
            raise LockError(
                f"--frozen: {name}/{first} is sha256 {_sha(files.get(first)) or 'absent'} in this build but {_sha(locked.files.get(first)) or 'absent'} "
                f"in {project.lock_path.name}{more}; nothing was written to dist/: a cached or pulled record names other bytes, or the "
                "build is not reproducible (build with --cache '' and a fresh --store to tell which)"
            )


def _changed_outputs(pinned: Lock, outputs: dict[str, Mapping[str, FileRecord]]) -> list[str]:
    """"target/file old…→new…" for every file whose pinned sha256 this build changes."""
    changed = []
    for name, files in sorted(outputs.items()):
        locked = pinned.targets.get(name)
        if locked is None or locked.files is None:
            continue
        for file in sorted(set(files) | set(locked.files)):
            old, new = _sha(locked.files.get(file)), _sha(files.get(file))
            if old != new:
                changed.append(f"{name}/{file} {old[:12] + '…' if old else 'absent'}→{new[:12] + '…' if new else 'absent'}")
    return changed


def _sha(item) -> str | None:
    return None if item is None else item.sha256


def _check_frozen(project: Project, fresh: Lock) -> None:
    if not project.lock_path.exists():
        raise LockError(f"--frozen: {project.lock_path} does not exist; run `modelforge lock {project.relative_manifest}` first")
    found = differences(read_lock(project.lock_path), fresh)
    if found:
        raise LockError(
            f"--frozen: {project.lock_path.name} is out of date ({'; '.join(found)}); "
            f"run `modelforge lock {project.relative_manifest}` and commit the lock"
        )
