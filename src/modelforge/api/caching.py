"""The shared cache, seen from a project: which remote a command uses (`--cache`, $MODELFORGE_CACHE,
modelforge.toml, in that order) with which keys, and the `cache` verbs: keygen, push a lock's steps,
pull what a lock's targets need (a deployer's outputs without building), ls, verify (re-hash the
remote's objects), gc (local by age and size; remote by what no lock under lock/ references).
Imports api.project and executor, lock, store, remote, signing, project_config; never torch."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelforge.errors import ConfigError, LockError, RemoteError
from modelforge.executor import Reporter, SilentReporter, materialize
from modelforge.lock import Lock, read_lock
from modelforge.project_config import load_project_config
from modelforge.remote import RemoteCache, object_path, open_remote
from modelforge.signing import PublicKey, default_key_path, generate, load_signing_key
from modelforge.store import BUILT_HERE, Store, default_store_dir, describe_writer, unusable_because

CACHE_ENV = "MODELFORGE_CACHE"


def project_root_of_lock(lock_path: Path) -> Path:
    return Path(lock_path).resolve().parent.parent


def remote_for(root: Path, cache: str | None = None, read_only: bool = False, reporter: Reporter | None = None) -> RemoteCache | None:
    """The remote cache a command uses: `cache` (the --cache option; '' means none), else
    $MODELFORGE_CACHE, else modelforge.toml's cache.url; None when none is set. Trusted keys and
    client options always come from modelforge.toml; the signing key from the user's config
    directory (or $MODELFORGE_SIGNING_KEY), and only when the cache may be written."""
    config = load_project_config(root).cache
    url = cache if cache is not None else os.environ.get(CACHE_ENV)
    if url is None:
        url = config.url
    if not url:
        return None
    read_only = read_only or config.read_only
    signing_key = None if read_only else load_signing_key(default_key_path())
    remote = open_remote(url, trusted=config.public_keys(), signing_key=signing_key, read_only=read_only, options=config.options)
    if reporter is not None:
        if not config.trusted_keys:
            reporter.message(
                f"warning: modelforge.toml lists no cache.trusted_keys, so no record from {url} is accepted; "
                "add the public keys of the machines that push (`modelforge cache keygen` prints one)"
            )
        if not read_only and signing_key is None:
            reporter.message(
                f"warning: no signing key at {default_key_path()}, so this build pushes nothing to {url}; "
                "run `modelforge cache keygen NAME` and list its public key in modelforge.toml"
            )
    return remote


def trusted_writers(root: Path) -> frozenset[str]:
    """The public keys (name:base64) whose pulled records this project's builds may use: those
    modelforge.toml's cache.trusted_keys lists now, whether or not a remote cache is in use."""
    return frozenset(key.text for key in load_project_config(root).cache.public_keys())


def _required_remote(root: Path, cache: str | None, read_only: bool = False) -> RemoteCache:
    remote = remote_for(root, cache, read_only)
    if remote is None:
        raise ConfigError(f"no remote cache: pass --cache URL, set ${CACHE_ENV}, or set cache.url in {root / 'modelforge.toml'}")
    return remote


# ---------------------------------------------------------------------------------------- keygen


def keygen(name: str, out: Path | None = None) -> tuple[Path, PublicKey]:
    path = Path(out) if out else default_key_path()
    return path, generate(name, path)


# ------------------------------------------------------------------------------------ push, pull


@dataclass
class Transfer:
    """What a push or a pull did, step by step (node names)."""

    done: list[str] = field(default_factory=list)  # pushed, or pulled
    present: list[str] = field(default_factory=list)  # already there (remote for a push, local for a pull)
    missing: list[str] = field(default_factory=list)  # not pushable (absent, or not built here) or not pullable (with why)
    out_dir: Path | None = None


