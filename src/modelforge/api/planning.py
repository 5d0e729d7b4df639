"""Planning: the opening every command shares (the store, the source's gathered facts, the plan;
`opened`), and the `plan` verb, which says what a build would run and why, and the disk it needs
(disk_need, which `build` checks too). Imports api.gathering, api.caching (which remote), api.project
and planner, executor, store, lock, toolchain, disk; never torch."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelforge.api.caching import remote_for, trusted_writers
from modelforge.api.gathering import Gathered, gather
from modelforge.api.project import Project, open_project
from modelforge.disk import DiskNeed, Retention, need
from modelforge.errors import LockError
from modelforge.executor import NodeStatus, Reporter, SilentReporter, needed_objects, statuses
from modelforge.lock import read_lock
from modelforge.manifest import manifest_digest
from modelforge.plan import Plan
from modelforge.planner import make_plan
from modelforge.retention import budget_from
from modelforge.steps import KEPT
from modelforge.store import Store, default_store_dir
from modelforge.toolchain import versions


def plan_for(project: Project, gathered: Gathered) -> Plan:
    return make_plan(project.manifest, gathered.facts, str(project.manifest_path), manifest_digest(project.manifest))


def tools_of(plan: Plan) -> dict[str, str]:
    return versions(tool for step in plan.steps for tool in step.tools)


@dataclass
class PlanReport:
    project: Project
    plan: Plan
    toolchain: dict[str, str]
    statuses: list[NodeStatus]
    planned_from: str | None = None  # set when planned from reference data (the Hub out of reach)
    disk: DiskNeed | None = None  # what the steps that would run (or be pulled) write, and the store after them
    store_root: Path | None = None


def disk_need(the_plan: Plan, node_statuses: list[NodeStatus], store: Store, dist: Path, budget: int | None = None) -> DiskNeed:
    """The disk a build of the_plan needs: the new objects of the steps the store lacks (run or
    pulled, both write them) and the copies laid out in dist; with a store budget, less what the
    build drops as it goes (retention.py, simulated on the predicted sizes)."""
    facts = the_plan.facts.get("disk", {})
    retention = None
    if budget is not None:
        retention = Retention(
            budget, {step.name: [ref.node for ref in step.inputs] for step in the_plan.steps}, set(needed_objects(the_plan)),
            {step.name for step in the_plan.steps if step.kind in KEPT},
        )
    return need(facts, [status.name for status in node_statuses if not status.cached], facts.get("targets", {}), store.root, dist, retention)


def previous_steps(project: Project) -> dict[str, Any]:
    if not project.lock_path.exists():
        return {}
    try:
        return {name: step.model_dump() for name, step in read_lock(project.lock_path).steps.items()}
    except LockError:
        return {}


@contextmanager
def opened(project: Project, store_dir: Path | None, source_dir: Path | None, reporter: Reporter, need_weights: bool):
    """The opening every command shares: the store, the source's facts, the plan. Closes the store."""
    store = Store(store_dir or default_store_dir())
    try:
        gathered = gather(project, store, source_dir, reporter, need_weights=need_weights)
        yield store, gathered, plan_for(project, gathered)
    finally:
        store.close()


def plan(
    manifest_path: str | Path, *, source_dir: Path | None = None, store_dir: Path | None = None, reporter: Reporter | None = None,
    cache: str | None = None, store_budget: str | int | None = None,
) -> PlanReport:
    """What a build would do. With a remote cache (cache, else $MODELFORGE_CACHE, else
    modelforge.toml), the steps it would pull rather than run are marked `remote`. store_budget
    (else $MODELFORGE_STORE_BUDGET): the disk figures count what the build would drop."""
    budget = budget_from(store_budget)
    project = open_project(manifest_path)
    reporter = reporter or SilentReporter()
    with opened(project, store_dir, source_dir, reporter, need_weights=False) as (store, gathered, the_plan):
        toolchain = tools_of(the_plan)
        previous = {} if gathered.planned_from else previous_steps(project)
        remote = None if gathered.planned_from else remote_for(project.root, cache, read_only=True, reporter=reporter)
        node_statuses = statuses(the_plan, store, toolchain, previous, remote, trusted_writers(project.root))
        return PlanReport(
            project, the_plan, toolchain, node_statuses, gathered.planned_from, disk_need(the_plan, node_statuses, store, project.default_out, budget),
            store.root,
        )
