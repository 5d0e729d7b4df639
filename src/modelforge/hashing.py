"""Content hashes of files, remembered by (device, inode, size, mtime) so that a no-op build does
not re-read gigabytes. Owns the state database; imports only `errors`."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

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
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(buffer):
            sha.update(view[:count])
            if progress:
                progress(count)
    return sha.hexdigest()


class HashCache:
    """(device, inode, size, mtime_ns) → sha256, in a small SQLite database (DVC's state).

    ctime is deliberately not part of the stamp: hard-linking a store object into dist/ changes its
    ctime, which would re-hash every output on every no-op build. An in-place edit changes mtime;
    one that also forges the old mtime back is caught by `verify`, which never trusts this cache.
    The algorithm's name is stored with each row,
    so a future change of algorithm never reads an old hash as a new one.
    """

    def __init__(self, database: Path | None):
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(database, timeout=60, isolation_level=None, check_same_thread=False)
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute(
                "CREATE TABLE IF NOT EXISTS state (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, "
                "algorithm TEXT NOT NULL, hash TEXT NOT NULL)"
            )

    @staticmethod
    def _stamp(stat: os.stat_result) -> str:
        return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"

    def lookup(self, path: Path) -> str | None:
        if self._connection is None:
            return None
        resolved = str(Path(path).resolve())
        stamp = self._stamp(os.stat(resolved))
        with self._lock:
            row = self._connection.execute(
                "SELECT hash FROM state WHERE path = ? AND stamp = ? AND algorithm = ?", (resolved, stamp, ALGORITHM)
            ).fetchone()
        return row[0] if row else None

    def remember(self, path: Path, value: str) -> None:
        if self._connection is None:
            return
        resolved = str(Path(path).resolve())
        stamp = self._stamp(os.stat(resolved))
        with self._lock:
            self._connection.execute(
                "INSERT OR REPLACE INTO state (path, stamp, algorithm, hash) VALUES (?, ?, ?, ?)",
                (resolved, stamp, ALGORITHM, value),
            )

    def hash(self, path: Path, progress: Callable[[int], None] | None = None) -> str:
        """The file's sha256, from the cache when its stamp is unchanged."""
        known = self.lookup(path)
        if known is not None:
            return known
        value = hash_file(path, progress)
        self.remember(path, value)
        return value

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
