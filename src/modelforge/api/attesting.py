"""Attesting: after a build, each target's signed provenance beside its files (`attest`, the hook
api.building calls once the lock is made), and the downloader's check of a target directory
against it (`verify_provenance`: no source, no toolchain, no network). Imports provenance, lock,
hashing, store, errors, executor's Reporter; never api.building (which imports this)."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelforge import provenance
from modelforge.errors import ProvenanceError
from modelforge.executor import Reporter
from modelforge.hashing import hash_file
from modelforge.lock import Lock
from modelforge.store import write_atomic


def signing_key_path(sign_key: Path | None = None) -> Path | None:
    """--sign-key, else $MODELFORGE_PROVENANCE_KEY, else none (the statement is written unsigned)."""
    if sign_key is not None:
        return Path(sign_key)
    text = os.environ.get(provenance.KEY_ENV, "").strip()
    return Path(text) if text else None


def check_signing_ready(sign_key: Path | None = None) -> None:
    """Before a build that is to be signed: the key loads and model_signing is there, so that a
    long build does not end in a configuration error."""
    path = signing_key_path(sign_key)
    if path is None:
        return
    provenance.load_private_key(path)
    provenance.require_model_signing()
    if not provenance.libraries_installed():
        provenance._import_libraries()  # the one-line ConfigError saying what to install


def attest(result: Any, lock: Lock, reporter: Reporter) -> dict[str, Path]:
    """Write each built target's provenance into out/<target>/provenance.intoto.jsonl, signed (DSSE)
    and with model.sig over every file when a key is configured; one line per target to reporter."""
    key_path = signing_key_path()
    if not provenance.libraries_installed():
        if key_path is not None:
            provenance._import_libraries()  # the one-line ConfigError saying what to install
        reporter.message("no provenance written: it needs `pip install 'modelforge[sign]'` (in-toto-attestation, securesystemslib)")
        return {}
    key = provenance.load_private_key(key_path) if key_path else None
    builder = os.environ.get(provenance.BUILDER_ENV) or provenance.DEFAULT_BUILDER
    finished = time.time()
    written = {}
    for target in result.plan.targets:
        directory = Path(result.out_dir) / target.name
        if not directory.is_dir() or not lock.targets[target.name].files:
            continue
        the_statement = provenance.statement(
            lock, result.plan, target.name, builder_id=builder, started=getattr(result, "started", None), finished=finished,
        )
        payload = provenance.canonical(the_statement)
        envelope = provenance.sign_envelope(payload, key) if key is not None else provenance.unsigned_envelope(payload)
        path = directory / provenance.PROVENANCE_FILE
        write_atomic(path, (json.dumps(envelope, sort_keys=True, separators=(",", ":")) + "\n").encode())
        if key is not None:
            provenance.sign_files(directory, key_path)
            reporter.message(
                f"{path}: SLSA provenance signed by {provenance.key_id(key.public_key())}; {provenance.MODEL_SIGNATURE_FILE}: "
                "every file, OpenSSF Model Signing"
            )
        else:
            reporter.message(f"{path}: SLSA provenance, unsigned (no --sign-key or ${provenance.KEY_ENV}): a downloader cannot verify it")
        written[target.name] = path
    return written


@dataclass
class ProvenanceReport:
    directory: Path
    target: str
    source: str  # repo@commit, or the local path
    manifest_path: str
    manifest_digest: str
    signer: str
    builder: str
    files: int
    checks: dict[str, Any] = field(default_factory=dict)


def read_envelope(directory: Path) -> dict[str, Any]:
    path = Path(directory) / provenance.PROVENANCE_FILE
    try:
        line = path.read_text().splitlines()[0]
    except FileNotFoundError:
        raise ProvenanceError(f"{path}: missing; a target built by modelforge carries its provenance beside its files") from None
    except (OSError, UnicodeDecodeError, IndexError):
        raise ProvenanceError(f"{path}: unreadable; the file was damaged or replaced") from None
    try:
        return json.loads(line)
    except ValueError:
        raise ProvenanceError(f"{path}: not JSON; the file was damaged or replaced") from None


def verify_provenance(directory: Path, public_key_path: Path) -> ProvenanceReport:
    """Check a downloaded target directory: the DSSE signature of its provenance with the
    publisher's key, every file against the statement's subjects (and no file it does not list
    but the signature files), then model.sig with model_signing. Raises ProvenanceError (one line)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ProvenanceError(f"{directory}: not a directory; pass the downloaded target's directory (its files and {provenance.PROVENANCE_FILE})")
    public_key = provenance.load_public_key(public_key_path)
    where = str(directory / provenance.PROVENANCE_FILE)
    payload = provenance.verify_envelope(read_envelope(directory), public_key, where)
    statement = provenance.parse_statement(payload, where)
    subjects = {item["name"]: item["digest"].get("sha256") for item in statement["subject"]}
    present = {path.relative_to(directory).as_posix(): path for path in sorted(directory.rglob("*")) if path.is_file() or path.is_symlink()}
    for name, expected in sorted(subjects.items()):
        path = present.get(name)
        if path is None:
            raise ProvenanceError(f"{directory / name}: missing (the signed provenance lists it); download the target again")
        if path.is_symlink():
            raise ProvenanceError(f"{directory / name}: a symbolic link, not the signed file; download the target again")
        actual = hash_file(path)
        if actual != expected:
            raise ProvenanceError(
                f"{directory / name}: sha256 {actual[:16]}…, the signed provenance says {str(expected)[:16]}…; the file was changed: do not use it"
            )
    extra = sorted(set(present) - set(subjects) - set(provenance.SIGNATURE_FILES))
    if extra:
        raise ProvenanceError(f"{directory / extra[0]}: not in the signed provenance ({len(extra)} such file(s)); remove it or download the target again")
    provenance.verify_files(directory, Path(public_key_path))
    definition = statement["predicate"]["buildDefinition"]
    manifest = definition["externalParameters"]["manifest"]
    origin = (definition.get("resolvedDependencies") or [{}])[0].get("annotations", {})
    source = f"{origin.get('repo')}@{origin.get('revision')}" if origin.get("kind") == "hub" else f"{origin.get('path')} (local)"
    checks = {}
    for item in statement["predicate"]["runDetails"].get("byproducts", []):
        if item.get("name", "").startswith("checks/") and item.get("content"):
            checks[item["name"].removeprefix("checks/")] = json.loads(base64.b64decode(item["content"]))
    return ProvenanceReport(
        directory=directory, target=definition["internalParameters"]["target"]["name"], source=source, manifest_path=manifest["path"],
        manifest_digest=manifest["digest"], signer=provenance.key_id(public_key), builder=statement["predicate"]["runDetails"]["builder"]["id"],
        files=len(subjects), checks=checks,
    )
