"""Signed provenance on the tiny text-only manifest, checked by clients this project did not write:
the `model_signing` command (OpenSSF Model Signing), in-toto's DSSE envelope and in-toto-attestation's
statement, and `cryptography` over DSSE's pre-authentication encoding; then `modelforge verify
--provenance` as a downloader runs it, and what it must refuse (one line, exit 6)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_project

MANIFEST = "tiny-medgemma-text-only.yaml"
TARGET = "text"


def _model_signing() -> list[str]:
    from modelforge.provenance import model_signing_command

    command = model_signing_command()
    if command is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the model_signing command is missing: tools/setup.sh makes .venv-sign")
        pytest.skip("the model_signing command is missing: run tools/setup.sh (it makes .venv-sign) or set MODELFORGE_MODEL_SIGNING")
    return command


def _key_pair(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _fingerprint(public: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public.read_bytes())
    return "sha256:" + hashlib.sha256(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def run_cli(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """One signed build of the tiny text-only manifest (the key made here), its store kept for rebuilds."""
    _model_signing()
    base = tmp_path_factory.mktemp("provenance")
    project = copy_project(base / "project")
    keys = base / "keys"
    keys.mkdir()
    private, public = _key_pair(keys, "publisher")
    store = base / "store"
    done = run_cli("build", f"manifests/{MANIFEST}", "--store", str(store), "--sign-key", str(private), cwd=project, env=_env())
    assert done.returncode == 0, done.stderr
    return {"project": project, "store": store, "private": private, "public": public, "keys": keys, "stderr": done.stderr,
            "target": project / "dist" / "tiny-medgemma-text-only" / TARGET}


def _env(**extra) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MODELFORGE_PROVENANCE")}
    env.update({"HF_HUB_OFFLINE": "1", **extra})
    return env


@pytest.fixture
def downloaded(signed, tmp_path) -> Path:
    """What a downloader has: a copy of the signed target directory, nothing else."""
    copy = tmp_path / "downloaded" / TARGET
    shutil.copytree(signed["target"], copy)
    return copy


def _envelope(directory: Path) -> dict:
    return json.loads((directory / "provenance.intoto.jsonl").read_text().splitlines()[0])


def _statement(directory: Path) -> dict:
    return json.loads(base64.b64decode(_envelope(directory)["payload"]))


def test_model_signing_verifies_the_targets_files(signed):
    done = subprocess.run(
        [*_model_signing(), "verify", "key", "--public_key", str(signed["public"]), "--signature", str(signed["target"] / "model.sig"), str(signed["target"])],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Verification succeeded" in done.stdout + done.stderr


def test_model_signing_refuses_a_changed_file(downloaded, signed):
    (downloaded / "config.json").write_text((downloaded / "config.json").read_text().replace("Gemma3ForCausalLM", "EvilForCausalLM"))
    done = subprocess.run(
        [*_model_signing(), "verify", "key", "--public_key", str(signed["public"]), "--signature", str(downloaded / "model.sig"), str(downloaded)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0


def test_in_toto_checks_the_envelope_and_the_statement_is_slsa_provenance_of_the_lock(signed):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from google.protobuf import json_format
    from in_toto.models.metadata import Envelope
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.statement import Statement
    from securesystemslib.signer import SSlibKey

    from modelforge.lock import read_lock

    envelope = _envelope(signed["target"])
    public = serialization.load_pem_public_key(signed["public"].read_bytes())
    in_toto_envelope = Envelope.from_dict(json.loads(json.dumps(envelope)))  # from_dict consumes its argument
    in_toto_envelope.verify([SSlibKey.from_crypto(public, keyid=_fingerprint(signed["public"]))], 1)  # raises if it does not verify
    # And by hand from the DSSE spec, with cryptography alone: the pre-authentication encoding.
    payload = base64.b64decode(envelope["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(envelope["payloadType"]), envelope["payloadType"].encode(), len(payload), payload)
    public.verify(base64.b64decode(envelope["signatures"][0]["sig"]), pae, ec.ECDSA(hashes.SHA256()))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    assert envelope["signatures"][0]["keyid"] == _fingerprint(signed["public"])

    data = json.loads(payload)
    Statement.copy_from_pb(json_format.ParseDict(data, statement_pb2.Statement())).validate()
    json_format.ParseDict(data["predicate"], provenance_pb2.Provenance())
    assert data["predicateType"] == "https://slsa.dev/provenance/v1"
    lock = read_lock(signed["project"] / "lock" / "tiny-medgemma-text-only.lock")
    files = lock.targets[TARGET].files
    assert {item["name"]: item["digest"]["sha256"] for item in data["subject"]} == {name: item.sha256 for name, item in files.items()}
    definition = data["predicate"]["buildDefinition"]
    manifest = definition["externalParameters"]["manifest"]
    assert manifest["digest"] == lock.manifest.digest
    canonical = json.dumps(manifest["content"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == manifest["digest"]  # the content is the manifest, numbers and all
    resolved = {item.get("name"): item.get("digest", {}).get("sha256") for item in definition["resolvedDependencies"]}
    assert all(resolved[f"source/{name}"] == item.sha256 for name, item in lock.source.files.items())
    steps = definition["internalParameters"]["steps"]
    assert steps and all(steps[name]["key"] == lock.steps[name].key for name in steps)
    assert definition["internalParameters"]["toolchain"] == lock.toolchain
    byproducts = {item["name"]: json.loads(base64.b64decode(item["content"])) for item in data["predicate"]["runDetails"]["byproducts"]}
    assert byproducts == {f"checks/{name}": report for name, report in lock.checks.items()}
    assert data["predicate"]["runDetails"]["builder"]["version"]["modelforge"]


def test_the_statement_is_byte_stable_but_for_its_times(signed, tmp_path):
    again = tmp_path / "again"
    done = run_cli(
        "build", f"manifests/{MANIFEST}", "--store", str(signed["store"]), "--out", str(again), "--sign-key", str(signed["private"]),
        cwd=signed["project"], env=_env(),
    )
    assert done.returncode == 0, done.stderr

    def without_times(directory: Path) -> str:
        data = _statement(directory)
        assert set(data["predicate"]["runDetails"].pop("metadata")) == {"startedOn", "finishedOn"}
        return json.dumps(data, sort_keys=True)

    assert without_times(again / TARGET) == without_times(signed["target"])


def test_verify_provenance_prints_source_manifest_signer_and_checks(downloaded, signed):
    done = run_cli("verify", "--provenance", str(downloaded), "--key", str(signed["public"]))
    assert done.returncode == 0, done.stderr
    from modelforge.lock import read_lock

    lock = read_lock(signed["project"] / "lock" / "tiny-medgemma-text-only.lock")
    assert "../fixtures/tiny-medgemma (local)" in done.stdout
    assert lock.manifest.digest in done.stdout
    assert _fingerprint(signed["public"]) in done.stdout
    assert "28 tensors fit Gemma3ForCausalLM" in done.stdout


def test_a_lock_verify_ignores_the_signature_files(signed):
    done = run_cli("verify", "lock/tiny-medgemma-text-only.lock", cwd=signed["project"])
    assert done.returncode == 0, done.stderr


def _tamper_output(directory: Path, signed) -> None:
    path = directory / "config.json"
    path.write_text(path.read_text().replace("Gemma3ForCausalLM", "EvilForCausalLM"))


def _tamper_statement(directory: Path, signed) -> None:
    envelope = _envelope(directory)
    data = json.loads(base64.b64decode(envelope["payload"]))
    data["predicate"]["buildDefinition"]["resolvedDependencies"][0]["annotations"]["path"] = "../someone-elses-model"
    envelope["payload"] = base64.b64encode(json.dumps(data).encode()).decode()
    (directory / "provenance.intoto.jsonl").write_text(json.dumps(envelope) + "\n")


def _wrong_key(directory: Path, signed) -> Path:
    return _key_pair(signed["keys"], "stranger")[1]


def _resigned_lock(directory: Path, signed) -> None:
    """An attacker changes an output and the lock's hash for it, re-makes the statement from that
    lock and re-signs both signatures with a key of their own."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.signer import CryptoSigner, SSlibKey

    _tamper_output(directory, signed)
    private, _ = _key_pair(signed["keys"], "attacker")
    envelope = _envelope(directory)
    data = json.loads(base64.b64decode(envelope["payload"]))
    for item in data["subject"]:
        if item["name"] == "config.json":
            item["digest"]["sha256"] = hashlib.sha256((directory / "config.json").read_bytes()).hexdigest()
    key = load_pem_private_key(private.read_bytes(), None)
    forged = Envelope(payload=json.dumps(data).encode(), payload_type=envelope["payloadType"], signatures={})
    forged.sign(CryptoSigner(key, SSlibKey.from_crypto(key.public_key(), keyid="attacker")))
    (directory / "provenance.intoto.jsonl").write_text(json.dumps(forged.to_dict()) + "\n")
    (directory / "model.sig").unlink()
    subprocess.run([*_model_signing(), "sign", "key", "--private_key", str(private), "--signature", str(directory / "model.sig"), str(directory)],
                   check=True, capture_output=True, timeout=120)


