"""What the safety tests share: tmp projects, the real CLI in a subprocess, and the checks that a
store, an output directory and a lock are whole after anything happened to a build.

A store is whole when every file under objects/ hashes to its name, every step record parses and
names objects that exist with its sizes, and nothing else lies outside tmp/ (no temporary file
under a final name). A target directory is whole when it is exactly one complete version."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from modelforge.provenance import SIGNATURE_FILES

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
FIXTURES = ROOT / "fixtures"
TEXT_ONLY = "tiny-medgemma-text-only"
LITERTLM = "tiny-medgemma-litertlm"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
STORE_ENTRIES = {"objects", "steps", "tmp", "locks", "state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "state.sqlite-journal"}
# Variables of the fault hook in faults.fault_point; never inherited from the test's own environment.
FAULT_VARIABLES = ("MODELFORGE_KILL_AT", "MODELFORGE_FAIL_AT", "MODELFORGE_PAUSE_AT", "MODELFORGE_FAULT_TRACE")


def make_project(base: Path, litertlm_targets: tuple[str, ...] = ("bundle",)) -> Path:
    """A project in tmp: the manifests (the litertlm one cut down to `litertlm_targets`, so that the
    safety suite does not depend on what other targets that manifest grows), the fixtures, lock/."""
    base.mkdir(parents=True, exist_ok=True)
    shutil.copytree(MANIFESTS, base / "manifests")
    shutil.copytree(FIXTURES, base / "fixtures")
    (base / "lock").mkdir(exist_ok=True)
    litertlm = base / "manifests" / f"{LITERTLM}.yaml"
    data = yaml.safe_load(litertlm.read_text())
    data["targets"] = {name: spec for name, spec in data["targets"].items() if name in litertlm_targets}
    litertlm.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return base


def cli_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in FAULT_VARIABLES}
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1"})
    env.update(extra)
    return env


def cli(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m modelforge.cli ARGS` for real, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=cli_env(**env),
    )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree(directory: Path) -> dict[str, str] | None:
    """relative path → sha256 of every file under directory (None if it does not exist); a symlink
    or anything but a file or directory shows as such. The signed provenance beside a target's files
    (it carries the build's times; tests/test_provenance.py checks it) is left out."""
    if not directory.exists() and not directory.is_symlink():
        return None
    if directory.is_symlink() or not directory.is_dir():
        return {".": "not a directory"}
    found = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).as_posix()
        if relative in SIGNATURE_FILES:
            continue
        if path.is_symlink():
            found[relative] = "symlink"
        elif path.is_file():
            found[relative] = sha256(path)
        elif not path.is_dir():
            found[relative] = "special"
    return found


def store_problems(store: Path) -> list[str]:
    """Everything that makes a store not whole (empty list when it is)."""
    problems = []
    if not store.exists():
        return problems
    for entry in store.iterdir():
        if entry.name not in STORE_ENTRIES:
            problems.append(f"stray entry at the top of the store: {entry.name}")
    objects = {}
    for path in sorted((store / "objects").rglob("*")):
        relative = path.relative_to(store).as_posix()
        if path.is_dir():
            if path.parent != store / "objects" or not re.fullmatch(r"[0-9a-f]{2}", path.name):
                problems.append(f"stray directory {relative}")
            continue
        if path.is_symlink() or not SHA256.match(path.name) or path.parent.name != path.name[:2]:
            problems.append(f"stray file under a final name: {relative}")
            continue
        actual = sha256(path)
        if actual != path.name:
            problems.append(f"object {relative} holds other content (sha256 {actual[:12]}…): a partial or damaged object")
        objects[path.name] = path.stat().st_size
    for path in sorted((store / "steps").rglob("*")):
        relative = path.relative_to(store).as_posix()
        if path.is_dir():
            if path.parent != store / "steps" or not re.fullmatch(r"[0-9a-f]{2}", path.name):
                problems.append(f"stray directory {relative}")
            continue
        if not re.fullmatch(r"[0-9a-f]{64}\.json", path.name) or path.parent.name != path.name[:2]:
            problems.append(f"stray file among the records: {relative}")
            continue
        try:
            record = json.loads(path.read_text())
            assert record["key"] == path.name[:-5]
            outputs = record["outputs"]
        except (ValueError, KeyError, AssertionError) as error:
            problems.append(f"record {relative} is damaged ({error!r})")
            continue
        for name, item in outputs.items():
            if objects.get(item["sha256"]) != item["size"]:
                problems.append(f"record {relative} names {name} = object {item['sha256'][:12]}…, which is missing or of another size")
    for path in sorted((store / "locks").iterdir()) if (store / "locks").exists() else []:
        if not path.name.endswith(".lock") or not path.is_file():
            problems.append(f"stray entry among the locks: {path.name}")
    return problems


def records(store: Path) -> dict[str, dict]:
    """key → outputs of every step record."""
    return {path.name[:-5]: json.loads(path.read_text())["outputs"] for path in (store / "steps").rglob("*.json")}


def tmp_entries(store: Path) -> list[str]:
    tmp = store / "tmp"
    return sorted(entry.name for entry in tmp.iterdir()) if tmp.exists() else []


def snapshot(*directories: Path) -> dict[str, object]:
    """Names, sizes, modes and mtimes of everything under directories: equal snapshots mean nothing was
    written there."""
    found: dict[str, object] = {}
    for directory in directories:
        if not directory.exists():
            found[str(directory)] = None
            continue
        for path in [directory, *sorted(directory.rglob("*"))]:
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            found[str(path)] = (stat.st_mode, stat.st_size, stat.st_mtime_ns)
    return found


def descendants_alive(pids: list[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def workers_of(store: Path) -> list:
    """litert worker processes working for a build in this store (their job lies under store/tmp)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            if "modelforge.steps.litert.worker" in command and str(store) in (command + " " + (process.info["cwd"] or "")):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_workers(store: Path) -> int:
    """Kill the litert workers still running for this store; how many there were (0 expected: a
    worker dies with its build)."""
    import psutil

    orphans = workers_of(store)
    for process in orphans:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(orphans, timeout=30)
    return len(orphans)


def record_figure(name: str, value: object) -> None:
    """Keep a figure for docs/safety.md: tests/safety/.figures/<name>.json (ignored by git)."""
    directory = Path(__file__).resolve().parent / ".figures"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")


def forked_cli(*args: str, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """The same `modelforge` entry point as `cli`, in a forked child of this (already importing)
    process: its own process, exit status and signals, without a fresh interpreter's start-up
    (a third of a second, hundreds of times). The child never returns into pytest."""
    import io
    import tempfile
    import time
    import traceback

    import modelforge.api  # noqa: F401  (imported once here, not in every child)
    import modelforge.cli  # noqa: F401
    import rich.console  # noqa: F401
    import rich.progress  # noqa: F401

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(cli_env(**env))
            from modelforge.cli import main

            try:
                main(args=list(args), prog_name="modelforge")
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise subprocess.TimeoutExpired(["modelforge", *args], timeout)
        time.sleep(0.005)
    out.seek(0), err.seek(0)
    return subprocess.CompletedProcess(
        ["modelforge", *args], os.waitstatus_to_exitcode(status), out.read().decode(errors="replace"), err.read().decode(errors="replace"),
    )
