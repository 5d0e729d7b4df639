"""The lockfile: a versioned pydantic model written as sorted YAML under lock/<name>.lock, with
a header line naming the command that regenerates it. Rewritten only when its content changes,
so a no-op build leaves git clean, and never for a measurement alone (figures.py has the rule). Imports
figures, store, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelforge.errors import LockError
from modelforge.figures import pinned_facts
from modelforge.store import write_atomic

LOCK_VERSION = 1


class LockSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LockedFile(LockSpec):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class LockedManifest(LockSpec):
    name: str
    path: str = Field(description="POSIX path of the manifest, relative to the project root.")
    digest: str = Field(description="sha256 of the validated manifest's canonical JSON.")
    content: dict[str, Any] = Field(description="The validated manifest, so `lock --check` can name changed fields offline.")


RESOLVED = "resolved"
PENDING = "pending-first-access"


class LockedSource(LockSpec):
    kind: Literal["hub", "local"]
    repo: str | None = None
    revision: str | None = None
    path: str | None = None
    files: dict[str, LockedFile] | None = Field(
        description="Each source file's sha256 and size; null while status is pending-first-access."
    )
    status: Literal["resolved", "pending-first-access"] = Field(
        default=RESOLVED,
        description="pending-first-access: written without access to the Hub (planned from reference data); the pinned "
        "commit is known, its files are not, and `modelforge lock` records them on first access to the Hub or with --source-dir.",
    )

    @model_validator(mode="after")
    def _files_match_status(self) -> "LockedSource":
        if (self.files is None) != (self.status == PENDING):
            raise ValueError(f"source.files must be null exactly when source.status is {PENDING}")
        if self.status == PENDING and (self.kind != "hub" or not self.revision):
            raise ValueError(f"only a Hub source pinned to a commit can be {PENDING}")
        return self


class LockedStep(LockSpec):
    kind: str
    key: str
    parts: dict[str, Any]


class LockedTarget(LockSpec):
    kind: str
    node: str
    files: dict[str, LockedFile] | None = Field(default=None, description="None until the target has been built.")


class Lock(LockSpec):
    lock_version: Literal[1] = LOCK_VERSION
    manifest: LockedManifest
    source: LockedSource
    toolchain: dict[str, str]
    steps: dict[str, LockedStep]
    targets: dict[str, LockedTarget]
    checks: dict[str, Any] = Field(default_factory=dict, description="Recorded results of build checks (parity).")


def render(lock: Lock) -> str:
    header = f"# modelforge lockfile — generated, do not edit. Regenerate with: modelforge lock {lock.manifest.path}\n"
    data = lock.model_dump(mode="json", exclude_none=False)
    if data["source"]["status"] == RESOLVED:
        del data["source"]["status"]  # the usual case says nothing (and locks written before the field stay byte-identical)
    body = yaml.safe_dump(data, sort_keys=True, default_flow_style=False, width=200, allow_unicode=True)
    if lock.source.status == PENDING:
        header += (
            f"# source.files: pending first access. Written without the Hub (planned from reference data): the commit is pinned,\n"
            f"# its files are not yet. `modelforge lock {lock.manifest.path}` records them when the Hub is reachable, or\n"
            f"# `modelforge lock {lock.manifest.path} --source-dir DIR` from a local download of that commit.\n"
        )
    return header + body


def read_lock(path: Path) -> Lock:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise LockError(f"{path}: no such lockfile; create it with `modelforge lock <manifest>`") from None
    try:
        return Lock.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as error:
        first = error.errors()[0]["msg"] if isinstance(error, ValidationError) else str(error).splitlines()[0]
        raise LockError(f"{path}: not a valid modelforge lockfile ({first}); regenerate it with `modelforge lock`") from None


def read_lock_or_none(path: Path) -> Lock | None:
    """An existing lock, or None when there is none or it is unreadable (it is about to be rewritten)."""
    try:
        return read_lock(path) if path.exists() else None
    except LockError:
        return None


def write_lock(path: Path, lock: Lock) -> bool:
    """Write the lock if what it pins changed; True if the file was written. A lock that differs
    from the one on disk only in its measurements (the figures of its checks) is not written: the
    outputs and the facts are the same, and a rewrite would be noise in every checkout."""
    text = render(lock)
    if path.exists():
        current = read_lock_or_none(path)
        if path.read_text() == text or (current is not None and says_the_same(current, lock)):
            return False
    write_atomic(path, text.encode())
    return True


def says_the_same(old: Lock, new: Lock) -> bool:
    """Equal but for measurements: every output, step key, source file and pinned fact of every check."""
    def facts(lock: Lock) -> dict:
        return lock.model_dump(mode="json") | {"checks": {name: pinned_facts(report) for name, report in lock.checks.items()}}

    return facts(old) == facts(new)


def differences(old: Lock, new: Lock) -> list[str]:
    """Fields where two locks disagree (for `build --frozen` and `lock --check`), ignoring target
    outputs, which only a build can know."""
    found = []
    if old.manifest.digest != new.manifest.digest:
        found.append("manifest (its content changed)")
    if old.source != new.source:
        found.append("source")
    changed_tools = sorted(t for t in set(old.toolchain) | set(new.toolchain) if old.toolchain.get(t) != new.toolchain.get(t))
    if changed_tools:
        found.append("toolchain: " + ", ".join(f"{t} {old.toolchain.get(t, 'absent')}→{new.toolchain.get(t, 'absent')}" for t in changed_tools))
    def key(lock: Lock, step: str) -> str | None:
        return lock.steps[step].key if step in lock.steps else None

    changed_steps = sorted(step for step in set(old.steps) | set(new.steps) if key(old, step) != key(new, step))
    if changed_steps:
        found.append("steps: " + ", ".join(changed_steps))
    if set(old.targets) != set(new.targets):
        found.append("targets")
    return found