def push(lock_path: Path, *, cache: str | None = None, store_dir: Path | None = None) -> Transfer:
    """Push every step of the lock that the local store holds intact and that this machine built:
    objects, then signed records. A pulled record is never re-signed (it keeps its signer's
    signature, and its signer's revocation); a record of an older modelforge, which does not say who
    wrote it, is not pushed either. The targets' records must name the lock's files, or nothing is
    pushed."""
    lock_path = Path(lock_path)
    the_lock = read_lock(lock_path)
    remote = _required_remote(project_root_of_lock(lock_path), cache)
    if not remote.can_push:
        raise RemoteError(
            f"cannot push to {remote.url}: "
            + ("it is read-only here" if remote.read_only else f"no signing key at {default_key_path()}; run `modelforge cache keygen NAME`")
        )
    result = Transfer()
    store = Store(store_dir or default_store_dir())
    try:
        pushable = {}
        for name, step in sorted(the_lock.steps.items()):
            record = store.get_record(step.key)
            if record is None or not all(store.has_object(item) for item in record.outputs.values()) or record.writer != BUILT_HERE:
                result.missing.append(name)
                continue
            pushable[name] = record
        for target_name, target in sorted(the_lock.targets.items()):
            if target.node in pushable and target.files is not None:
                _check_against_lock(lock_path, the_lock, target_name, pushable[target.node].outputs)
        for name, record in pushable.items():
            (result.done if remote.push(record, store) else result.present).append(name)
    finally:
        store.close()
    return result


def pull(
    lock_path: Path,
    *,
    cache: str | None = None,
    store_dir: Path | None = None,
    out: Path | None = None,
    every_step: bool = False,
    reporter: Reporter | None = None,
) -> Transfer:
    """Pull the steps that make the lock's targets (every step with every_step) into the local
    store, then lay the targets out under out (default dist/<name>/), each file checked against the
    lock. Raises RemoteError naming what the remote could not give (and why)."""
    reporter = reporter or SilentReporter()
    lock_path = Path(lock_path)
    the_lock = read_lock(lock_path)
    root = project_root_of_lock(lock_path)
    remote = _required_remote(root, cache, read_only=True)
    trusted = trusted_writers(root)
    wanted = sorted(the_lock.steps) if every_step else sorted({target.node for target in the_lock.targets.values()})
    result = Transfer()
    problems: dict[str, str] = {}
    store = Store(store_dir or default_store_dir())
    try:
        records = {}
        for name in wanted:
            key = the_lock.steps[name].key
            with store.lock(key):
                record = store.get_record(key)
                usable = record is not None and unusable_because(record, trusted) is None
                if usable and all(store.has_object(item) for item in record.outputs.values()):
                    records[name] = record
                    result.present.append(name)
                    continue
                record = remote.fetch(key, store, lambda problem, name=name: problems.setdefault(name, problem))
            if record is None:
                problems.setdefault(name, f"no record for key {key[:12]}… in {remote.url}")
                result.missing.append(name)
                continue
            records[name] = record
            result.done.append(name)
        if problems:
            shown = "; ".join(f"{name}: {problem}" for name, problem in sorted(problems.items()))
            raise RemoteError(f"cannot pull everything {lock_path.name} needs ({shown}); build it where it can be pushed from, then pull again")
        result.out_dir = Path(out) if out else root / "dist" / the_lock.manifest.name
        for target_name, target in sorted(the_lock.targets.items()):
            outputs = records[target.node].outputs
            _check_against_lock(lock_path, the_lock, target_name, outputs)
            placed = materialize(outputs, store, result.out_dir / target_name)
            reporter.message(f"{result.out_dir / target_name}: {len(placed)} file(s)")
    finally:
        store.close()
    return result


def _check_against_lock(lock_path: Path, the_lock: Lock, target_name: str, outputs) -> None:
    expected = the_lock.targets[target_name].files
    if expected is None:
        raise LockError(f"{lock_path}: target {target_name} has no output hashes (never built); build it once and commit the lock")
    got = {name: (item.sha256, item.size) for name, item in outputs.items()}
    want = {name: (item.sha256, item.size) for name, item in expected.items()}
    if got != want:
        differing = sorted(name for name in set(got) | set(want) if got.get(name) != want.get(name))
        raise LockError(
            f"the cached outputs of target {target_name} differ from {lock_path.name} ({', '.join(differing[:4])}); "
            "the build is not reproducible or the lock is stale: run `modelforge check` on its manifest"
        )


# ------------------------------------------------------------------------------------ ls, verify


@dataclass(frozen=True)
class RemoteEntry:
    key: str
    kind: str | None
    size: int  # the outputs' bytes
    trust: str  # "signed by NAME" or the problem
    steps: tuple[str, ...]  # lock/<manifest>:<step> that name this key


