"""The Ray executor (`build --executor ray`): runs the plans of one or more manifests on a Ray
cluster. Every step that neither the local store nor the remote cache has becomes one Ray core task
whose `memory` request is the step's predicted peak (plan.facts["memory"], from memory.py), so a 4B
export is placed only on a node that can hold it; independent steps, and the steps of several
manifests, run at once across the nodes; a task whose worker dies (SIGKILL, OOM, a lost node) is
retried, by Ray, up to RETRIES times, wherever it fits.

Files never travel through Ray's object store (it holds GBs badly): they travel through the remote
cache, by hash, as between two machines:

    driver (this process, its own store)              worker (any node; that node's own store)
      plan, keys; cached here or in the remote?
      source files and cached inputs ──put──► remote ──download, re-hashed──► inputs in its store
      task(step, memory=predicted peak) ─────────────────────────────────────► run_step (executor)
                                                remote ◄──put── outputs (objects, by hash)
      ◄──────────────────────── the record (names and hashes: bytes, not GBs), node, measurements
      sign the record and put it (when this machine may push)
      outputs the targets and the lock need ◄── download, re-hashed, into the driver's store

Workers need no signing key: they write only content-addressed objects, which every reader
re-hashes; the driver, which knows what it asked for, signs the records, and only after it has
re-hashed every object the worker reported (from the remote): a worker cannot get a record signed
that names bytes the cache does not hold under that hash. (It can still compute a wrong output and
report that output's true hash: a compromised node taints the steps it runs, as a compromised CI
machine would; the README's team section says so.) Task specs carry no credentials. Progress and messages
come back through one small actor the driver polls; the reason each step runs is the local
executor's (executor.explain). A worker refuses a step whose toolchain differs from the one in its
key, so a mismatched node cannot poison the cache.

Imports executor, plan, store, remote, project_config, toolchain, errors; ray is imported on first use (the `ray`
extra), never at module import."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modelforge.errors import ClusterError, ModelforgeError, PlanError, RemoteError, SourceError, StepFailed
from modelforge.executor import Reporter, explain, input_digests, run_step, unusable_record
from modelforge.plan import Plan, StepNode, compute_keys
from modelforge.remote import RemoteCache
from modelforge.store import FileRecord, StepRecord, Store, default_store_dir, parse_record, record_fields

# A task whose worker dies is submitted again this many times (Ray's max_retries); a step that
# raises is not retried: it would fail the same way.
RETRIES = 3
# The environment the safety tests steer fault points with: forwarded to the workers.
FAULT_VARIABLES = ("MODELFORGE_KILL_AT", "MODELFORGE_FAIL_AT", "MODELFORGE_PAUSE_AT", "MODELFORGE_FAULT_TRACE")
POLL_SECONDS = 0.2
CONNECT_SECONDS = 5.0
PROGRESS_EVERY = 0.5  # seconds between two progress events of one step (the last always goes)
INSTALL = "run `pip install 'modelforge[ray]'`"


@dataclass
class Job:
    """One manifest's plan, as the local executor gets it, and where its events go."""

    plan: Plan
    source_paths: Mapping[str, Path]
    toolchain: Mapping[str, str]
    previous: Mapping[str, Any]
    reporter: Reporter
    needed: frozenset[str]  # steps whose outputs the driver must hold afterwards (targets, the lock's checks)
    label: str = ""  # prefixes step names in messages when several manifests build at once
    measurements: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: dict[str, StepRecord] = field(default_factory=dict)
    placements: dict[str, str] = field(default_factory=dict)  # step that ran → the Ray node id it ran on
    trusted: frozenset[str] = frozenset()  # public keys whose pulled records are still usable (revocation)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"--executor ray needs Ray, which is not installed; {INSTALL}") from None
    return ray


def check_remote(remote: RemoteCache | None) -> RemoteCache:
    """The Ray executor exchanges files through the remote cache: there must be one it may write."""
    if remote is None:
        raise RemoteError(
            "--executor ray exchanges step outputs through the remote cache, and none is set: pass --cache URL "
            "(s3://, gs://, az://, or file:// on storage every node mounts), set $MODELFORGE_CACHE, or set cache.url in modelforge.toml"
        )
    if remote.read_only:
        raise RemoteError(f"--executor ray writes step outputs to {remote.url}, which is read-only here; drop --cache-read-only (or cache.read_only)")
    return remote


# ------------------------------------------------------------------------------------ the driver


