"""Gathering cheap facts about a project's source (local files, a --source-dir checked against the
lock, the Hub, or reference data offline): hashes, safetensors headers, config.json, and the web
runtime's hashes. Imports api.project and executor's Reporter, store, lock, hashing, planner; never torch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from modelforge.api.project import Project
from modelforge.errors import HubUnavailableError, SourceError
from modelforge.executor import Reporter
from modelforge.hashing import HashCache
from modelforge.lock import read_lock, read_lock_or_none
from modelforge.manifest.models import HubSourceSpec, LocalSourceSpec
from modelforge.plan import SourceFile
from modelforge.plan_builder import SourceFacts
from modelforge.safetensors_io import TensorInfo, parse_header_object, read_header
from modelforge.source_checks import STRICT_JSON_RULE, check_index, check_shards, check_source_file, read_json_file
from modelforge.store import Store
from modelforge.transforms import matches


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
    from modelforge import reference  # only when the Hub is out of reach

    spec = project.manifest.source
    described = reference.describe(spec.repo)
    pinned = len(spec.revision) == 40 and all(character in "0123456789abcdefABCDEF" for character in spec.revision)
    if need_weights or described is None or not pinned:
        existing = read_lock_or_none(project.lock_path)
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
    """{"version", "files"} of the vendored MediaPipe runtime and, under "litertjs" and "onnxruntime_web",
    {"versions", "files"} of the LiteRT.js and onnxruntime-web ones; a runtime that is not installed is absent."""
    from modelforge.web.vendor import (  # for a web_bundle target only
        RuntimeMissingError, litertjs_files, litertjs_versions, ortweb_files, ortweb_versions, runtime_files, runtime_version, web_dir,
    )

    def hashed(files: dict[str, Path]) -> dict[str, dict[str, Any]]:
        return {name: {"sha256": store.hashes.hash(path), "size": path.stat().st_size} for name, path in sorted(files.items())}

    facts: dict[str, Any] = {}
    try:
        facts = {"version": runtime_version(web_dir()), "files": hashed(runtime_files(web_dir()))}
    except RuntimeMissingError:
        pass
    try:
        facts["litertjs"] = {"versions": litertjs_versions(web_dir()), "files": hashed(litertjs_files(web_dir()))}
    except RuntimeMissingError:
        pass
    try:
        facts["onnxruntime_web"] = {"versions": ortweb_versions(web_dir()), "files": hashed(ortweb_files(web_dir()))}
    except RuntimeMissingError:
        pass
    return facts


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
    from modelforge import hub  # huggingface_hub and the network: for a Hub source only

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
