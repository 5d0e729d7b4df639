"""Building: the `build` verb (run the plan, lay the targets out, rewrite the lock), its result,
and the line that says how a target's files were laid out. Imports api.caching, api.locking,
api.planning, api.project and executor, store, lock; heavy imports happen inside the steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelforge.api.caching import remote_for
from modelforge.api.locking import make_lock
from modelforge.api.planning import opened, previous_steps, tools_of
from modelforge.api.project import Project, open_project
from modelforge.errors import LockError
from modelforge.executor import Reporter, SilentReporter, materialize, run_plan, statuses
from modelforge.lock import Lock, differences, read_lock, write_lock
from modelforge.plan import Plan
from modelforge.store import LINK_FROM, Materialized


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
    """Wraps a reporter to count which steps ran."""

    def __init__(self, inner: Reporter, result: BuildResult):
        self.inner, self.result = inner, result

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step_finished(self, name: str, ran: bool, seconds: float) -> None:
        (self.result.ran if ran else self.result.cached).append(name)
        self.inner.step_finished(name, ran, seconds)

    def step_pulled(self, name: str, kind: str, size: int) -> None:
        self.result.pulled.append(name)
        self.inner.step_pulled(name, kind, size)


def build(
    manifest_path: str | Path,
    *,
    out: Path | None = None,
    source_dir: Path | None = None,
    store_dir: Path | None = None,
    frozen: bool = False,
    write_lockfile: bool = True,
    reporter: Reporter | None = None,
    memory_limit: str | int | None = None,
    cache: str | None = None,
    cache_read_only: bool = False,
) -> BuildResult:
    """Build every target. cache: the remote cache's URL ('' for none; None: $MODELFORGE_CACHE,
    else modelforge.toml's cache.url); cache_read_only: pull but never push."""
    reporter = reporter or SilentReporter()
    project = open_project(manifest_path)
    remote = remote_for(project.root, cache, cache_read_only, reporter)
    with opened(project, store_dir, source_dir, reporter, need_weights=True) as (store, gathered, the_plan):
        toolchain = tools_of(the_plan)
        if the_plan.facts.get("memory"):
            # Refuse now, not after an hour of swapping: the largest predicted peak of a step that would
            # run (a step the remote cache has is pulled, not run).
            from modelforge.memory import refuse_if_too_large

            to_run = [status.name for status in statuses(the_plan, store, toolchain, {}, remote) if not status.cached and not status.remote]
            refuse_if_too_large(the_plan.facts["memory"], to_run, memory_limit)
        if frozen:
            _check_frozen(project, make_lock(project, the_plan, toolchain, store))
        result = BuildResult(project, the_plan)
        records = run_plan(
            the_plan, store, gathered.paths, toolchain, previous_steps(project), _Counting(reporter, result), result.measurements, remote
        )
        result.out_dir = Path(out) if out else project.default_out
        for target in the_plan.targets:
            placed = materialize(records[target.node].outputs, store, result.out_dir / target.name)
            result.materialized[target.name] = placed
            reporter.message(describe_materialized(result.out_dir / target.name, placed))
        fresh = make_lock(project, the_plan, toolchain, store)
        result.checks = dict(fresh.checks)
        if write_lockfile and not frozen:
            result.lock_written = write_lock(project.lock_path, fresh)
        return result


def _check_frozen(project: Project, fresh: Lock) -> None:
    if not project.lock_path.exists():
        raise LockError(f"--frozen: {project.lock_path} does not exist; run `modelforge lock {project.relative_manifest}` first")
    found = differences(read_lock(project.lock_path), fresh)
    if found:
        raise LockError(
            f"--frozen: {project.lock_path.name} is out of date ({'; '.join(found)}); "
            f"run `modelforge lock {project.relative_manifest}` and commit the lock"
        )