def remote_spec(remote: RemoteCache) -> dict:
    """What a task needs to reach the cache: its URL and client options, never a credential (an
    option named like one is dropped; the workers take credentials from their own environment)."""
    from modelforge.project_config import public_options

    return {"url": remote.url, "options": public_options(dict(remote.options))}


def run_plans(jobs: list[Job], store: Store, remote: RemoteCache, address: str | None = None) -> None:
    """Run every job's steps that are not cached on the cluster at address (None: $RAY_ADDRESS,
    else the cluster started on this machine); fill each job's records, placements, measurements."""
    ray = import_ray()
    check_remote(remote)
    _connect(ray, address)
    try:
        _Driver(ray, jobs, store, remote).run()
    finally:
        ray.shutdown()


def _connect(ray, address: str | None) -> None:
    import logging

    where = address or os.environ.get("RAY_ADDRESS")
    advice = (
        "start one with `ray start --head` (and `ray start --address HEAD:6379` on each other node), or pass --address HOST:PORT"
    )
    if where and where != "auto" and "://" not in where:
        # ray.init retries an address nobody listens on for many minutes: knock first.
        import socket

        host, _, port = where.rpartition(":")
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_SECONDS).close()
        except (OSError, ValueError) as error:
            raise ClusterError(f"cannot reach a Ray cluster at {where} ({getattr(error, 'strerror', None) or error}); {advice}") from None
    variables = {name: os.environ[name] for name in FAULT_VARIABLES if os.environ.get(name)}
    try:
        ray.init(
            address=address or "auto",
            runtime_env={"env_vars": variables} if variables else None,
            log_to_driver=False,  # a step's own output stays in the node's logs, as it stays quiet locally
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot reach a Ray cluster at {where or 'this machine'} ({' '.join(str(error).split())[:200]}); {advice}") from None


def _largest_node_memory(ray) -> int:
    return max((int(node["Resources"].get("memory", 0)) for node in ray.nodes() if node.get("Alive")), default=0)


class _Driver:
    def __init__(self, ray, jobs: list[Job], store: Store, remote: RemoteCache):
        self.ray, self.jobs, self.store, self.remote = ray, jobs, store, remote
        self.uploaded: set[str] = set()  # objects this build made sure the remote has
        self.verified_sources: set[str] = set()

    # ---------------------------------------------------------------- what runs
    def run(self) -> None:
        ray = self.ray
        # key → what provides it: a record at hand (cached here or in the remote), or a task's ref.
        known: dict[str, StepRecord] = {}
        in_remote: set[str] = set()
        to_run: list[tuple[Job, StepNode, str, str]] = []
        refs: dict[str, Any] = {}
        keys_of = {id(job): compute_keys(job.plan, job.toolchain) for job in self.jobs}
        for job in self.jobs:
            keys = keys_of[id(job)]
            at_hand: dict[str, StepRecord] = {}  # this job's steps with a record known: the inputs a record is checked against
            for step in job.plan.steps:
                key = keys[step.name]["key"]
                if key in known:
                    at_hand[step.name] = known[key]
                if key in known or key in refs:
                    continue
                # The local executor's rule: a record is used only when usable (its writer still trusted,
                # a check's verdict made from the very bytes it would stand for).
                record = self.store.get_record(key)
                damaged = record is not None and not all(self.store.has_object(item) for item in record.outputs.values())
                problem = None if record is None or damaged else unusable_record(step, record, input_digests(job.plan, step, at_hand), job.trusted)
                if record is not None and not damaged and problem is None:
                    self.store.mark_used(key)
                    known[key] = at_hand[step.name] = record
                    continue
                found = self.remote.lookup(key)
                remote_problem = found.problem
                if remote_problem is None and found.record is not None:
                    remote_problem = unusable_record(step, found.record, input_digests(job.plan, step, at_hand), job.trusted)
                if remote_problem is not None:
                    job.reporter.message(
                        f"warning: step {job.label}{step.name}: the remote record {key[:12]}… in {self.remote.url} {remote_problem}; ignored, the step runs"
                    )
                elif found.record is not None:
                    known[key] = at_hand[step.name] = found.record
                    in_remote.add(key)
                    continue
                reason = "output damaged or missing in the store" if damaged else problem or explain(keys[step.name]["parts"], job.previous.get(step.name))
                to_run.append((job, step, key, reason))
                refs[key] = None  # placeholder: submitted below, in plan order
        self._refuse_what_fits_nowhere(to_run)

        board = ray.remote(num_cpus=0)(_Board).remote()
        # A fresh worker process per step: what a step held (a 4B export's heap) goes back to the node.
        step_task = ray.remote(max_calls=1)(_step_task)
        pending: dict[Any, tuple[Job, StepNode, str, str]] = {}
        for job, step, key, reason in to_run:
            spec, upstream = self._task_inputs(job, step, key, keys_of[id(job)], known, refs)
            memory = int(job.plan.facts.get("memory", {}).get(step.name, 0))
            options: dict[str, Any] = {"num_cpus": 1, "max_retries": RETRIES, "retry_exceptions": False}
            if memory:
                options["memory"] = memory
            ref = step_task.options(**options).remote(spec, board, *upstream)
            refs[key] = ref
            pending[ref] = (job, step, key, reason)

        # Steps at hand: reported now; the ones the remote has are pulled below if the driver needs them.
        for job in self.jobs:
            keys = keys_of[id(job)]
            for step in job.plan.steps:
                key = keys[step.name]["key"]
                if key in known:
                    job.records[step.name] = known[key]
                    if key not in in_remote or step.name not in job.needed:
                        job.reporter.step_finished(step.name, False, 0.0)

        self._wait(pending, board, keys_of)

        for job in self.jobs:
            keys = keys_of[id(job)]
            for step in job.plan.steps:
                key = keys[step.name]["key"]
                if step.name in job.needed and key in in_remote:
                    started = time.monotonic()
                    record = self._pull(job, step, known[key])
                    job.reporter.step_pulled(step.name, step.kind, sum(item.size for item in record.outputs.values()))
                    job.reporter.step_finished(step.name, False, time.monotonic() - started)

    def _refuse_what_fits_nowhere(self, to_run) -> None:
        """As the local build refuses a step larger than the machine, refuse one larger than every
        node now, rather than leave Ray waiting for a node that never comes."""
        largest = _largest_node_memory(self.ray)
        for job, step, _, _ in to_run:
            peak = int(job.plan.facts.get("memory", {}).get(step.name, 0))
            if peak > largest:
                raise PlanError(
                    f"step {job.label}{step.name} would need about {peak / 2**30:.1f} GiB of memory at its peak (predicted from the tensor "
                    f"sizes it loads), but the largest node of the Ray cluster offers {largest / 2**30:.1f} GiB; add a node with more "
                    "memory (`ray start --memory BYTES` sets what a node offers)"
                )

    # ---------------------------------------------------------------- a task's inputs
    def _task_inputs(self, job: Job, step: StepNode, key: str, keys, known, refs) -> tuple[dict, list]:
        """The task's spec (what it needs to know, small) and its upstream refs (tasks it waits on).
        Files the task reads that this machine holds are put in the remote first."""
        plan = job.plan
        inputs: dict[str, dict[str, FileRecord]] = {}
        upstream_inputs: list[tuple[str, tuple[str, ...] | None]] = []
        upstream = []
        for ref in step.inputs:
            if ref.node == plan.source.name:
                files = {}
                for relative in ref.select or tuple(item.path for item in plan.source.files):
                    expected = plan.source.file(relative)
                    item = FileRecord(expected.sha256, expected.size)
                    self._upload_source(job.source_paths[relative], relative, item)
                    files[relative] = item
                inputs[ref.name] = files
                continue
            upstream_key = keys[ref.node]["key"]
            if upstream_key in known:
                record = known[upstream_key]
                if self.store.get_record(upstream_key) is not None:
                    for item in record.outputs.values():
                        self._upload(self.store.object_path(item.sha256), item)
                inputs[ref.name] = {name: item for name, item in record.outputs.items() if ref.select is None or name in ref.select}
            else:
                upstream_inputs.append((ref.name, ref.select))
                upstream.append(refs[upstream_key])
        spec = {
            "label": job.label,
            "step": step,
            "key": key,
            "tools": {tool: job.toolchain.get(tool, "absent") for tool in step.tools},
            "inputs": inputs,
            "upstream_inputs": upstream_inputs,
            "remote": remote_spec(self.remote),
        }
        return spec, upstream

    def _upload_source(self, path: Path, relative: str, item: FileRecord) -> None:
        if item.sha256 not in self.verified_sources:
            # The plan was made from these hashes; make sure the bytes still are those.
            actual = self.store.hashes.hash(path)
            if actual != item.sha256:
                raise SourceError(
                    f"source file {relative} changed since it was planned (sha256 {actual[:12]}…, expected {item.sha256[:12]}…); re-run the command"
                )
            self.verified_sources.add(item.sha256)
        self._upload(path, item)

    def _upload(self, path: Path, item: FileRecord) -> None:
        if item.sha256 not in self.uploaded:
            self.remote.put_file(path, item)
            self.uploaded.add(item.sha256)

    # ---------------------------------------------------------------- waiting, reporting
    def _wait(self, pending: dict, board, keys_of) -> None:
        ray = self.ray
        # A key two manifests share runs once; every step that has it hears of it.
        holders: dict[str, list[tuple[Job, StepNode]]] = {}
        for job in self.jobs:
            for step in job.plan.steps:
                holders.setdefault(keys_of[id(job)][step.name]["key"], []).append((job, step))
        reasons = {key: reason for _, _, key, reason in pending.values()}
        attempts: dict[str, int] = {}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
                for event in ray.get(board.drain.remote()):
                    self._render(event, holders, reasons, attempts)
                for ref in ready:
                    job, step, key, _ = pending.pop(ref)
                    result = self._result(ray, ref, job, step, attempts.get(key, 0))
                    record = parse_record(result.get("record") if isinstance(result, dict) else None, key)
                    if record is None:
                        raise ClusterError(
                            f"step {job.label}{step.name}: its Ray worker returned a malformed record; check that node's modelforge "
                            "(the same version as the driver's, not modified)"
                        )
                    # Signed only once every object the worker uploaded hashes to what it reported.
                    needed = any(holder_step.name in holder.needed for holder, holder_step in holders[key])
                    self._check_uploaded(job, step, record, str(result.get("node", "?")), needed)
                    if self.remote.can_push:
                        try:
                            if self.remote.put_record(record):
                                job.reporter.message(f"pushed {job.label}{step.name} to {self.remote.url}")
                        except RemoteError as error:
                            job.reporter.message(f"warning: step {job.label}{step.name} was not pushed: {error}")
                    seconds = float(result.get("seconds", 0.0))  # on the worker: inputs pulled, the step, outputs pushed
                    for holder, holder_step in holders[key]:
                        holder.records[holder_step.name] = record
                        holder.placements[holder_step.name] = result["node"]
                        if result.get("measurements"):
                            holder.measurements[holder_step.name] = result["measurements"]
                        if holder_step.name in holder.needed:
                            self._pull(holder, holder_step, record)
                        holder.reporter.step_finished(holder_step.name, True, seconds)
            for event in ray.get(board.drain.remote()):
                self._render(event, holders, reasons, attempts)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _render(self, event: tuple, holders, reasons, attempts) -> None:
        what, key, *rest = event
        if what == "started":
            attempts[key] = attempts.get(key, 0) + 1
        for job, step in holders[key]:
            if what == "started":
                node, pid = rest
                if attempts[key] == 1:
                    job.reporter.step_started(step.name, step.kind, reasons[key])
                else:
                    job.reporter.message(f"step {job.label}{step.name}: its worker was lost; retried (attempt {attempts[key]} of {RETRIES + 1})")
                job.reporter.message(f"step {job.label}{step.name} runs on Ray node {node[:12]} (worker pid {pid})")
            elif what == "progress":
                done, total, text = rest
                job.reporter.step_progress(step.name, done, total, text)
            else:
                job.reporter.message(f"step {job.label}{step.name}: {rest[0]}")

    def _result(self, ray, ref, job: Job, step: StepNode, attempts: int) -> dict:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, ModelforgeError):
                raise type(cause)(str(cause).splitlines()[0]) from None
            raise StepFailed(f"step {job.label}{step.name} ({step.kind}) failed on a Ray worker: {str(cause or error).splitlines()[-1][:400]}") from None
        except ray.exceptions.RayError as error:
            raise ClusterError(
                f"step {job.label}{step.name} ({step.kind}): its Ray worker was lost {max(attempts, 1)} time(s), more than the {RETRIES} retries "
                f"({type(error).__name__}); if the node ran out of memory, give the cluster a node with more (predicted peaks: `modelforge plan`)"
            ) from None

    def _check_uploaded(self, job: Job, step: StepNode, record: StepRecord, node: str, needed: bool) -> None:
        """Every output a worker reported is in the remote and hashes to its name, or ClusterError:
        a worker is not trusted with what the driver signs. An output the driver needs is
        downloaded (re-hashed on arrival, kept); any other is streamed back and re-hashed."""
        for name, item in sorted(record.outputs.items()):
            if item.sha256 in self.remote.verified:
                continue  # this driver uploaded it, or re-hashed it already
            if needed and not self.store.has_object(item):
                problem = self.remote.download(item, self.store)
            else:
                problem = self.remote.check_object(item)
            if problem is not None:
                raise ClusterError(
                    f"step {job.label}{step.name}: the worker on Ray node {node[:12]} reported {name} as {item.sha256[:12]}…, but the object "
                    f"it uploaded to {self.remote.location} {problem}; nothing was signed: check that node (a damaged disk, or compromised), "
                    "then build again"
                )

    def _pull(self, job: Job, step: StepNode, record: StepRecord) -> StepRecord:
        """The outputs of a step the driver needs (a target's files, a check's report) into its store."""
        for name, item in sorted(record.outputs.items()):
            if self.store.has_object(item):
                continue
            problem = self.remote.download(item, self.store)
            if problem is not None:
                raise RemoteError(
                    f"step {job.label}{step.name}: the object {item.sha256[:12]}… ({name}) in {self.remote.url} {problem}; "
                    "run the build again (the step runs again where it is missing)"
                )
        self.store.put_record(record)
        return record


