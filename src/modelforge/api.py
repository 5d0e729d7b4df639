"""What the CLI calls: open a manifest, gather cheap facts about its source, plan, build, lock,
verify. Everything a command does is here, with no printing (a Reporter receives progress).
Imports executor, planner, store, lock, manifest; never torch."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from modelforge.errors import HubUnavailableError, LockError, SourceError
from modelforge.executor import NodeStatus, Reporter, SilentReporter, materialize, run_plan, statuses
from modelforge.hashing import HashCache, hash_file
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
    write_lock,
)
from modelforge.manifest import Manifest, load_manifest, manifest_digest
from modelforge.manifest.models import HubSourceSpec, LocalSourceSpec
from modelforge.plan import Plan, SourceFile, compute_keys
from modelforge.planner import SourceFacts, make_plan
from modelforge.safetensors_io import TensorInfo, parse_header_object, read_header
from modelforge.source_checks import STRICT_JSON_RULE, check_index, check_shards, check_source_file, read_json_file
from modelforge.steps import STEPS
from modelforge.store import LINK_FROM, Materialized, Store, default_store_dir
from modelforge.toolchain import versions
from modelforge.transforms import matches


@dataclass(frozen=True)
class Project:
    """A manifest and the places that belong to it: the project root is the parent of a
    `manifests/` directory (else the manifest's own directory); lock/ and dist/ live there."""

    manifest_path: Path
    manifest: Manifest
    root: Path

    @property
    def lock_path(self) -> Path:
        return self.root / "lock" / f"{self.manifest.name}.lock"

    @property
    def default_out(self) -> Path:
        return self.root / "dist" / self.manifest.name

    @property
    def relative_manifest(self) -> str:
        try:
            return self.manifest_path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return self.manifest_path.name


def open_project(manifest_path: str | Path) -> Project:
    path = Path(manifest_path)
    manifest = load_manifest(path)
    directory = path.resolve().parent
    root = directory.parent if directory.name == "manifests" else directory
    return Project(path, manifest, root)


INDEX_FILE = "model.safetensors.index.json"


@dataclass
class Gathered:
    facts: SourceFacts
    paths: dict[str, Path]  # source relative path → local file (weights may be absent when not needed)
    # Set when the Hub was out of reach and the facts come from modelforge's reference data: what they
    # were made from, in words. Such facts plan truly (tensors, coverage, memory) but hash nothing real.
    planned_from: str | None = None


def _local_files(root: Path, patterns: tuple[str, ...]) -> dict[str, Path]:
    """The files of a source directory the patterns take. Each must be a regular file reached
    without leaving the directory (a Hub snapshot's links into its own blob store are its layout):
    a FIFO, a device, a directory or a symlink elsewhere where a file should be is refused, by name."""
    if not root.is_dir():
        raise SourceError(f"source directory {root} does not exist; fix source.path or --source-dir")
    real_root = Path(os.path.realpath(root))
    allowed = [real_root]
    if real_root.parent.name == "snapshots" and (real_root.parent.parent / "blobs").is_dir():
        allowed.append(real_root.parent.parent / "blobs")
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        if matches(relative, patterns) or matches(path.name, patterns):
            check_source_file(path, relative, allowed)
            found[relative] = path
    if not found:
        raise SourceError(f"source directory {root} has no files matching {', '.join(patterns)}; check source.files")
    return found


def _checked_facts(
    paths: Mapping[str, Path], headers: Mapping[str, Mapping[str, TensorInfo]] | None, hashes: HashCache
) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Every JSON file strictly parsed; the shards' headers agreeing with each other and with the
    index. `headers` (shard → tensors) None: read from the local shards. Returns (tensors, config).
    A JSON file only carried (tokenizer.json: tens of MB) is parsed once per content, not per plan."""
    documents = {}
    for relative, path in paths.items():
        if not relative.endswith(".json"):
            continue
        if relative in ("config.json", INDEX_FILE):
            documents[relative] = read_json_file(path, relative)
            continue
        content = hashes.hash(path)
        if not hashes.is_checked(content, STRICT_JSON_RULE):
            read_json_file(path, relative)
            hashes.mark_checked(content, STRICT_JSON_RULE)
    config = documents.get("config.json", {})
    if not isinstance(config, dict):
        raise SourceError(f"config.json: holds a JSON {type(config).__name__}, not an object; re-fetch the source")
    if headers is None:
        headers = {relative: read_header(path, relative)[0] for relative, path in paths.items() if relative.endswith(".safetensors")}
    check_shards(headers)
    if INDEX_FILE in documents:
        check_index(documents[INDEX_FILE], headers, INDEX_FILE)
    tensors: dict[str, TensorInfo] = {}
    for shard in sorted(headers):
        tensors.update(headers[shard])
    return tensors, config


def gather(project: Project, store: Store, source_dir: Path | None, reporter: Reporter, need_weights: bool) -> Gathered:
    """Facts about the source: file hashes (remembered by inode/size/mtime), safetensors headers and
    config.json (a Hub source downloads small files always and weights only when need_weights);
    and the vendored web runtime's hashes when a web_bundle target needs them. When the Hub is out
    of reach, what can be planned without it is (see _without_the_hub)."""
    try:
        gathered = _gather_source(project, store, source_dir, reporter, need_weights)
    except HubUnavailableError as error:
        gathered = _without_the_hub(project, error, need_weights)
    if any(spec.kind == "web_bundle" for spec in project.manifest.targets.values()):
        from dataclasses import replace

        gathered.facts = replace(gathered.facts, web_runtime=web_runtime_facts(store))
    return gathered


def _without_the_hub(project: Project, error: HubUnavailableError, need_weights: bool) -> Gathered:
    """The Hub cannot be reached and the cache lacks the source. Without the bytes (plan, diff,
    lock) a checkpoint modelforge has reference data for is planned from it, and says so; anything
    else fails with every way forward: the network, --source-dir, and planning offline."""
    from modelforge import reference

    spec = project.manifest.source
    described = reference.describe(spec.repo)
    pinned = len(spec.revision) == 40 and all(character in "0123456789abcdefABCDEF" for character in spec.revision)
    if need_weights or described is None or not pinned:
        existing = _read_lock_or_none(project.lock_path)
        if existing is None:
            checked = f"its files are hashed and recorded in lock/{project.lock_path.name}"
        elif existing.source.files is None:
            checked = f"its files are recorded in lock/{project.lock_path.name}, which pins the commit but no files yet"
        else:
            checked = f"checked file by file against lock/{project.lock_path.name}"
        ways = [f"or pass `--source-dir DIR` with a local download of {spec.repo}@{spec.revision} ({checked})"]
        if described is not None and pinned:
            ways.append(f"`modelforge plan {project.relative_manifest}` and `modelforge diff` work offline, from reference data")
        raise HubUnavailableError(f"{error}; {'; '.join(ways)}") from None
    from dataclasses import replace

    facts = replace(reference.reference_facts(), origin={"kind": "hub", "repo": spec.repo, "revision": spec.revision.lower()})
    return Gathered(facts, {}, planned_from=described)


def web_runtime_facts(store: Store) -> dict[str, Any]:
    from modelforge.web.vendor import RuntimeMissingError, runtime_files, runtime_version, web_dir

    try:
        files = runtime_files(web_dir())
        version = runtime_version(web_dir())
    except RuntimeMissingError:
        return {}
    return {"version": version, "files": {name: {"sha256": store.hashes.hash(path), "size": path.stat().st_size} for name, path in sorted(files.items())}}


def _gather_source(project: Project, store: Store, source_dir: Path | None, reporter: Reporter, need_weights: bool) -> Gathered:
    spec = project.manifest.source
    if source_dir is not None or isinstance(spec, LocalSourceSpec):
        root = Path(source_dir) if source_dir is not None else (project.manifest_path.resolve().parent / spec.path)
        paths = _local_files(root, spec.files)
        if isinstance(spec, HubSourceSpec):
            # A download stands in for a pinned revision: "not the locked files" is the diagnosis
            # that matters first, and it needs the hashes anyway.
            files = _hash_sources(paths, store, reporter)
            _check_override(project, files, root, reporter)
            tensors, config = _checked_facts(paths, None, store.hashes)
            origin = {"kind": "hub", "repo": spec.repo, "revision": spec.revision}
        else:
            # Headers and JSON first: a damaged source is refused before its weights are hashed.
            tensors, config = _checked_facts(paths, None, store.hashes)
            files = _hash_sources(paths, store, reporter)
            origin = {"kind": "local", "path": spec.path}
        return Gathered(SourceFacts(tuple(files), tensors, config, origin), paths)
    from modelforge import hub

    commit = hub.resolve_commit(spec.repo, spec.revision, allow_branch=spec.allow_branch)
    remote = hub.list_files(spec.repo, commit, spec.files)
    wanted = [item for item in remote if need_weights or not item.path.endswith(".safetensors")]
    paths = hub.download(
        spec.repo, commit, wanted, cache_dir=None, hash_cache=store.hashes,
        progress=lambda name, done, total: reporter.step_progress(f"download {name}", done, total, f"downloading {name}"),
    )
    # The snapshot's files are links into the repository's blob store; nothing may lead elsewhere.
    allowed = [Path(os.path.realpath(hub.repo_cache_dir(spec.repo)))]
    for relative, path in paths.items():
        check_source_file(path, relative, allowed)
    headers = None
    if not need_weights:
        headers = {relative: parse_header_object(header, relative) for relative, header in hub.safetensors_headers(spec.repo, commit).items()}
    tensors, config = _checked_facts(paths, headers, store.hashes)
    files = []
    for item in remote:
        if item.path in paths:
            files.append(SourceFile(item.path, store.hashes.hash(paths[item.path]), item.size))
        elif item.sha256:
            files.append(SourceFile(item.path, item.sha256, item.size))
    return Gathered(SourceFacts(tuple(files), tensors, config, {"kind": "hub", "repo": spec.repo, "revision": commit}), paths)


def _hash_sources(paths: Mapping[str, Path], store: Store, reporter: Reporter) -> list[SourceFile]:
    """sha256 of every source file, from the hash cache where the file is unchanged; files not
    yet known are hashed on two threads (hashlib releases the GIL), largest first."""
    from concurrent.futures import ThreadPoolExecutor

    sizes = {relative: path.stat().st_size for relative, path in paths.items()}
    unknown = [relative for relative in paths if store.hashes.lookup(paths[relative]) is None]
    if sum(sizes[relative] for relative in unknown) > (256 << 20):
        reporter.message(f"hashing {len(unknown)} source file(s) once; later builds reuse the hashes")
    order = sorted(paths, key=lambda relative: -sizes[relative])
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="modelforge-hash") as pool:
        digests = dict(zip(order, pool.map(lambda relative: store.hashes.hash(paths[relative]), order)))
    return [SourceFile(relative, digests[relative], sizes[relative]) for relative in paths]


def _check_override(project: Project, files: list[SourceFile], root: Path, reporter: Reporter) -> None:
    """A --source-dir must hold exactly the files the lock pinned, byte for byte. A lock whose
    source files are pending (written without access to the Hub) has nothing to check against:
    the directory's files are what the next lock records, and the user is told so."""
    if not project.lock_path.exists():
        return
    source = read_lock(project.lock_path).source
    if source.files is None:
        reporter.message(
            f"{project.lock_path.name} pins {source.repo}@{source.revision} but not its files yet (pending first access): "
            f"the {len(files)} file(s) of {root} will be recorded as that commit's; make sure it is a download of that revision"
        )
        return
    locked = source.files
    present = {item.path: item for item in files}
    problems = [f"{name} (missing)" for name in sorted(locked) if name not in present]
    problems += [f"{name} (sha256 differs)" for name, item in sorted(present.items()) if name in locked and locked[name].sha256 != item.sha256]
    problems += [f"{name} (not in the lock)" for name in sorted(present) if name not in locked]
    if problems:
        raise SourceError(
            f"--source-dir {root} does not match {project.lock_path.name}: {', '.join(problems[:5])}"
            f"{' …' if len(problems) > 5 else ''}; download the pinned revision or regenerate the lock"
        )


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


def _previous_steps(project: Project) -> dict[str, Any]:
    if not project.lock_path.exists():
        return {}
    try:
        return {name: step.model_dump() for name, step in read_lock(project.lock_path).steps.items()}
    except LockError:
        return {}


@contextmanager
def _planned(project: Project, store_dir: Path | None, source_dir: Path | None, reporter: Reporter, need_weights: bool):
    """The opening every command shares: the store, the source's facts, the plan. Closes the store."""
    store = Store(store_dir or default_store_dir())
    try:
        gathered = gather(project, store, source_dir, reporter, need_weights=need_weights)
        yield store, gathered, plan_for(project, gathered)
    finally:
        store.close()


def plan(manifest_path: str | Path, *, source_dir: Path | None = None, store_dir: Path | None = None, reporter: Reporter | None = None) -> PlanReport:
    project = open_project(manifest_path)
    with _planned(project, store_dir, source_dir, reporter or SilentReporter(), need_weights=False) as (store, gathered, the_plan):
        toolchain = tools_of(the_plan)
        previous = {} if gathered.planned_from else _previous_steps(project)
        return PlanReport(project, the_plan, toolchain, statuses(the_plan, store, toolchain, previous), gathered.planned_from)


# Steps whose report the lock records under `checks`: step kind → the report's file.
CHECK_REPORTS = {"litert_parity": "parity.json", "check_architecture": "architecture.json"}


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
    targets = {}
    for target in the_plan.targets:
        record = store.get_record(keys[target.node]["key"])
        files = {name: LockedFile(sha256=item.sha256, size=item.size) for name, item in record.outputs.items()} if record else None
        targets[target.name] = LockedTarget(kind=target.kind, node=target.node, files=files)
    checks = {}
    for step in the_plan.steps:
        report = CHECK_REPORTS.get(step.kind)
        record = store.get_record(keys[step.name]["key"]) if report else None
        if record is not None and report in record.outputs:
            checks[step.name] = json.loads(store.object_path(record.outputs[report].sha256).read_text())
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


@dataclass
class BuildResult:
    project: Project
    plan: Plan
    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
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
) -> BuildResult:
    reporter = reporter or SilentReporter()
    project = open_project(manifest_path)
    with _planned(project, store_dir, source_dir, reporter, need_weights=True) as (store, gathered, the_plan):
        toolchain = tools_of(the_plan)
        if the_plan.facts.get("memory"):
            # Refuse now, not after an hour of swapping: the largest predicted peak of a step that would run.
            from modelforge.memory import refuse_if_too_large

            to_run = [status.name for status in statuses(the_plan, store, toolchain, {}) if not status.cached]
            refuse_if_too_large(the_plan.facts["memory"], to_run, memory_limit)
        if frozen:
            _check_frozen(project, make_lock(project, the_plan, toolchain, store))
        result = BuildResult(project, the_plan)
        records = run_plan(
            the_plan, store, gathered.paths, toolchain, _previous_steps(project), _Counting(reporter, result), result.measurements
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


def lock(manifest_path: str | Path, *, source_dir: Path | None = None, store_dir: Path | None = None, check: bool = False, reporter: Reporter | None = None) -> tuple[Path, bool]:
    """Write (or with check, compare) lock/<name>.lock without building. Target outputs are
    filled in from the store where a build already made them."""
    project = open_project(manifest_path)
    if check:
        _check_manifest_against_lock(project)
    with _planned(project, store_dir, source_dir, reporter or SilentReporter(), need_weights=False) as (store, gathered, the_plan):
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
    old = _read_lock_or_none(project.lock_path)
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


def _read_lock_or_none(path: Path) -> Lock | None:
    """An existing lock, or None when there is none or it is unreadable (it is about to be rewritten)."""
    try:
        return read_lock(path) if path.exists() else None
    except LockError:
        return None


def _check_manifest_against_lock(project: Project) -> None:
    """The offline half of `lock --check`: the manifest must be the one the lock was made from.
    Names the changed fields, from the manifest content the lock keeps."""
    if not project.lock_path.exists():
        raise LockError(f"{project.lock_path} does not exist; run `modelforge lock {project.relative_manifest}` and commit it")
    locked = read_lock(project.lock_path).manifest
    if locked.digest == manifest_digest(project.manifest):
        return
    from modelforge.diff import _flatten

    old, new = _flatten(locked.content), _flatten(project.manifest.model_dump(mode="json"))
    changed = sorted(key for key in set(old) | set(new) if old.get(key, "∅") != new.get(key, "∅"))
    shown = ", ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
    raise LockError(
        f"{project.relative_manifest} changed since {project.lock_path.name} was written ({shown or 'content'}); "
        f"run `modelforge lock {project.relative_manifest}` and commit the lock"
    )


@dataclass(frozen=True)
class Mismatch:
    path: str
    problem: str


def verify(lock_path: str | Path, *, directory: Path | None = None, sources: bool = False, source_dir: Path | None = None) -> list[Mismatch]:
    """Re-hash every built file (and with sources, every source file) against the lock. Reads every
    byte: verification never trusts a cached hash."""
    lock_path = Path(lock_path)
    the_lock = read_lock(lock_path)
    root = lock_path.resolve().parent.parent
    directory = Path(directory) if directory else root / "dist" / the_lock.manifest.name
    problems: list[Mismatch] = []
    for target_name, target in sorted(the_lock.targets.items()):
        base = directory / target_name
        if target.files is None:
            problems.append(Mismatch(f"{target_name}/", "never built: the lock has no output hashes; run `modelforge build`"))
            continue
        problems += _compare(base, target.files, f"{target_name}/")
    if sources:
        if source_dir is None:
            if the_lock.source.kind == "local":
                manifest_dir = (root / the_lock.manifest.path).parent
                source_dir = manifest_dir / the_lock.source.path
            else:
                raise LockError("--sources for a Hub source needs --source-dir (the downloaded snapshot); pass it")
        if the_lock.source.files is None:
            raise LockError(
                f"{lock_path}: the source's files are pending first access (the lock was written without the Hub), so there is "
                "nothing to check them against; run `modelforge lock` with the Hub reachable, or with `--source-dir DIR`"
            )
        problems += _compare(Path(source_dir), the_lock.source.files, "source/", extra_ok=True)
    return problems


def verify_artifacts(lock_path: str | Path, artifacts: list[Path]) -> list[Mismatch]:
    """Check files someone downloaded or published (a .litertlm, a target directory, a web bundle)
    against the lock: each file by its name within the targets, each directory as the target whose
    file names it shares most with."""
    the_lock = read_lock(Path(lock_path))
    built = {name: target.files or {} for name, target in the_lock.targets.items()}
    problems: list[Mismatch] = []
    for artifact in artifacts:
        artifact = Path(artifact)
        if artifact.is_dir():
            present = {p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file()}
            best = max(built, key=lambda name: len(present & set(built[name])), default=None)
            if best is None or not present & set(built[best]):
                problems.append(Mismatch(str(artifact), "no target of the lock has files with these names"))
                continue
            problems += _compare(artifact, built[best], f"{artifact}/ ({best}) ")
        elif artifact.is_file():
            candidates = {(name, relative): item for name, files in built.items() for relative, item in files.items() if Path(relative).name == artifact.name}
            if not candidates:
                problems.append(Mismatch(str(artifact), "no file of this name in the lock"))
                continue
            actual = hash_file(artifact)
            if not any(item.sha256 == actual and item.size == artifact.stat().st_size for item in candidates.values()):
                problems.append(Mismatch(str(artifact), f"sha256 {actual[:16]}… matches no locked {artifact.name}"))
        else:
            problems.append(Mismatch(str(artifact), "missing"))
    return problems


def check_rebuild(manifest_path: str | Path, *, source_dir: Path | None = None, reporter: Reporter | None = None) -> list[Mismatch]:
    """The reproducibility proof: rebuild everything in a fresh, empty store and compare every
    target file byte for byte with the lock; nondeterminism is reported per file and per step."""
    import tempfile

    project = open_project(manifest_path)
    the_lock = read_lock(project.lock_path)
    with tempfile.TemporaryDirectory(prefix="modelforge-rebuild-") as scratch:
        result = build(manifest_path, out=Path(scratch) / "out", source_dir=source_dir, store_dir=Path(scratch) / "store", write_lockfile=False, reporter=reporter)
        problems = []
        keys = {name: step.key for name, step in the_lock.steps.items()}
        store = Store(Path(scratch) / "store")
        try:
            toolchain = tools_of(result.plan)
            fresh_keys = compute_keys(result.plan, toolchain)
            for name, key in sorted(keys.items()):
                if name in fresh_keys and fresh_keys[name]["key"] != key:
                    problems.append(Mismatch(f"step {name}", "its key differs from the lock (manifest, source or toolchain changed); run `modelforge lock`"))
        finally:
            store.close()
        for target_name, target in sorted(the_lock.targets.items()):
            if target.files is None:
                problems.append(Mismatch(f"{target_name}/", "the lock has no output hashes to compare with; build once and commit the lock"))
                continue
            for mismatch in _compare(result.out_dir / target_name, target.files, f"{target_name}/"):
                step = next((t.node for t in result.plan.targets if t.name == target_name), "?")
                problems.append(Mismatch(mismatch.path, f"{mismatch.problem} (not reproducible: made by step {step})"))
        return problems


def _compare(base: Path, files: Mapping[str, LockedFile], label: str, extra_ok: bool = False) -> list[Mismatch]:
    problems = []
    for relative, expected in sorted(files.items()):
        path = base / relative
        if not path.is_file():
            problems.append(Mismatch(label + relative, "missing"))
            continue
        size = path.stat().st_size
        if size != expected.size:
            problems.append(Mismatch(label + relative, f"size {size}, lock says {expected.size}"))
            continue
        actual = hash_file(path)
        if actual != expected.sha256:
            problems.append(Mismatch(label + relative, f"sha256 {actual[:16]}…, lock says {expected.sha256[:16]}…"))
    if not extra_ok and base.is_dir():
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(base).as_posix()
            if path.is_file() and relative not in files:
                problems.append(Mismatch(label + relative, "not in the lock"))
    return problems


def manifest_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelforge manifest"
    return schema


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def registered_kinds() -> dict[str, list[str]]:
    from modelforge.targets import TARGETS

    return {"steps": sorted(STEPS), "targets": sorted(TARGETS)}