def _extra_file(directory: Path, signed) -> None:
    (directory / "modeling_evil.py").write_text("import os\n")


def _signature_removed(directory: Path, signed) -> None:
    (directory / "model.sig").unlink()


@pytest.mark.parametrize("tamper, says", [
    (_tamper_output, "config.json: sha256"),
    (_tamper_statement, "the signature does not verify"),
    (_wrong_key, "the signature does not verify"),
    (_resigned_lock, "the signature does not verify"),
    (_extra_file, "modeling_evil.py: not in the signed provenance"),
    (_signature_removed, "model.sig: missing"),
], ids=["tampered-output", "tampered-statement", "wrong-key", "re-signed-lock", "unlisted-file", "no-model-sig"])
def test_verify_provenance_refuses_in_one_line(downloaded, signed, tamper, says):
    key = tamper(downloaded, signed) or signed["public"]
    done = run_cli("verify", "--provenance", str(downloaded), "--key", str(key))
    assert done.returncode == 6, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert says in done.stderr


def test_an_unsigned_build_says_so_and_its_provenance_is_refused(tmp_path, signed):
    project = copy_project(tmp_path / "project")
    done = run_cli("build", f"manifests/{MANIFEST}", "--store", str(signed["store"]), cwd=project, env=_env())
    assert done.returncode == 0, done.stderr
    assert "SLSA provenance, unsigned" in done.stderr
    target = project / "dist" / "tiny-medgemma-text-only" / TARGET
    assert _statement(target)["predicateType"] == "https://slsa.dev/provenance/v1"
    refused = run_cli("verify", "--provenance", str(target), "--key", str(signed["public"]))
    assert refused.returncode == 6 and "unsigned" in refused.stderr and refused.stderr.count("\n") == 1


def test_an_ed25519_key_is_refused_before_the_build(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "ed25519.pem"
    key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    project = copy_project(tmp_path / "project")
    done = run_cli("build", f"manifests/{MANIFEST}", "--sign-key", str(key), cwd=project, env=_env())
    assert done.returncode == 2 and "not an EC P-256/384/521 key" in done.stderr
    assert not (project / "dist").exists()
