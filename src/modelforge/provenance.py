"""Signed provenance of a built target: the SLSA v1 statement (in-toto Statement v1, built with the
in-toto-attestation protos), its DSSE envelope (securesystemslib) and the OpenSSF Model Signing
signature of the target's files (the `model_signing` command). Imports errors, hashing, lock, plan;
in_toto_attestation, securesystemslib and cryptography are imported inside the functions."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import modelforge
from modelforge.errors import ConfigError, ProvenanceError
from modelforge.hashing import canonical_json
from modelforge.lock import Lock
from modelforge.plan import Plan

PROVENANCE_FILE = "provenance.intoto.jsonl"  # one DSSE envelope (a line of JSON) over the statement
MODEL_SIGNATURE_FILE = "model.sig"  # OpenSSF Model Signing's Sigstore bundle over every file of the target
SIGNATURE_FILES = (PROVENANCE_FILE, MODEL_SIGNATURE_FILE)
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "https://modelforge.invalid/build-types/manifest/v1"  # what the fields mean: docs/provenance.md
DEFAULT_BUILDER = "urn:modelforge:builder:local"
KEY_ENV = "MODELFORGE_PROVENANCE_KEY"
BUILDER_ENV = "MODELFORGE_BUILDER_ID"
TOOL_ENV = "MODELFORGE_MODEL_SIGNING"
EC_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _import_libraries():
    try:
        from google.protobuf import json_format
        from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
        from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
        from in_toto_attestation.v1.statement import Statement
    except ImportError:
        raise ConfigError("provenance needs in-toto-attestation and securesystemslib; run `pip install 'modelforge[sign]'`") from None
    return json_format, provenance_pb2, ResourceDescriptor, Statement


def libraries_installed() -> bool:
    try:
        _import_libraries()
        import securesystemslib.dsse  # noqa: F401
    except (ConfigError, ImportError):
        return False
    return True


def target_steps(plan: Plan, target_node: str, checks: dict[str, Any]) -> list[str]:
    """The steps a target's files come from (its node and every ancestor), then the check steps
    whose every derived input is among them (its parity check, not another target's)."""
    made = {step.name: step for step in plan.steps}
    related: set[str] = set()
    pending = [target_node]
    while pending:
        name = pending.pop()
        if name in related or name not in made:
            continue
        related.add(name)
        pending += [ref.node for ref in made[name].inputs]
    for name in checks:
        inputs = {ref.node for ref in made[name].inputs} - {plan.source.name} if name in made else set()
        if inputs and inputs <= related:
            related.add(name)
    return [step.name for step in plan.steps if step.name in related]


def statement(lock: Lock, plan: Plan, target_name: str, *, builder_id: str, started: float | None, finished: float | None) -> dict[str, Any]:
    """The SLSA v1 provenance of one target as a JSON object; equal inputs give equal bytes
    (canonical JSON), except runDetails' times."""
    json_format, provenance_pb2, ResourceDescriptor, Statement = _import_libraries()
    target = lock.targets[target_name]
    if not target.files:
        raise ProvenanceError(f"target {target_name} has no built files in the lock; build it before writing its provenance")
    subjects = [ResourceDescriptor(name=name, digest={"sha256": item.sha256}).pb for name, item in sorted(target.files.items())]
    source = lock.source
    if source.kind == "hub":
        dependencies = [ResourceDescriptor(
            name=source.repo, uri=f"git+https://huggingface.co/{source.repo}@{source.revision}", digest={"gitCommit": source.revision},
            annotations={"kind": "hub", "repo": source.repo, "revision": source.revision},
        ).pb]
    else:
        dependencies = [ResourceDescriptor(name=source.path, uri=f"file:{source.path}", annotations={"kind": "local", "path": source.path}).pb]
    dependencies += [ResourceDescriptor(name=f"source/{name}", digest={"sha256": item.sha256}).pb for name, item in sorted((source.files or {}).items())]
    steps = target_steps(plan, target.node, lock.checks)
    byproducts = []
    for name in steps:
        if name in lock.checks:
            content = canonical_json(lock.checks[name]).encode()
            byproducts.append(ResourceDescriptor(
                name=f"checks/{name}", media_type="application/json", digest={"sha256": hashlib.sha256(content).hexdigest()}, content=content,
            ).pb)
    external = {"manifest": {"path": lock.manifest.path, "digest": lock.manifest.digest, "content": lock.manifest.content}}
    internal = {
        "target": {"name": target_name, "kind": target.kind, "node": target.node},
        "toolchain": dict(lock.toolchain),
        "steps": {name: {"kind": lock.steps[name].kind, "key": lock.steps[name].key} for name in steps if name in lock.steps},
    }
    provenance = provenance_pb2.Provenance(
        build_definition=provenance_pb2.BuildDefinition(build_type=BUILD_TYPE, resolved_dependencies=dependencies),
        run_details=provenance_pb2.RunDetails(
            builder=provenance_pb2.Builder(id=builder_id, version={"modelforge": modelforge.__version__}), byproducts=byproducts,
        ),
    )
    provenance.build_definition.external_parameters.update(external)
    provenance.build_definition.internal_parameters.update(internal)
    for field, moment in (("started_on", started), ("finished_on", finished)):
        if moment is not None:
            getattr(provenance.run_details.metadata, field).FromDatetime(datetime.fromtimestamp(int(moment), tz=timezone.utc))
    the_statement = Statement(subjects, PREDICATE_TYPE, json_format.MessageToDict(provenance))
    the_statement.validate()
    result = json_format.MessageToDict(the_statement.pb)
    # protobuf's Struct holds every number as a double (512 → 512.0): the predicate keeps the
    # manifest's own values, so that its digest recomputes from the content.
    predicate = json_format.MessageToDict(provenance)
    predicate["buildDefinition"]["externalParameters"] = external
    predicate["buildDefinition"]["internalParameters"] = internal
    result["predicate"] = predicate
    return result


def canonical(value: dict[str, Any]) -> bytes:
    return canonical_json(value).encode()


def parse_statement(payload: bytes, where: str) -> dict[str, Any]:
    """The statement in a payload, checked by in-toto-attestation (type, subjects with digests,
    predicate) and for SLSA v1's predicate type."""
    json_format, provenance_pb2, _, Statement = _import_libraries()
    from in_toto_attestation.v1 import statement_pb2

    try:
        data = json.loads(payload)
        the_statement = Statement.copy_from_pb(json_format.ParseDict(data, statement_pb2.Statement()))
        the_statement.validate()
        json_format.ParseDict(data["predicate"], provenance_pb2.Provenance())
    except (ValueError, KeyError, TypeError, json_format.ParseError) as error:
        raise ProvenanceError(f"{where}: not an in-toto statement ({str(error).splitlines()[0][:120]}); the file was damaged or replaced") from None
    if data.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError(f"{where}: predicate type {data.get('predicateType')!r}, not SLSA provenance v1; it is not modelforge's provenance")
    return data


# ------------------------------------------------------------------------------------------ keys
def load_private_key(path: Path):
    """An unencrypted EC private key (P-256, P-384 or P-521) in PEM: the key mode of model-signing."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read the provenance key {path} ({error.strerror}); check --sign-key or ${KEY_ENV}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key; make one with `openssl ecparam -name prime256v1 -genkey -noout -out KEY.pem`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in EC_CURVES:
        raise ConfigError(
            f"{path} is not an EC P-256/384/521 key (model-signing's key mode takes no other; the ed25519 cache keys sign records only); "
            "make one with `openssl ecparam -name prime256v1 -genkey -noout -out KEY.pem`"
        )
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    path = Path(path).expanduser()
    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as error:
        raise ProvenanceError(f"cannot read the public key {path} ({error.strerror}); pass the publisher's PEM public key with --key") from None
    except (ValueError, TypeError):
        raise ProvenanceError(f"{path} is not a PEM public key; pass the publisher's key (`openssl ec -in KEY.pem -pubout`)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in EC_CURVES:
        raise ProvenanceError(f"{path} is not an EC P-256/384/521 public key; provenance is signed with EC keys only")
    return key


def key_id(public_key) -> str:
    """The key's fingerprint: sha256 of its DER SubjectPublicKeyInfo, as
    `openssl pkey -pubin -in PUB.pem -outform DER | sha256sum` prints it."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return "sha256:" + hashlib.sha256(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _sslib_key(public_key):
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_crypto(public_key, keyid=key_id(public_key))


def sign_envelope(payload: bytes, private_key) -> dict[str, Any]:
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner

    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(CryptoSigner(private_key, _sslib_key(private_key.public_key())))
    return envelope.to_dict()


def unsigned_envelope(payload: bytes) -> dict[str, Any]:
    return {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE, "signatures": []}


def verify_envelope(envelope: dict[str, Any], public_key, where: str) -> bytes:
    """The payload, once the envelope's signature verifies with public_key (DSSE's PAE, by
    securesystemslib); ProvenanceError otherwise."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError

    try:
        parsed = Envelope.from_dict(envelope)
    except (KeyError, TypeError, ValueError):
        raise ProvenanceError(f"{where}: not a DSSE envelope; the file was damaged or replaced") from None
    if parsed.payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(f"{where}: payload type {parsed.payload_type!r}, not an in-toto statement")
    if not parsed.signatures:
        raise ProvenanceError(f"{where}: unsigned (built without --sign-key), so it proves nothing to a downloader; ask the publisher for signed files")
    try:
        parsed.verify([_sslib_key(public_key)], 1)
    except VerificationError:
        signers = ", ".join(sorted(parsed.signatures))
        raise ProvenanceError(
            f"{where}: the signature does not verify with key {key_id(public_key)} (signed by {signers}); "
            "the statement was changed after signing, or another key signed it: do not use these files"
        ) from None
    return parsed.payload


# --------------------------------------------------------------------------------- model-signing
def model_signing_command() -> list[str] | None:
    """The `model_signing` CLI: $MODELFORGE_MODEL_SIGNING, else on PATH, else the .venv-sign/ that
    tools/setup.sh makes beside this environment (model-signing's sigstore needs pydantic ≥ 2.12,
    which the edge toolchain's pins exclude, so it lives in an environment of its own)."""
    if os.environ.get(TOOL_ENV):
        return [os.environ[TOOL_ENV]]
    found = shutil.which("model_signing")
    if found:
        return [found]
    beside = Path(sys.prefix).parent / ".venv-sign" / "bin" / "model_signing"
    return [str(beside)] if beside.is_file() else None


def require_model_signing() -> list[str]:
    command = model_signing_command()
    if command is None:
        raise ConfigError(
            f"the model_signing command (pip install model-signing==1.1.1 pyopenssl) is not found; run tools/setup.sh, which makes "
            f".venv-sign/, or set ${TOOL_ENV} to its path"
        )
    return command


def _run_model_signing(arguments: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*require_model_signing(), "--log-level", "WARNING", *arguments], capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )


def sign_files(directory: Path, key_path: Path) -> None:
    """Sign every file under directory (its provenance included) in the OpenSSF Model Signing
    format, into directory/model.sig."""
    done = _run_model_signing(["sign", "key", "--private_key", str(key_path), "--signature", str(directory / MODEL_SIGNATURE_FILE), str(directory)])
    if done.returncode != 0:
        raise ProvenanceError(f"model_signing could not sign {directory} ({_last_line(done)}); check the key {key_path}")


def verify_files(directory: Path, public_key_path: Path) -> None:
    signature = directory / MODEL_SIGNATURE_FILE
    if not signature.is_file():
        raise ProvenanceError(f"{signature}: missing; a signed target carries its model-signing signature beside its files")
    done = _run_model_signing(["verify", "key", "--public_key", str(public_key_path), "--signature", str(signature), str(directory)])
    if done.returncode != 0:
        raise ProvenanceError(f"{signature}: model_signing refuses it ({_last_line(done)}); do not use these files")


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit {done.returncode}")[:300]
