"""The executor: runs a plan against a store. A step whose key has a usable record (intact objects,
written here or pulled under a key still trusted, made from the very input bytes it is used with)
is skipped; else, with a remote cache, its trusted record and re-hashed objects are pulled into the
store; only when both miss does it run, in a scratch directory: its outputs move into the store
under their hashes, and its record is written last (so a crash never leaves a record without its
objects); then it is pushed. It never prints: it reports to a Reporter, and it says why each step
ran, doit-style.

It builds on demand (`demand`): a step whose record stands but whose objects are gone (dropped under
a store budget, retention.py) is not run when no target, no check and no step that runs reads
them. With a budget, the objects of the plan's intermediate steps are dropped as the build goes,
once every step reading them has run, in retention.py's order.
Imports plan, store, remote, retention, steps, errors; heavy imports happen inside the steps."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path
from contextlib import ExitStack
from typing import Any, Callable, Collection, Mapping, Protocol, Sequence

from modelforge.disk import size_text
from modelforge.errors import ModelforgeError, RemoteError, SourceError, StepFailed, StoreError
from modelforge.faults import fault_point
from modelforge.hashing import hash_file
from modelforge.outputs import LINK_FROM, OUTPUT_DIR_MODE, Materialized, place_output, swap_into_place
from modelforge.plan import Plan, StepNode, compute_keys
from modelforge.remote import RemoteCache
from modelforge.retention import Candidate, choose, consumers, ready
from modelforge.steps import CHECK_REPORTS, KEPT, STEPS
from modelforge.steps.base import InputFile, StepContext
from modelforge.store import BUILT_HERE, FileRecord, StepRecord, Store, storage_error, unusable_because


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
    plan: Plan, store: Store, toolchain: Mapping[str, str], previous_steps: Mapping[str, Any], remote: RemoteCache | None = None,
    trusted: Collection[str] = frozenset(),
) -> list[NodeStatus]:
    """What `build` would do, without doing it: cached or not, and why; with a remote cache, which
    of the others it would pull (a trusted record there; its objects are checked when pulled).
    trusted: the public keys (name:base64) whose pulled records are still usable."""
    keys = compute_keys(plan, toolchain)
    result = []
    usable: dict[str, StepRecord] = {}
    skipped = demand(plan, store, keys, needed_objects(plan), trusted)
    for step in plan.steps:
        key, parts = keys[step.name]["key"], keys[step.name]["parts"]
        record = store.get_record(key)
        if step.name in skipped and record is not None:
            usable[step.name] = record
            result.append(NodeStatus(step.name, step.kind, key, parts, True, "cached (objects dropped; nothing that runs reads them)"))
            continue
        damaged = record is not None and not all(store.has_object(item) for item in record.outputs.values())
        problem = None if record is None or damaged else unusable_record(step, record, input_digests(plan, step, usable), trusted)
        if record is not None and not damaged and problem is None:
            usable[step.name] = record
            result.append(NodeStatus(step.name, step.kind, key, parts, True, "cached"))
        else:
            reason = explain(parts, previous_steps.get(step.name))
            if damaged:
                reason = "output damaged or missing in the store"
            elif problem is not None:
                reason = problem
            if remote is not None and _in_remote(remote, key):
                result.append(NodeStatus(step.name, step.kind, key, parts, False, f"in the remote cache {remote.url}", remote=True))
                continue
            result.append(NodeStatus(step.name, step.kind, key, parts, False, reason))
    return result


def needed_objects(plan: Plan) -> dict[str, Collection[str] | None]:
    """The objects a build must hold at its end, by step: every file of each target, the report of
    each check (the lock reads it). Other steps' objects are needed only by a step that runs."""
    needed: dict[str, Collection[str] | None] = {step.name: (CHECK_REPORTS[step.kind],) for step in plan.steps if step.kind in CHECK_REPORTS}
    needed |= {target.node: None for target in plan.targets}
    return needed


