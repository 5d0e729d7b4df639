"""Content hashes of files, remembered by (device, inode, size, mtime, ctime) so that a no-op build does
not re-read gigabytes. Owns the state database; imports only `errors`."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any, Callable

from modelforge.errors import SourceError

ALGORITHM = "sha256"
CHUNK = 8 << 20


def canonical_json(value: Any) -> str:
    """The one serialization keys and digests are computed from: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(value: Any) -> str:
    """sha256 of a JSON value's canonical form."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """sha256 of a file, read in fixed chunks (memory does not grow with the file)."""
    sha = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    # O_NONBLOCK: opening a FIFO must not hang; a device or a FIFO is not a file to build from.
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise SourceError(f"{path} is not a regular file (a device, FIFO or socket); point the source at a checkpoint's files")
        while count := handle.readinto(buffer):
            sha.update(view[:count])
            if progress:
                progress(count)
    return sha.hexdigest()


class HashCache:
    """(device, inode, size, mtime_ns, ctime_ns) → sha256, in a small SQLite database (DVC's state).

    ctime is part of the stamp because an edit that gives a file its old mtime back (touch -r,
    cp -p, rsync -t) still changes ctime: a store object damaged that way is re-hashed, not reused.
    Hard-linking an object into dist/ changes its ctime too; the executor re-stamps the objects it
    just checked and linked, so a no-op build still re-reads nothing. The algorithm's name is stored
    with each row, so a future change of algorithm never reads an old hash as a new one.
    """

    def __init__(self, database: Path | None):
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._connection = sqlite3.connect(database, timeout=60, isolation_level=None, check_same_thread=False)
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS state (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, "
                    "algorithm TEXT NOT NULL, hash TEXT NOT NULL)"
                )
                self._connection.execute(
                    "CREATE TABLE IF NOT EXISTS checked (hash TEXT NOT NULL, rule TEXT NOT NULL, PRIMARY KEY (hash, rule))"
                )
            except sqlite3.Error:
                # The cache only saves re-reading files: on a full or read-only disk, or with a damaged
                # database, builds go on without it (and fail, if they must, on their own writes).
                self.close()

    @staticmethod
    def _stamp(stat: os.stat_result) -> str:
        return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"

    def lookup(self, path: Path) -> str | None:
        return self._lookup(str(Path(path).resolve()), self._stamp(os.stat(path)))

    def _lookup(self, resolved: str, stamp: str) -> str | None:
        if self._connection is None:
            return None
        try:
            with self._lock:
                row = self._connection.execute(
                    "SELECT hash FROM state WHERE path = ? AND stamp = ? AND algorithm = ?", (resolved, stamp, ALGORITHM)
                ).fetchone()
        except sqlite3.Error:
            return None
        return row[0] if row else None

    def remember(self, path: Path, value: str) -> None:
        self._remember(str(Path(path).resolve()), self._stamp(os.stat(path)), value)

    def _remember(self, resolved: str, stamp: str, value: str) -> None:
        if self._connection is None:
            return
        try:
            with self._lock:
                self._connection.execute(
                    "INSERT OR REPLACE INTO state (path, stamp, algorithm, hash) VALUES (?, ?, ?, ?)",
                    (resolved, stamp, ALGORITHM, value),
                )
        except sqlite3.Error:
            pass  # not remembered: hashed again next time

    def hash(self, path: Path, progress: Callable[[int], None] | None = None) -> str:
        """The file's sha256, from the cache when its stamp is unchanged."""
        resolved = str(Path(path).resolve())
        # Stamped before reading: a file that changes while it is hashed is re-read next time.
        stamp = self._stamp(os.stat(resolved))
        known = self._lookup(resolved, stamp)
        if known is not None:
            return known
        value = hash_file(path, progress)
        self._remember(resolved, stamp, value)
        return value

    def is_checked(self, value: str, rule: str) -> bool:
        """Whether content with this sha256 once passed the named check (a rule name carries its
        version): a large file is validated once per content, not on every plan."""
        if self._connection is None:
            return False
        try:
            with self._lock:
                row = self._connection.execute("SELECT 1 FROM checked WHERE hash = ? AND rule = ?", (value, rule)).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    def mark_checked(self, value: str, rule: str) -> None:
        if self._connection is None:
            return
        try:
            with self._lock:
                self._connection.execute("INSERT OR IGNORE INTO checked (hash, rule) VALUES (?, ?)", (value, rule))
        except sqlite3.Error:
            pass  # checked again next time

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except sqlite3.Error:
                pass
            self._connection = None
