"""The content-addressed store: immutable objects by sha256 and one record per step key.
Writes are atomic (a complete temporary file, then os.replace), so a crash leaves the old state
or the new, never half of one; temporaries live only under tmp/, in one directory per open Store,
and the next Store removes those of dead processes. Laying outputs out in dist/ is `outputs`; the
safety tests' fault points are `faults`. Imports only `errors`, `faults` and `hashing`."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Mapping

from filelock import FileLock

from modelforge.errors import StoreError
from modelforge.faults import fault_point
from modelforge.hashing import HashCache

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def default_store_dir() -> Path:
    """$MODELFORGE_STORE, else the user cache directory."""
    if os.environ.get("MODELFORGE_STORE"):
        return Path(os.environ["MODELFORGE_STORE"])
    from platformdirs import user_cache_path

    return user_cache_path("modelforge") / "store"


# ------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


# Who wrote a local record (the store's file says it; a remote record's signature is its writer):
# BUILT_HERE, "signed:<name>:<base64 public key>" for one pulled from the remote cache, or None for a
# record an older modelforge wrote, which said neither. Only a record built here may be signed and
# pushed; a pulled one is usable while its signer is trusted; an unknown one never (see usable_by).
BUILT_HERE = "here"
SIGNED = "signed:"


@dataclass(frozen=True)
class StepRecord:
    key: str
    kind: str
    outputs: Mapping[str, FileRecord]
    # The sha256 of each input file the step read ("<input>/<file>"), so that a record (a check's
    # verdict above all) is used only with the bytes it was made from: the key names upstream steps
    # by their keys, not by the bytes their records name. None in records of older versions.
    inputs: Mapping[str, str] | None = None
    writer: str | None = BUILT_HERE


def pulled_by(public_key_text: str) -> str:
    """The writer of a record pulled from the remote cache, signed by this key (name:base64)."""
    return SIGNED + public_key_text


def describe_writer(writer: str | None) -> str:
    """In words: "built here", "pulled, signed by NAME (key SHA256:…)", or that nobody knows."""
    if writer == BUILT_HERE:
        return "built here"
    if isinstance(writer, str) and writer.startswith(SIGNED):
        name, _, key = writer.removeprefix(SIGNED).partition(":")
        try:
            fingerprint = hashlib.sha256(base64.b64decode(key, validate=True)).hexdigest()[:16]
        except (ValueError, binascii.Error):
            fingerprint = "malformed"
        return f"pulled, signed by {name} (key SHA256:{fingerprint})"
    return "writer unknown (an older modelforge wrote it: built here or pulled, it did not say)"


def unusable_because(record: StepRecord, trusted: Collection[str]) -> str | None:
    """Why a local record must not be used (then its step is pulled again from a trusted signer, or
    runs), or None. trusted: the public key texts (name:base64) modelforge.toml's cache.trusted_keys
    lists now: revoking a key there revokes every record it signed, in every store."""
    if record.writer == BUILT_HERE:
        return None
    if record.writer is None:
        return "its record does not say who wrote it (an older modelforge); it is checked again"
    if record.writer.removeprefix(SIGNED) in trusted:
        return None
    return f"its record was {describe_writer(record.writer)}, a key cache.trusted_keys no longer lists (revoked)"


def parse_record(data: object, key: str) -> StepRecord | None:
    """A record's signed fields (the local store's file, a remote record's body, a Ray worker's
    report) as a StepRecord for key, or None when they are anything else: damage, not a record. Its
    writer is BUILT_HERE; the store and the remote cache set who really wrote it."""
    try:
        outputs = {name: FileRecord(**value) for name, value in data["outputs"].items()}
        inputs = data.get("inputs")
        if inputs is not None:
            inputs = dict(inputs.items())
        record = StepRecord(data["key"], data["kind"], outputs, inputs)
    except (KeyError, TypeError, AttributeError):
        return None
    # Names become paths (objects/<sha>, out/<name>): anything else is damage, not a record.
    if record.key != key or not isinstance(record.kind, str) or not all(
        _safe_relative(name) and isinstance(item.sha256, str) and SHA256.match(item.sha256)
        and isinstance(item.size, int) and not isinstance(item.size, bool) and item.size >= 0
        for name, item in outputs.items()
    ):
        return None
    if inputs is not None and not all(isinstance(name, str) and isinstance(sha, str) and SHA256.match(sha) for name, sha in inputs.items()):
        return None
    return record


def record_fields(record: StepRecord) -> dict:
    """The JSON fields of a record that a remote record signs (the store adds its writer)."""
    fields = {
        "key": record.key,
        "kind": record.kind,
        "outputs": {name: {"sha256": value.sha256, "size": value.size} for name, value in sorted(record.outputs.items())},
    }
    if record.inputs is not None:
        fields["inputs"] = dict(sorted(record.inputs.items()))
    return fields


def storage_error(error: OSError, what: str) -> StoreError:
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"no space left on the device while {what}; free space or point MODELFORGE_STORE elsewhere")
    return StoreError(f"cannot write the store while {what} ({error.strerror}); check permissions of the store directory")


def _safe_relative(name: object) -> bool:
    """An output name a record may hold: relative, POSIX, never climbing out (records are read
    back from disk, and materialize writes where they say)."""
    return (
        isinstance(name, str) and bool(name) and not name.startswith("/") and "\\" not in name and "\0" not in name
        and all(part not in ("", ".", "..") for part in name.split("/"))
    )


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._session: Path | None = None
        self._session_fd: int | None = None
        try:
            for sub in ("objects", "steps", "tmp", "locks"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise storage_error(error, f"creating {self.root}") from None
        self._sweep_tmp()
        self.hashes = HashCache(self.root / "state.sqlite")

    # ------------------------------------------------------------------ objects
    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256

    def has_object(self, record: FileRecord) -> bool:
        """True only if the object exists and its content still hashes to its name; a damaged
        object is removed, so that nothing can link to it again."""
        path = self.object_path(record.sha256)
        try:
            if path.stat().st_size != record.size:
                path.unlink(missing_ok=True)  # objects never change size: truncated or appended to
                return False
        except FileNotFoundError:
            return False
        if self.hashes.hash(path) != record.sha256:
            # Damaged in place (e.g. edited through a hard link): never reuse it.
            path.unlink(missing_ok=True)
            return False
        return True

    def adopt(self, file: Path, sha256: str) -> None:
        """Move a finished file into the store under its hash. An object already there is kept
        only if intact; the new file's bytes reach the disk before its name does."""
        target = self.object_path(sha256)
        try:
            target.parent.mkdir(exist_ok=True)
            if target.exists() and os.path.samefile(file, target):
                # A step passed an input object through by hard link: it is that object, checked when
                # its record was read moments ago; the link changed only its ctime.
                file.unlink()
                self.hashes.remember(target, sha256)
                return
            if self.has_object(FileRecord(sha256, file.stat().st_size)):
                file.unlink()
                return
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(file, 0o444)
            fault_point("store/object")
            os.replace(file, target)
            self.hashes.remember(target, sha256)
        except OSError as error:
            raise storage_error(error, f"storing {file.name}") from None

    # ------------------------------------------------------------------ records
    def _record_path(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / f"{key}.json"

    def get_record(self, key: str) -> StepRecord | None:
        try:
            data = json.loads(self._record_path(key).read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a damaged record is a missing record: the step runs again
        record = parse_record(data, key)
        if record is None:
            return None
        writer = data.get("writer")
        if writer is not None and not (writer == BUILT_HERE or (isinstance(writer, str) and writer.startswith(SIGNED))):
            return None
        return dataclasses.replace(record, writer=writer)

    def put_record(self, record: StepRecord) -> None:
        path = self._record_path(record.key)
        payload = record_fields(record)
        if record.writer is not None:
            payload["writer"] = record.writer
        write_atomic(path, (json.dumps(payload, indent=1, sort_keys=True) + "\n").encode(), temporary_dir=self._session_dir())

    def mark_used(self, key: str) -> None:
        """Stamp a record as just used (its mtime), which is what `cache gc --older-than` reads.
        Best effort: a read-only store is still a store."""
        try:
            os.utime(self._record_path(key))
        except OSError:
            pass

    # ------------------------------------------------------------------ listing and removing (gc)
    def record_entries(self) -> Iterator[tuple[str, float]]:
        """(key, last used) of every record file, in no particular order."""
        for path in (self.root / "steps").glob("*/*.json"):
            try:
                used = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if SHA256.match(path.stem):
                yield path.stem, used

    def object_entries(self) -> Iterator[tuple[str, int, float]]:
        """(sha256, size, mtime) of every object."""
        for path in (self.root / "objects").glob("*/*"):
            try:
                status = path.stat()
            except FileNotFoundError:
                continue
            if SHA256.match(path.name):
                yield path.name, status.st_size, status.st_mtime

    def remove_record(self, key: str) -> None:
        self._record_path(key).unlink(missing_ok=True)

    def remove_object(self, sha256: str) -> None:
        self.object_path(sha256).unlink(missing_ok=True)

    # ------------------------------------------------------------------ temporaries and locks
    def _session_dir(self) -> Path:
        """This Store's directory under tmp/, created on first use and flock-held until close():
        the lock is how a later Store tells a live build's temporaries from a dead one's."""
        if self._session is None:
            try:
                # Created and locked under tmp.lock, so that a sweep never sees it unlocked.
                with FileLock(str(self.root / "locks" / "tmp.lock")):
                    path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}.", dir=self.root / "tmp"))
                    descriptor = os.open(path, os.O_RDONLY)
                    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                raise storage_error(error, "creating a temporary directory") from None
            self._session, self._session_fd = path, descriptor
        return self._session

    def _sweep_tmp(self) -> None:
        """Remove what dead builds left under tmp/ (SIGKILL, OOM and power cuts run no cleanup,
        and an interrupted export can leave gigabytes). Best effort: never why a build fails."""
        try:
            with FileLock(str(self.root / "locks" / "tmp.lock")):
                for entry in (self.root / "tmp").iterdir():
                    if not _locked_elsewhere(entry):
                        remove_path(entry)
        except OSError:
            pass

    @contextmanager
    def scratch(self, label: str) -> Iterator[Path]:
        """A temporary directory on the store's filesystem, removed afterwards whatever happens."""
        try:
            path = Path(tempfile.mkdtemp(prefix=f"{label}.", dir=self._session_dir()))
        except OSError as error:
            raise storage_error(error, f"creating a scratch directory for {label}") from None
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def staging(self, destination: Path) -> Iterator[Path]:
        """An empty directory to lay out destination's new content in, on destination's filesystem
        so that it can be swapped in by rename: under tmp/ when the store shares that filesystem (a
        crash then leaves nothing beside the destination), else next to it. Whatever is at the
        staging path afterwards (the replaced old tree, after a swap) is removed."""
        session = self._session_dir()
        try:
            same_device = os.stat(session).st_dev == os.stat(destination.parent).st_dev
            path = Path(tempfile.mkdtemp(prefix=f".{destination.name}.staging-", dir=session if same_device else destination.parent))
        except OSError as error:
            raise storage_error(error, f"preparing {destination}") from None
        try:
            yield path
        finally:
            remove_path(path)
            remove_path(path.with_name(path.name + ".old"))

    def lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key[:16]}.lock"), timeout=-1)

    def close(self) -> None:
        self.hashes.close()
        if self._session is not None:
            shutil.rmtree(self._session, ignore_errors=True)
            os.close(self._session_fd)
            self._session = self._session_fd = None