def demand(
    plan: Plan, store: Store, keys: Mapping[str, Mapping[str, Any]], needed: Mapping[str, Collection[str] | None] | None,
    trusted: Collection[str] = frozenset(),
) -> set[str]:
    """The steps to skip although some of their objects are gone: their record stands, and neither
    `needed` (step → files, None for all) nor any step that must run reads what is missing. Walks
    the plan backwards, so that a step knows whether its readers run before it is decided.
    needed None: every object of every step is needed (nothing is skipped)."""
    if needed is None:
        return set()
    usable: dict[str, StepRecord] = {}
    for step in plan.steps:
        record = store.get_record(keys[step.name]["key"])
        if record is not None and unusable_record(step, record, input_digests(plan, step, usable), trusted) is None:
            usable[step.name] = record
    readers: dict[str, list[StepNode]] = {step.name: [] for step in plan.steps}
    for step in plan.steps:
        for ref in step.inputs:
            if ref.node in readers:
                readers[ref.node].append(step)
    runs: set[str] = set()
    skipped: set[str] = set()
    for step in reversed(plan.steps):
        record = usable.get(step.name)
        if record is None:
            runs.add(step.name)
            continue
        wanted: set[str] = set()
        if step.name in needed:
            wanted |= set(record.outputs) if needed[step.name] is None else set(needed[step.name])
        for reader in readers[step.name]:
            if reader.name in runs:
                for ref in reader.inputs:
                    if ref.node == step.name:
                        wanted |= set(record.outputs) if ref.select is None else set(ref.select)
        missing = [name for name in record.outputs if not store.object_path(record.outputs[name].sha256).exists()]
        if any(name in wanted for name in missing):
            runs.add(step.name)
        elif missing:
            skipped.add(step.name)
    return skipped


# Steps whose record is a verdict on their inputs ("28 tensors fit Gemma3ForCausalLM", parity
# figures) rather than bytes made from them: such a record must say which bytes it judged.
VERDICTS = frozenset({"check_architecture", "litert_parity", "onnx_parity"})


def input_digests(plan: Plan, step: StepNode, records: Mapping[str, StepRecord]) -> dict[str, str] | None:
    """"<input>/<file>" → sha256 of every file the step reads, from the plan (source files) and the
    upstream records it would be given; None when an upstream record is not at hand."""
    digests = {}
    for ref in step.inputs:
        if ref.node == plan.source.name:
            for relative in ref.select or tuple(item.path for item in plan.source.files):
                digests[f"{ref.name}/{relative}"] = plan.source.file(relative).sha256
        elif ref.node in records:
            for relative, item in records[ref.node].outputs.items():
                if ref.select is None or relative in ref.select:
                    digests[f"{ref.name}/{relative}"] = item.sha256
        else:
            return None
    return digests


