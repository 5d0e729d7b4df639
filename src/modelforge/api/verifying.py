"""Verifying: built files, published artifacts and sources re-hashed against a lock, and the
reproducibility proof (`check_rebuild`: a rebuild in an empty store, compared byte for byte).
Imports api.building (check_rebuild rebuilds), api.planning, api.project and lock, hashing, store,
provenance (the names of the signature files beside a target's, which the lock does not list)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from modelforge.api.building import build
from modelforge.api.planning import tools_of
from modelforge.api.project import open_project
from modelforge.errors import LockError
from modelforge.executor import Reporter
from modelforge.hashing import hash_file
from modelforge.lock import LockedFile, read_lock
from modelforge.plan import compute_keys
from modelforge.provenance import SIGNATURE_FILES
from modelforge.store import Store


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
    target file byte for byte with the lock; nondeterminism is reported per file and per step.
    Never with the remote cache: pulling would prove nothing."""
    import tempfile

    project = open_project(manifest_path)
    the_lock = read_lock(project.lock_path)
    with tempfile.TemporaryDirectory(prefix="modelforge-rebuild-") as scratch:
        result = build(manifest_path, out=Path(scratch) / "out", source_dir=source_dir, store_dir=Path(scratch) / "store", write_lockfile=False, reporter=reporter, cache="")
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
            if path.is_file() and relative not in files and relative not in SIGNATURE_FILES:
                problems.append(Mismatch(label + relative, "not in the lock"))
    return problems