def referenced_keys(root: Path, *, strict: bool = False) -> dict[str, list[str]]:
    """Every step key a lock under root/lock/ pins → 'manifest:step' naming it. An unreadable lock
    (a merge-conflict marker, a permission) is skipped for listing; with strict (for deleting) it is
    a LockError, since what it pins cannot be known."""
    found: dict[str, list[str]] = {}
    for path in sorted((root / "lock").glob("*.lock")):
        try:
            the_lock = read_lock(path)
        except (LockError, OSError) as error:
            if strict:
                why = str(error) if isinstance(error, LockError) else f"{path}: cannot be read ({error.strerror})"
                raise LockError(
                    f"{why.rstrip('.')}; so what it pins is unknown and nothing was deleted: fix or remove it (a merge conflict? "
                    "resolve it), then collect again"
                ) from None
            continue
        for name, step in the_lock.steps.items():
            found.setdefault(step.key, []).append(f"{the_lock.manifest.name}:{name}")
    return found


@dataclass(frozen=True)
class LocalEntry:
    key: str
    kind: str
    writer: str  # in words: built here, pulled and signed by whom, or unknown
    problem: str | None  # why builds do not use it (a revoked signer, an unknown writer), or None
    steps: tuple[str, ...]


def local_records(root: Path, store_dir: Path | None = None) -> list[LocalEntry]:
    """Every record of the local store with who wrote it, and why builds of this project would not
    use it (a signer no longer in cache.trusted_keys, or an older record that does not say)."""
    trusted = trusted_writers(root)
    names = referenced_keys(root)
    store = Store(store_dir or default_store_dir())
    try:
        entries = []
        for key, _used in sorted(store.record_entries()):
            record = store.get_record(key)
            if record is not None:
                entries.append(LocalEntry(key, record.kind, describe_writer(record.writer), unusable_because(record, trusted), tuple(names.get(key, ()))))
        return entries
    finally:
        store.close()


def ls(root: Path, *, cache: str | None = None) -> list[RemoteEntry]:
    remote = _required_remote(root, cache, read_only=True)
    names = referenced_keys(root)
    entries = []
    for key, _meta in sorted(remote.records()):
        found = remote.lookup(key)
        record = found.record or remote.read_unverified(key)
        trust = f"signed by {found.signer}" if found.record is not None else (found.problem or "unreadable")
        size = sum(item.size for item in record.outputs.values()) if record else 0
        entries.append(RemoteEntry(key, record.kind if record else None, size, trust, tuple(names.get(key, ()))))
    return entries


@dataclass(frozen=True)
class RemoteProblem:
    path: str
    problem: str


def verify_remote(root: Path, *, cache: str | None = None, delete_damaged: bool = False) -> tuple[int, list[RemoteProblem]]:
    """Re-hash every remote object against its name, and check every record's signature and that
    its objects are there. Returns (objects checked, problems); with delete_damaged, a damaged
    object is deleted (the records naming it become misses, and the next build that runs the step
    pushes it again)."""
    remote = _required_remote(root, cache, read_only=not delete_damaged)
    problems: list[RemoteProblem] = []
    present: dict[str, int] = {}
    checked = 0
    for meta in remote.entries("objects/"):
        name = meta["path"].rsplit("/", 1)[-1]
        checked += 1
        if not re.fullmatch(r"[0-9a-f]{64}", name):
            problems.append(RemoteProblem(meta["path"], "not an object name (sha256); something else writes here"))
            continue
        sha, size = remote.rehash(meta["path"])
        if sha != name:
            problems.append(RemoteProblem(meta["path"], f"its content hashes to {sha[:16]}… (damaged or tampered)"))
            if delete_damaged:
                remote.delete(meta["path"])
            continue
        present[name] = size
    for key, _meta in sorted(remote.records()):
        found = remote.lookup(key)
        if found.problem is not None:
            problems.append(RemoteProblem(f"steps/{key[:2]}/{key}.json", f"record {found.problem}"))
            continue
        for output, item in sorted(found.record.outputs.items()) if found.record else ():
            if present.get(item.sha256) != item.size:
                problems.append(RemoteProblem(object_path(item.sha256), f"named by record {key[:12]}… ({output}) but missing or damaged"))
    return checked, problems