def unusable_record(step: StepNode, record: StepRecord, actual: Mapping[str, str] | None, trusted: Collection[str]) -> str | None:
    """Why a record (local, or just pulled) must not stand for this step here, or None: its writer is
    not trusted any more, or it was made from (a check: it judged) other bytes than the inputs now."""
    problem = unusable_because(record, trusted)
    if problem is not None:
        return problem
    if record.inputs is None:
        return f"its record does not say which bytes it checked (an older modelforge); {step.kind} runs again" if step.kind in VERDICTS else None
    if actual is None:
        return None  # `plan`, before an upstream step is built: the build compares them then
    if dict(record.inputs) != dict(actual):
        changed = sorted(name for name in set(record.inputs) | set(actual) if record.inputs.get(name) != actual.get(name))
        return f"its record was made from other input bytes ({', '.join(changed[:3])}{' …' if len(changed) > 3 else ''})"
    return None


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
    trusted: Collection[str] = frozenset(),
    admit: Callable[[StepNode, StepRecord], None] | None = None,
    needed: Mapping[str, Collection[str] | None] | None = None,
    budget: int | None = None,
    store_bytes: Callable[[], int] | None = None,
) -> dict[str, StepRecord]:
    """Run every step that is not cached; return node name → record for all steps. Steps that
    measure themselves (seconds, peak memory of a worker) leave that in `measurements`. With a
    remote cache, a local miss is looked up there before running, and a step that ran is pushed
    (when the cache may be written): a failed push is a warning, never a failed build. A record
    is used only when usable (see unusable_record; trusted: the public keys whose pulled records are).
    admit, when given, sees each step's record (cached, pulled or made) before any later step uses
    it, and raises to refuse it (`build --frozen` refuses a target the lock does not pin).
    needed (needed_objects): what must be at hand at the end; a step whose objects are gone and that
    nothing needs is skipped (demand). None: every object (nothing skipped). budget (bytes, with
    store_bytes measuring the store): over it, intermediates are dropped as the build goes (retention)."""
    keys = compute_keys(plan, toolchain)
    records: dict[str, StepRecord] = {}
    verified_sources: set[str] = set()
    skipped = demand(plan, store, keys, needed, trusted)
    retain = _Retention(plan, store, keys, records, needed or {}, budget, store_bytes, reporter) if budget is not None else None
    for step in plan.steps:
        key = keys[step.name]["key"]
        with store.lock(key):
            record = store.get_record(key)
            # A skipped step's objects are gone and nothing needs them (demand): only its record is used.
            damaged = record is not None and step.name not in skipped and not all(store.has_object(item) for item in record.outputs.values())
            problem = None if record is None or damaged else unusable_record(step, record, input_digests(plan, step, records), trusted)
            if record is not None and not damaged and problem is None:
                if admit is not None:
                    admit(step, record)
                store.mark_used(key)
                reporter.step_finished(step.name, False, 0.0)
                records[step.name] = record
                if retain is not None:
                    retain.handled(step.name)
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
                    stale = unusable_record(step, pulled, input_digests(plan, step, records), trusted)
                    if stale is None:
                        if admit is not None:
                            admit(step, pulled)
                        reporter.step_pulled(step.name, step.kind, sum(item.size for item in pulled.outputs.values()))
                        reporter.step_finished(step.name, False, time.monotonic() - started)
                        records[step.name] = pulled
                        if retain is not None:
                            retain.handled(step.name)
                        continue
                    reporter.message(f"warning: step {step.name}: the remote record {key[:12]}… is not used: {stale}; the step runs locally")
                    problem = stale
            if damaged:
                reason = "output damaged or missing in the store"
            elif problem is not None:
                reason = problem
            else:
                reason = explain(keys[step.name]["parts"], previous_steps.get(step.name))
            reporter.step_started(step.name, step.kind, reason)
            inputs = _inputs(plan, step, store, records, source_paths, verified_sources)
            records[step.name] = run_step(step, key, inputs, store, reporter, measurements)
            if admit is not None:
                admit(step, records[step.name])
            if remote is not None and remote.can_push:
                try:
                    if remote.push(records[step.name], store):
                        reporter.message(f"pushed {step.name} to {remote.url}")
                except RemoteError as error:
                    reporter.message(f"warning: step {step.name} was not pushed: {error}")
            reporter.step_finished(step.name, True, time.monotonic() - started)
        if retain is not None:
            retain.handled(step.name)
    return records


class _Retention:
    """Drops intermediates as the build goes when the store is over its budget (retention.py)."""

    def __init__(self, plan: Plan, store: Store, keys: Mapping[str, Mapping[str, Any]], records: Mapping[str, StepRecord], needed,
                 budget: int, measure, reporter: Reporter):
        self.store, self.records, self.budget, self.measure, self.reporter = store, records, budget, measure, reporter
        self.readers = consumers([(step.name, [ref.node for ref in step.inputs]) for step in plan.steps])
        self.protected = set(needed)
        self.costly = {step.name for step in plan.steps if step.kind in KEPT}
        self.done: set[str] = set()
        self.dropped: set[str] = set()
        # The stored records of the steps still to come: an object one of them names (the same test
        # card in two references) stays until that step is handled, or it would find it gone and run.
        self.coming = {step.name: record for step in plan.steps if (record := store.get_record(keys[step.name]["key"])) is not None}

    def handled(self, name: str) -> None:
        self.done.add(name)
        ready_now = ready(self.readers, self.done, self.protected, self.dropped)
        if not ready_now:
            return
        size = self.measure()
        if size <= self.budget:
            return
        # An object a step that stays also names (a pass-through: the web bundle's .task) is never dropped.
        kept = {item.sha256 for step, record in self.records.items() if step not in ready_now or step in self.protected for item in record.outputs.values()}
        kept |= {item.sha256 for step, record in self.coming.items() if step not in self.done for item in record.outputs.values()}
        frees = {}
        for step in ready_now:
            objects = {item.sha256: item.size for item in self.records[step].outputs.values() if item.sha256 not in kept}
            frees[step] = {sha: size for sha, size in objects.items() if self.store.object_path(sha).exists()}
        chosen = choose([Candidate(step, sum(frees[step].values()), step in self.costly) for step in ready_now], size, self.budget)
        for step in chosen:
            for sha in frees[step]:
                self.store.remove_object(sha)
            self.dropped.add(step)
            freed = sum(frees[step].values())
            if freed:
                self.reporter.message(f"store over its budget: dropped {step}'s objects ({size_text(freed)}; its record stays)")


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
                    if not store.object_path(item.sha256).exists():
                        # Dropped under a store budget while a step was thought not to need it (the
                        # step's record turned out stale): the next build runs the step that makes it.
                        raise StoreError(f"{ref.node}'s {relative} is no longer in the store (dropped under its budget); run the build again")
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
    digests = {f"{name}/{relative}": item.record.sha256 for name, files in inputs.items() for relative, item in files.items()}
    record = StepRecord(key, step.kind, outputs, digests, BUILT_HERE)
    fault_point(f"{step.kind}/record")
    store.put_record(record)
    return record