class _Board:
    """The one actor of a build: workers post events (started, progress, messages), the driver
    drains them while it waits. Events are a few words each; files never pass here."""

    def __init__(self):
        self.events: list[tuple] = []

    def post(self, event: tuple) -> None:
        self.events.append(event)

    def drain(self) -> list[tuple]:
        events, self.events = self.events, []
        return events


# ------------------------------------------------------------------------------------ the worker


class _Forwarding:
    """The reporter of a step on a worker: progress (at most every PROGRESS_EVERY seconds) and
    messages go to the board."""

    def __init__(self, board, key: str):
        self.board, self.key, self.last = board, key, 0.0

    def step_started(self, name: str, kind: str, reason: str) -> None: ...
    def step_finished(self, name: str, ran: bool, seconds: float) -> None: ...
    def step_pulled(self, name: str, kind: str, size: int) -> None: ...

    def step_progress(self, name: str, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY or done >= total:
            self.last = now
            self.board.post.remote(("progress", self.key, done, total, message))

    def message(self, text: str) -> None:
        import ray

        ray.get(self.board.post.remote(("message", self.key, text)))  # rare, and before the step's end


def _step_task(spec: dict, board, *upstream: dict) -> dict:
    """One step on a worker: its inputs into this node's store (downloaded by hash, re-hashed),
    the step (unless this store has it already: a retry after the step finished here), its outputs
    into the remote. Returns the record's fields and where it ran, never file contents."""
    import ray

    from modelforge.toolchain import versions

    step: StepNode = spec["step"]
    key: str = spec["key"]
    began = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    # Waited for: the driver hears that the step started before it can hear that it finished.
    ray.get(board.post.remote(("started", key, node, os.getpid())))
    installed = versions(spec["tools"])
    differing = sorted(f"{tool} {installed.get(tool)} (the build's key says {version})" for tool, version in spec["tools"].items() if installed.get(tool) != version)
    if differing:
        raise StepFailed(
            f"step {spec['label']}{step.name}: Ray node {node[:12]} has {', '.join(differing)}; install the driver's toolchain on every node "
            "(an output made with other versions would be cached under the wrong key)"
        )
    remote = RemoteCache(spec["remote"]["url"], options=spec["remote"]["options"])
    store = Store(default_store_dir())
    try:
        inputs_known = dict(spec["inputs"])
        for (name, select), result in zip(spec["upstream_inputs"], upstream):
            outputs = {relative: FileRecord(**item) for relative, item in result["record"]["outputs"].items()}
            inputs_known[name] = {relative: item for relative, item in outputs.items() if select is None or relative in select}
        from modelforge.steps.base import InputFile

        inputs: dict[str, dict[str, InputFile]] = {}
        for name, files in inputs_known.items():
            inputs[name] = {}
            for relative, item in files.items():
                if not store.has_object(item):
                    problem = remote.download(item, store)
                    if problem is not None:
                        raise RemoteError(
                            f"step {spec['label']}{step.name}: its input {relative} ({item.sha256[:12]}…) in {remote.url} {problem}; "
                            "build once without --executor ray, which runs what the cache lacks and repairs it, or run `modelforge cache verify`"
                        )
                inputs[name][relative] = InputFile(store.object_path(item.sha256), item, in_store=True)
        measurements: dict[str, dict[str, Any]] = {}
        with store.lock(key):
            record = store.get_record(key)
            if record is None or not all(store.has_object(item) for item in record.outputs.values()):
                record = run_step(step, key, inputs, store, _Forwarding(board, key), measurements)
            for item in record.outputs.values():
                remote.put_file(store.object_path(item.sha256), item)
        return {
            "record": record_fields(record), "node": node, "measurements": measurements.get(step.name, {}),
            "seconds": time.monotonic() - began,
        }
    finally:
        store.close()