# ------------------------------------------------------------------------------------------- gc

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def parse_duration(text: str) -> float:
    match = DURATION.match(text.strip())
    if match is None:
        raise ConfigError(f"{text!r} is not a duration; write a number and a unit: 90s, 30m, 12h, 7d or 2w")
    return float(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match[2]]


@dataclass
class Collected:
    records: int = 0
    objects: int = 0
    bytes: int = 0


# Unreferenced objects younger than this are kept: they may belong to a step being written right now
# (objects go in before their record, locally and remotely).
GRACE_SECONDS = 3600
# Remote records no lock here pins, younger than this, are kept: a teammate's branch lock (not yet
# merged, so not under lock/ here) may pin them. Their objects are kept with them.
RECORD_GRACE_SECONDS = 7 * 86400


def gc_local(
    *, store_dir: Path | None = None, older_than: float | None = None, max_size: int | None = None, dry_run: bool = False,
    grace: float = GRACE_SECONDS,
) -> Collected:
    """Forget records unused for older_than seconds, then the least recently used until the
    objects they keep fit in max_size bytes; then remove objects no remaining record names."""
    store = Store(store_dir or default_store_dir())
    collected = Collected()
    try:
        now = time.time()
        entries = sorted(store.record_entries(), key=lambda entry: entry[1])  # least recently used first
        objects = {sha: (size, mtime) for sha, size, mtime in store.object_entries()}
        kept: dict[str, set[str]] = {}
        for key, _used in entries:
            record = store.get_record(key)
            kept[key] = {item.sha256 for item in record.outputs.values()} if record else set()
        removed = []
        for key, used in entries:
            if older_than is not None and now - used > older_than:
                removed.append(key)
        if max_size is not None:
            def size_of(keys) -> int:
                names = set().union(*(kept[key] for key in keys)) if keys else set()
                return sum(objects.get(sha, (0, 0))[0] for sha in names)

            remaining = [key for key, _ in entries if key not in removed]
            while remaining and size_of(remaining) > max_size:
                removed.append(remaining.pop(0))
        for key in removed:
            with store.lock(key):
                if not dry_run:
                    store.remove_record(key)
            collected.records += 1
        names = set().union(*(kept[key] for key in kept if key not in removed)) if kept else set()
        for sha, (size, mtime) in objects.items():
            if sha in names or now - mtime < grace:
                continue
            if not dry_run:
                store.remove_object(sha)
            collected.objects += 1
            collected.bytes += size
    finally:
        store.close()
    return collected


def gc_remote(
    root: Path, *, cache: str | None = None, dry_run: bool = False, grace: float = GRACE_SECONDS, record_grace: float = RECORD_GRACE_SECONDS,
) -> Collected:
    """Delete remote records whose key no lock under root/lock/ pins and that are older than
    record_grace seconds, then objects that no remaining record names and the leftovers of killed
    uploads, older than grace seconds (a push in flight writes objects before its record). Refuses
    (LockError) when any lock under root/lock/ cannot be read."""
    remote = _required_remote(root, cache)
    if remote.read_only:
        raise RemoteError(f"cache {remote.location} is read-only here; collect its garbage from a machine that may write it")
    keep = referenced_keys(root, strict=True)
    if not keep:
        raise LockError(f"no lock under {root / 'lock'} pins any step, so everything would be deleted; run it from the project root (or pass --project)")
    collected = Collected()
    names: set[str] = set()
    now = time.time()
    for key, meta in list(remote.records()):
        if key in keep or now - meta["last_modified"].timestamp() < record_grace:
            record = remote.read_unverified(key)
            names |= {item.sha256 for item in record.outputs.values()} if record else set()
            continue
        if not dry_run:
            remote.delete(f"steps/{key[:2]}/{key}.json")
        collected.records += 1
    for meta in list(remote.entries("objects/")):
        name = meta["path"].rsplit("/", 1)[-1]
        if name in names or now - meta["last_modified"].timestamp() < grace:
            continue
        if not dry_run:
            remote.delete(meta["path"])
        collected.objects += 1
        collected.bytes += meta["size"]
    partial, size = remote.sweep_partial_uploads(grace, dry_run)
    collected.objects += partial
    collected.bytes += size
    return collected