def _progress(reporter: Reporter, step: StepNode, done: int, total: int, message: str) -> None:
    fault_point(f"{step.kind}/progress")
    reporter.step_progress(step.name, done, total, message)



def materialize(records: Mapping[str, FileRecord], store: Store, destination: Path, link_from: int = LINK_FROM) -> list[Materialized]:
    """Lay out one target's files under destination (see materialize_targets)."""
    return materialize_targets([(records, destination)], store, link_from=link_from)[0]


def materialize_targets(
    layouts: Sequence[tuple[Mapping[str, FileRecord], Path]], store: Store, before_swap: Callable[[], None] | None = None,
    link_from: int = LINK_FROM,
) -> list[list[Materialized]]:
    """Lay out each target's files (records) under its destination, replacing what was there in one
    atomic swap per target: a crash, or a reader, sees the old complete target or the new one, never
    neither. Every target is laid out in staging first; before_swap (the build writes the new lock
    there) runs before any is swapped in, so dist/ keeps what the old lock pins until the new lock
    is written. Directories are 0755 and files 0644 (copies or reflinks), so that the tree deploys by
    copying; only files of link_from bytes or more that cannot be reflinked are hard links to their
    read-only store object."""
    placed: list[list[Materialized]] = []
    destination = None
    try:
        with ExitStack() as stack:
            staged = []
            for records, destination in layouts:
                destination.parent.mkdir(parents=True, exist_ok=True)
                staging = stack.enter_context(store.staging(destination))
                os.chmod(staging, OUTPUT_DIR_MODE)  # it becomes destination; mkdtemp made it 0700
                target: list[Materialized] = []
                for relative, item in sorted(records.items()):
                    fault_point("materialize/link")
                    # Checked again right before it is handed out (a cache lookup unless it changed).
                    if not store.has_object(item):
                        raise StoreError(
                            f"the store object for {destination.name}/{relative} changed during the build; run `modelforge build` again"
                        )
                    how = place_output(store.object_path(item.sha256), staging / relative, link_from)
                    target.append(Materialized(relative, how, item.size))
                for directory in [path for path in staging.rglob("*") if path.is_dir() and not path.is_symlink()]:
                    os.chmod(directory, OUTPUT_DIR_MODE)
                placed.append(target)
                staged.append((staging, destination))
            if before_swap is not None:
                before_swap()
            for staging, destination in staged:
                fault_point("materialize/swap")
                swap_into_place(staging, destination)
                fault_point("materialize/swapped")
        # Reading (and linking, and removing the old tree's links) changed the objects' atime or
        # ctime, not their content, which was checked just above: re-stamp them, or the next no-op
        # build would re-hash them all.
        for records, _ in layouts:
            for item in records.values():
                store.hashes.remember(store.object_path(item.sha256), item.sha256)
        return placed
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise storage_error(error, f"writing {destination}") from None
        raise StoreError(f"cannot write {destination} ({error.strerror}); check its permissions or pass --out") from None
