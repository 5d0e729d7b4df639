"""The executor: runs a plan against a store. A step whose key has a record with intact objects
is skipped; else, with a remote cache, its trusted record and re-hashed objects are pulled into the
store; only when both miss does it run, in a scratch directory: its outputs move into the store
under their hashes, and its record is written last (so a crash never leaves a record without its
objects); then it is pushed. It never prints: it reports to a Reporter, and it says why each step
ran, doit-style. Imports plan, store, remote, steps, errors; heavy imports happen inside the steps."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from modelforge.errors import ModelforgeError, RemoteError, SourceError, StepFailed, StoreError
from modelforge.hashing import hash_file
from modelforge.plan import Plan, StepNode, compute_keys
from modelforge.remote import RemoteCache
from modelforge.steps import STEPS
from modelforge.steps.base import InputFile, StepContext
from modelforge.store import (
    LINK_FROM,
    OUTPUT_DIR_MODE,
    FileRecord,
    Materialized,
    StepRecord,
    Store,
    fault_point,
    place_output,
    swap_into_place,
    storage_error,
)


class Reporter(Protocol):
    def step_started(self, name: str, kind: str, reason: str) -> None: ...
    def step_progress(self, name: str, done: int, total: int, message: str) -> None: ...
    def step_finished(self, name: str, ran: bool, seconds: float) -> None: ...
    def step_pulled(self, name: str, kind: str, size: int) -> None: ...
    def message(self, text: str) -> None: ...


class SilentReporter:
    def step_started(self, name: str, kind: str, reason: str) -> None: ...
    def step_progress(self, name: str, done: int, total: int, message: str) -> None: ...
    def step_finished(self, name: str, ran: bool, seconds: float) -> None: ...
    def step_pulled(self, name: str, kind: str, size: int) -> None: ...
    def message(self, text: str) -> None: ...


@dataclass(frozen=True)
class NodeStatus:
    name: str
    kind: str
    key: str
    parts: Mapping[str, Any]
    cached: bool
    reason: str  # why it would run (or "cached")
    remote: bool = False  # not in the local store, but a trusted record is in the remote cache: pulled, not run


def explain(parts: Mapping[str, Any], previous: Mapping[str, Any] | None) -> str:
    """Why a step must run, from its key parts and those recorded in the lock last time."""
    if not previous or "parts" not in previous:
        return "never built"
    before = previous["parts"]
    reasons = []
    if before.get("version") != parts["version"]:
        reasons.append(f"step version changed ({before.get('version')} → {parts['version']})")
    if before.get("params") != parts["params"]:
        reasons.append("parameters changed")
    changed = sorted(name for name in set(parts["inputs"]) | set(before.get("inputs", {})) if parts["inputs"].get(name) != before.get("inputs", {}).get(name))
    if changed:
        reasons.append("input changed: " + ", ".join(changed))
    tools = sorted(
        f"{tool} {before.get('tools', {}).get(tool, 'absent')} → {version}"
        for tool, version in parts["tools"].items()
        if before.get("tools", {}).get(tool) != version
    )
    if tools:
        reasons.append("toolchain changed: " + ", ".join(tools))
    return "; ".join(reasons) or "output missing from the store"


def statuses(
    plan: Plan, store: Store, toolchain: Mapping[str, str], previous_steps: Mapping[str, Any], remote: RemoteCache | None = None
) -> list[NodeStatus]:
    """What `build` would do, without doing it: cached or not, and why; with a remote cache, which
    of the others it would pull (a trusted record there; its objects are checked when pulled)."""
    keys = compute_keys(plan, toolchain)
    result = []
    for step in plan.steps:
        key, parts = keys[step.name]["key"], keys[step.name]["parts"]
        record = store.get_record(key)
        if record is not None and all(store.has_object(item) for item in record.outputs.values()):
            result.append(NodeStatus(step.name, step.kind, key, parts, True, "cached"))
        else:
            reason = explain(parts, previous_steps.get(step.name))
            if record is not None:
                reason = "output damaged or missing in the store"
            if remote is not None and _in_remote(remote, key):
                result.append(NodeStatus(step.name, step.kind, key, parts, False, f"in the remote cache {remote.url}", remote=True))
                continue
            result.append(NodeStatus(step.name, step.kind, key, parts, False, reason))
    return result


def _in_remote(remote: RemoteCache, key: str) -> bool:
    try:
        return remote.lookup(key).record is not None
    except RemoteError:
        return False  # out of reach: the build will say so, and run the step


def run_plan(
    plan: Plan,
    store: Store,
    source_paths: Mapping[str, Path],
    toolchain: Mapping[str, str],
    previous_steps: Mapping[str, Any],
    reporter: Reporter,
    measurements: dict[str, dict[str, Any]] | None = None,
    remote: RemoteCache | None = None,
) -> dict[str, StepRecord]:
    """Run every step that is not cached; return node name → record for all steps. Steps that
    measure themselves (seconds, peak memory of a worker) leave that in `measurements`. With a
    remote cache, a local miss is looked up there before running, and a step that ran is pushed
    (when the cache may be written): a failed push is a warning, never a failed build."""
    keys = compute_keys(plan, toolchain)
    records: dict[str, StepRecord] = {}
    verified_sources: set[str] = set()
    for step in plan.steps:
        key = keys[step.name]["key"]
        with store.lock(key):
            record = store.get_record(key)
            damaged = record is not None and not all(store.has_object(item) for item in record.outputs.values())
            if record is not None and not damaged:
                store.mark_used(key)
                reporter.step_finished(step.name, False, 0.0)
                records[step.name] = record
                continue
            started = time.monotonic()
            if remote is not None:
                try:
                    pulled = remote.fetch(key, store, lambda problem, name=step.name: reporter.message(f"warning: step {name}: {problem}"))
                except RemoteError as error:
                    # The cache is an optimization: out of reach, the build goes on without it.
                    reporter.message(f"warning: {error}; this build goes on without the remote cache")
                    pulled = remote = None
                if pulled is not None:
                    reporter.step_pulled(step.name, step.kind, sum(item.size for item in pulled.outputs.values()))
                    reporter.step_finished(step.name, False, time.monotonic() - started)
                    records[step.name] = pulled
                    continue
            reason = "output damaged or missing in the store" if damaged else explain(keys[step.name]["parts"], previous_steps.get(step.name))
            reporter.step_started(step.name, step.kind, reason)
            inputs = _inputs(plan, step, store, records, source_paths, verified_sources)
            records[step.name] = run_step(step, key, inputs, store, reporter, measurements)
            if remote is not None and remote.can_push:
                try:
                    if remote.push(records[step.name], store):
                        reporter.message(f"pushed {step.name} to {remote.url}")
                except RemoteError as error:
                    reporter.message(f"warning: step {step.name} was not pushed: {error}")
            reporter.step_finished(step.name, True, time.monotonic() - started)
    return records


def _inputs(plan, step: StepNode, store: Store, records, source_paths, verified: set[str]) -> dict[str, dict[str, InputFile]]:
    inputs: dict[str, dict[str, InputFile]] = {}
    for ref in step.inputs:
        files: dict[str, InputFile] = {}
        if ref.node == plan.source.name:
            for relative in ref.select or tuple(item.path for item in plan.source.files):
                expected = plan.source.file(relative)
                path = source_paths[relative]
                if relative not in verified:
                    # The plan was made from these hashes; make sure the bytes still are those.
                    actual = store.hashes.hash(path)
                    if actual != expected.sha256:
                        raise SourceError(
                            f"source file {relative} changed since it was planned (sha256 {actual[:12]}…, "
                            f"expected {expected.sha256[:12]}…); re-run the command"
                        )
                    verified.add(relative)
                files[relative] = InputFile(path, FileRecord(expected.sha256, expected.size))
        else:
            upstream = records[ref.node]
            for relative, item in upstream.outputs.items():
                if ref.select is None or relative in ref.select:
                    files[relative] = InputFile(store.object_path(item.sha256), item, in_store=True)
        inputs[ref.name] = files
    return inputs


def run_step(step: StepNode, key: str, inputs, store: Store, reporter: Reporter, measurements=None) -> StepRecord:
    """Run one step on inputs already at hand (here, or on a Ray worker: ray_executor), adopt its
    outputs into store and write its record last."""
    module = STEPS[step.kind]
    with store.scratch(step.name) as scratch:
        out_dir = scratch / "out"
        out_dir.mkdir()
        context = StepContext(
            params=step.params,
            inputs=inputs,
            out_dir=out_dir,
            scratch_dir=scratch,
            progress=lambda done, total, message: _progress(reporter, step, done, total, message),
            name=step.name,
        )
        fault_point(f"{step.kind}/start")
        try:
            module.run(context)
        except ModelforgeError:
            raise
        except MemoryError:
            raise StepFailed(f"step {step.name} ({step.kind}) ran out of memory; build on a machine with more RAM") from None
        except OSError as error:
            raise storage_error(error, f"running step {step.name}") from None
        except Exception as error:  # the user's model or the toolchain failed
            raise StepFailed(f"step {step.name} ({step.kind}) failed: {type(error).__name__}: {str(error)[:400]}") from error
        fault_point(f"{step.kind}/ran")
        outputs: dict[str, FileRecord] = {}
        for path in sorted(out_dir.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(out_dir).as_posix()
            sha = context.known_hashes.get(relative)
            if sha is None:
                sha = hash_file(path)
            outputs[relative] = FileRecord(sha, path.stat().st_size)
            fault_point(f"{step.kind}/adopt")
            store.adopt(path, sha)
        if measurements is not None and context.measurements:
            measurements[step.name] = dict(context.measurements)
    record = StepRecord(key, step.kind, outputs)
    fault_point(f"{step.kind}/record")
    store.put_record(record)
    return record


def _progress(reporter: Reporter, step: StepNode, done: int, total: int, message: str) -> None:
    fault_point(f"{step.kind}/progress")
    reporter.step_progress(step.name, done, total, message)



def materialize(records: Mapping[str, FileRecord], store: Store, destination: Path, link_from: int = LINK_FROM) -> list[Materialized]:
    """Lay out a target's files under destination, replacing what was there in one atomic swap:
    a crash, or a reader, sees the old complete target or the new one, never neither. Directories
    are 0755 and files 0644 (copies or reflinks), so that the tree deploys by copying; only files of
    link_from bytes or more that cannot be reflinked are hard links to their read-only store object."""

    placed = []
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        with store.staging(destination) as staging:
            os.chmod(staging, OUTPUT_DIR_MODE)  # it becomes destination; mkdtemp made it 0700
            for relative, item in sorted(records.items()):
                fault_point("materialize/link")
                # Checked again right before it is handed out (a cache lookup unless it changed).
                if not store.has_object(item):
                    raise StoreError(
                        f"the store object for {destination.name}/{relative} changed during the build; run `modelforge build` again"
                    )
                how = place_output(store.object_path(item.sha256), staging / relative, link_from)
                placed.append(Materialized(relative, how, item.size))
            for directory in [path for path in staging.rglob("*") if path.is_dir() and not path.is_symlink()]:
                os.chmod(directory, OUTPUT_DIR_MODE)
            fault_point("materialize/swap")
            swap_into_place(staging, destination)
            fault_point("materialize/swapped")
        # Reading (and linking, and removing the old tree's links) changed the objects' atime or
        # ctime, not their content, which was checked just above: re-stamp them, or the next no-op
        # build would re-hash them all.
        for item in records.values():
            store.hashes.remember(store.object_path(item.sha256), item.sha256)
        return placed
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise storage_error(error, f"writing {destination}") from None
        raise StoreError(f"cannot write {destination} ({error.strerror}); check its permissions or pass --out") from None