def _locked_elsewhere(path: Path) -> bool:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False  # a symlink or a vanished entry: nobody can hold it
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(descriptor)


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree if it exists (never following a symlink)."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def write_atomic(path: Path, content: bytes, temporary_dir: Path | None = None) -> None:
    """Write a small file so that readers see the old content or the new, never a mix. The bytes
    are written where no one sees them (temporary_dir, which must be on path's filesystem, or an
    unnamed O_TMPFILE inode beside path) and get a name only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = None
    try:
        if temporary_dir is None and hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd"):
            try:
                handle = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
            except OSError:
                handle = None  # a filesystem without O_TMPFILE: a named temporary beside path
        else:
            handle = None
        if handle is None:
            handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=temporary_dir or path.parent)
            temporary = Path(name)
        with os.fdopen(handle, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
            fault_point("store/write")
            if temporary is None:
                temporary = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.partial"
                # A dir_fd makes os.link use linkat(AT_SYMLINK_FOLLOW), which can name an O_TMPFILE inode.
                directory = os.open(path.parent, os.O_RDONLY)
                try:
                    os.link(f"/proc/self/fd/{out.fileno()}", temporary.name, dst_dir_fd=directory)
                finally:
                    os.close(directory)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise storage_error(error, f"writing {path.name}") from None
    except BaseException:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise
