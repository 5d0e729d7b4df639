"""Locking: the lock of a plan (`make_lock`), the `lock` verb that writes or checks lock/<name>.lock
without building, and the offline check of a manifest against its lock. Imports api.planning,
api.project and lock, manifest, plan, store, executor; never torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

from modelforge.api.caching import trusted_writers
from modelforge.api.planning import opened, tools_of
from modelforge.api.project import Project, open_project
from modelforge.errors import LockError
from modelforge.executor import Reporter, SilentReporter
from modelforge.figures import stable_report
from modelforge.lock import (
    PENDING,
    Lock,
    LockedFile,
    LockedManifest,
    LockedSource,
    LockedStep,
    LockedTarget,
    differences,
    read_lock,
    read_lock_or_none,
    write_lock,
)
from modelforge.manifest import changed_fields, manifest_digest
from modelforge.plan import Plan, compute_keys
from modelforge.steps import CHECK_REPORTS  # step kind → the report the lock records under `checks`
from modelforge.store import Store, unusable_because


def make_lock(project: Project, the_plan: Plan, toolchain: Mapping[str, str], store: Store, pending: bool = False) -> Lock:
    """The lock of a plan. pending: the plan was made from reference data (the Hub out of reach), so
    the lock pins what is known without the bytes (manifest, repo and commit, toolchain, targets)
    and marks the source's files as pending; step keys, which hash those files, are left out."""
    if pending:
        origin = the_plan.source.origin
        return Lock(
            manifest=LockedManifest(
                name=project.manifest.name, path=project.relative_manifest, digest=the_plan.manifest_digest,
                content=project.manifest.model_dump(mode="json"),
            ),
            source=LockedSource(kind="hub", repo=origin["repo"], revision=origin["revision"], files=None, status=PENDING),
            toolchain=dict(toolchain),
            steps={},
            targets={target.name: LockedTarget(kind=target.kind, node=target.node) for target in the_plan.targets},
        )
    keys = compute_keys(the_plan, toolchain)
    origin = the_plan.source.origin
    trusted = trusted_writers(project.root)

    def usable(key: str):
        # A record a revoked key signed (or one that does not say who wrote it) pins nothing.
        record = store.get_record(key)
        return record if record is not None and unusable_because(record, trusted) is None else None

    targets = {}
    for target in the_plan.targets:
        record = usable(keys[target.node]["key"])
        files = {name: LockedFile(sha256=item.sha256, size=item.size) for name, item in record.outputs.items()} if record else None
        targets[target.name] = LockedTarget(kind=target.kind, node=target.node, files=files)
    checks = {}
    for step in the_plan.steps:
        report = CHECK_REPORTS.get(step.kind)
        record = usable(keys[step.name]["key"]) if report else None
        if record is not None and report in record.outputs:
            checks[step.name] = stable_report(json.loads(store.object_path(record.outputs[report].sha256).read_text()))
    return Lock(
        checks=checks,
        manifest=LockedManifest(
            name=project.manifest.name, path=project.relative_manifest, digest=the_plan.manifest_digest,
            content=project.manifest.model_dump(mode="json"),
        ),
        source=LockedSource(
            kind=origin["kind"],
            repo=origin.get("repo"),
            revision=origin.get("revision"),
            path=origin.get("path"),
            files={item.path: LockedFile(sha256=item.sha256, size=item.size) for item in the_plan.source.files},
        ),
        toolchain=dict(toolchain),
        steps={
            step.name: LockedStep(kind=step.kind, key=keys[step.name]["key"], parts=keys[step.name]["parts"])
            for step in the_plan.steps
        },
        targets=targets,
    )


def lock(manifest_path: str | Path, *, source_dir: Path | None = None, store_dir: Path | None = None, check: bool = False, reporter: Reporter | None = None) -> tuple[Path, bool]:
    """Write (or with check, compare) lock/<name>.lock without building. Target outputs are
    filled in from the store where a build already made them."""
    project = open_project(manifest_path)
    if check:
        _check_manifest_against_lock(project)
    with opened(project, store_dir, source_dir, reporter or SilentReporter(), need_weights=False) as (store, gathered, the_plan):
        fresh = make_lock(project, the_plan, tools_of(the_plan), store, pending=gathered.planned_from is not None)
    if check:
        old = read_lock(project.lock_path)
        found = differences(old, fresh)
        if old.source.files is None and fresh.source.files is not None:
            found = ["source (its files are pending first access, and the source is reachable now)", *[f for f in found if f != "source"]]
        elif fresh.source.files is None:
            # Planned from reference data: the files and step keys cannot be checked, everything else can.
            found = [f for f in found if f != "source" and not f.startswith("steps")]
            if (old.source.repo, old.source.revision) != (fresh.source.repo, fresh.source.revision):
                found.append("source (repository or revision)")
        if found:
            raise LockError(
                f"{project.relative_manifest}: {project.lock_path.name} is out of date ({'; '.join(found)}); "
                f"run `modelforge lock {project.relative_manifest}`"
            )
        return project.lock_path, False
    old = read_lock_or_none(project.lock_path)
    if old is not None and old.source.files is not None and fresh.source.files is None:
        raise LockError(
            f"{project.lock_path.name} pins the files of {old.source.repo}@{old.source.revision} and the Hub cannot be reached "
            "to check them; it is kept as it is: run again with the Hub reachable, or with `--source-dir DIR`"
        )
    if old is not None:
        # Keep what a build recorded for targets when this lock cannot know it (same step key only).
        def kept(name: str, target: LockedTarget) -> LockedTarget:
            before = old.targets.get(name)
            same = old.steps.get(target.node) and fresh.steps.get(target.node) and old.steps[target.node].key == fresh.steps[target.node].key
            return target.model_copy(update={"files": before.files}) if target.files is None and before and same else target

        targets = {name: kept(name, target) for name, target in fresh.targets.items()}
        fresh = fresh.model_copy(update={"targets": targets, "checks": fresh.checks or old.checks})
    return project.lock_path, write_lock(project.lock_path, fresh)


def _check_manifest_against_lock(project: Project) -> None:
    """The offline half of `lock --check`: the manifest must be the one the lock was made from.
    Names the changed fields, from the manifest content the lock keeps."""
    if not project.lock_path.exists():
        raise LockError(f"{project.lock_path} does not exist; run `modelforge lock {project.relative_manifest}` and commit it")
    locked = read_lock(project.lock_path).manifest
    if locked.digest == manifest_digest(project.manifest):
        return
    changed = [change.path for change in changed_fields(locked.content, project.manifest.model_dump(mode="json"))]
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    raise LockError(
        f"{project.relative_manifest} changed since {project.lock_path.name} was written ({shown or 'content'}); "
        f"run `modelforge lock {project.relative_manifest}` and commit the lock"
    )
