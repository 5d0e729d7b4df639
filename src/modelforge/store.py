"""The content-addressed store: immutable objects by sha256 and one record per step key.
Writes are atomic (temporary file in the same directory, then os.replace), so a crash leaves the
old state or the new, never half of one. Imports only `errors` and `hashing`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from filelock import FileLock

from modelforge.errors import StoreError
from modelforge.hashing import HashCache


def default_store_dir() -> Path:
    """$MODELFORGE_STORE, else the user cache directory."""
    if os.environ.get("MODELFORGE_STORE"):
        return Path(os.environ["MODELFORGE_STORE"])
    from platformdirs import user_cache_path

    return user_cache_path("modelforge") / "store"


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class StepRecord:
    key: str
    kind: str
    outputs: Mapping[str, FileRecord]


def _storage_error(error: OSError, what: str) -> StoreError:
    if error.errno == errno.ENOSPC:
        return StoreError(f"no space left on the device while {what}; free space or point MODELFORGE_STORE elsewhere")
    return StoreError(f"cannot write the store while {what} ({error.strerror}); check permissions of the store directory")


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        try:
            for sub in ("objects", "steps", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _storage_error(error, f"creating {self.root}") from None
        self.hashes = HashCache(self.root / "state.sqlite")

    # ------------------------------------------------------------------ objects
    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def has_object(self, record: FileRecord) -> bool:
        """True only if the object exists and its content still hashes to its name."""
        path = self.object_path(record.sha256)
        try:
            if path.stat().st_size != record.size:
                return False
        except FileNotFoundError:
            return False
        if self.hashes.hash(path) != record.sha256:
            # Damaged in place (e.g. edited through a hard link): never reuse it.
            path.unlink(missing_ok=True)
            return False
        return True

    def adopt(self, file: Path, sha256: str) -> None:
        """Move a finished file into the store under its hash (or drop it if already there)."""
        target = self.object_path(sha256)
        try:
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                file.unlink()
                return
            os.chmod(file, 0o444)
            os.replace(file, target)
            self.hashes.remember(target, sha256)
        except OSError as error:
            raise _storage_error(error, f"storing {file.name}") from None

    # ------------------------------------------------------------------ records
    def _record_path(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / f"{key}.json"

    def get_record(self, key: str) -> StepRecord | None:
        try:
            data = json.loads(self._record_path(key).read_text())
            outputs = {name: FileRecord(**value) for name, value in data["outputs"].items()}
            return StepRecord(data["key"], data["kind"], outputs)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # a damaged record is a missing record: the step runs again

    def put_record(self, record: StepRecord) -> None:
        path = self._record_path(record.key)
        payload = {
            "key": record.key,
            "kind": record.kind,
            "outputs": {name: {"sha256": value.sha256, "size": value.size} for name, value in sorted(record.outputs.items())},
        }
        write_atomic(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode())

    # ------------------------------------------------------------------ scratch and locks
    @contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A temporary directory on the store's filesystem, removed afterwards whatever happens."""
        path = Path(tempfile.mkdtemp(prefix=f"{label}.", dir=self.root / "tmp"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key[:16]}.lock"), timeout=-1)

    def close(self) -> None:
        self.hashes.close()


def write_atomic(path: Path, content: bytes) -> None:
    """Write a small file so that readers see the old content or the new, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise _storage_error(error, f"writing {path.name}") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def link_or_copy(source: Path, destination: Path) -> None:
    """Hard-link a store object to an output path; copy where the filesystem will not link."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
