"""The shared remote cache against real components started here: moto's S3 server on 127.0.0.1 and
a file:// directory. Two "machines" are two fresh local stores (and output directories) building
the tiny text-only manifest. Nothing wrong accepted, nothing partial visible, nothing lost."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, copy_project
from modelforge import api
from modelforge.api import caching
from modelforge.errors import ConfigError, LockError, RemoteError
from modelforge.executor import SilentReporter
from modelforge.remote import object_path, record_path
from modelforge.signing import SigningKey, generate, load_signing_key
from modelforge.store import FileRecord, StepRecord, Store

MANIFEST = "manifests/tiny-medgemma-text-only.yaml"
STEPS = {"config", "files", "text.weights", "text", "text.check"}


@pytest.fixture(scope="session")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class Recording(SilentReporter):
    def __init__(self):
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


@pytest.fixture(params=["s3", "file"])
def team(request, tmp_path, monkeypatch):
    """A project with modelforge.toml pointing at an empty remote that trusts one key, whose private
    half is this machine's signing key (outside the project, as keygen insists)."""
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_server")
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        import boto3

        bucket = f"team-{os.urandom(6).hex()}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/modelforge"
    else:
        url = f"file://{tmp_path / 'nfs' / 'cache'}"
    monkeypatch.delenv("MODELFORGE_CACHE", raising=False)
    key_path = tmp_path / "keys" / "ci.key"
    monkeypatch.setenv("MODELFORGE_SIGNING_KEY", str(key_path))
    public = generate("ci-1", key_path)
    project = copy_project(tmp_path / "project")
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "{url}"\ntrusted_keys = ["{public.text}"]\n')
    return project


def machine(project: Path, name: str, **options):
    """A build on a fresh machine: its own store and output directory."""
    reporter = Recording()
    base = project.parent / name
    result = api.build(project / MANIFEST, store_dir=base / "store", out=base / "dist", reporter=reporter, **options)
    return result, reporter.messages


def remote_of(project: Path):
    return caching.remote_for(project)


def tree(directory: Path) -> dict[str, str]:
    """relative path → sha256 of every file, but the signed provenance (it carries the build's times)."""
    from modelforge.provenance import SIGNATURE_FILES

    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*")) if path.is_file() and path.name not in SIGNATURE_FILES
    }


def record_key(project: Path, step: str) -> str:
    from modelforge.lock import read_lock  # keys come from the lock the first build wrote

    return read_lock(project / "lock" / "tiny-medgemma-text-only.lock").steps[step].key


def put_raw(project: Path, path: str, data: bytes) -> None:
    import obstore

    obstore.put(remote_of(project).client, path, data)


def get_raw(project: Path, path: str) -> bytes:
    import obstore

    return bytes(obstore.get(remote_of(project).client, path).bytes())


# ---------------------------------------------------------------------------------------- hits


def test_a_second_machine_pulls_every_step_instead_of_running_it(team):
    first, _ = machine(team, "a")
    assert set(first.ran) == STEPS
    planned = api.plan(team / MANIFEST, store_dir=team.parent / "b" / "store")
    assert {status.name for status in planned.statuses if status.remote and not status.cached} == STEPS
    second, messages = machine(team, "b")
    assert second.ran == [] and set(second.pulled) == STEPS, messages
    assert tree(team / "b" / "dist") == tree(team / "a" / "dist")
    # What arrived is in the second store for good: a third build there touches nothing remote.
    third, _ = machine(team, "b", cache="")
    assert third.ran == [] and third.pulled == []


def test_a_deployer_pulls_the_targets_without_building_and_they_match_the_lock(team):
    machine(team, "a")
    lock = team / "lock" / "tiny-medgemma-text-only.lock"
    result = caching.pull(lock, store_dir=team.parent / "deployer" / "store", out=team.parent / "deployer" / "dist")
    assert result.done == ["text"]  # only the step that makes the target, not its inputs
    assert api.verify(lock, directory=team.parent / "deployer" / "dist") == []


def test_read_only_builds_pull_but_never_push(team):
    result, _ = machine(team, "a", cache_read_only=True)
    assert set(result.ran) == STEPS
    assert list(remote_of(team).records()) == []
    machine(team, "b")  # pushes
    pulled, _ = machine(team, "c", cache_read_only=True)
    assert set(pulled.pulled) == STEPS


# ------------------------------------------------------------------------------ nothing trusted blindly


def test_a_tampered_remote_object_is_refused_the_step_runs_locally_and_the_object_is_repaired(team):
    machine(team, "a")
    weights = api.caching.remote_for(team).lookup(record_key(team, "text.weights")).record
    (name, item), *_ = sorted(weights.outputs.items())
    original = get_raw(team, object_path(item.sha256))
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 1
    put_raw(team, object_path(item.sha256), bytes(flipped))

    result, messages = machine(team, "b")
    assert "text.weights" in result.ran and "text.weights" not in result.pulled
    assert any("does not hash to its name" in line and "text.weights" in line for line in messages), messages
    assert all("\n" not in line for line in messages)
    assert tree(team / "b" / "dist") == tree(team / "a" / "dist")
    # The machine that ran the step pushed the object again over the damaged one.
    assert hashlib.sha256(get_raw(team, object_path(item.sha256))).hexdigest() == item.sha256
    assert caching.verify_remote(team)[1] == []


def _squat(team: Path, step: str, signature: dict | None) -> tuple[str, bytes]:
    """Replace a step's remote record by one naming a poisoned object (uploaded under its true hash,
    so only the record's trust can refuse it), signed as given."""
    key = record_key(team, step)
    poison = b"poisoned output\n"
    sha = hashlib.sha256(poison).hexdigest()
    put_raw(team, object_path(sha), poison)
    fields = json.loads(get_raw(team, record_path(key)))["record"]
    name = sorted(fields["outputs"])[0]
    fields["outputs"][name] = {"sha256": sha, "size": len(poison)}
    document = {"format": "modelforge-step-record/1", "record": fields}
    if signature is not None:
        document["signature"] = signature(fields)
    put_raw(team, record_path(key), json.dumps(document).encode())
    return key, poison


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "how, warning",
    [
        ("unsigned", "is unsigned"),
        ("untrusted key", "a key modelforge.toml's cache.trusted_keys does not list"),
        ("forged signature", "which does not verify (forged or altered)"),
    ],
)
def test_an_unsigned_or_forged_record_is_ignored_with_one_line_and_the_step_runs_locally(team, tmp_path, how, warning):
    machine(team, "a")
    trusted = load_signing_key(Path(os.environ["MODELFORGE_SIGNING_KEY"]))
    attacker = SigningKey("ci-1", os.urandom(32))
    if how == "unsigned":
        signature = None
    elif how == "untrusted key":
        signature = lambda fields: {"key": attacker.public().text, "value": attacker.sign(_canonical(fields))}  # noqa: E731
    else:  # claims the trusted key, signed by another
        signature = lambda fields: {"key": trusted.public().text, "value": attacker.sign(_canonical(fields))}  # noqa: E731
    key, _poison = _squat(team, "files", signature)

    result, messages = machine(team, "b")
    assert "files" in result.ran and "files" not in result.pulled
    lines = [line for line in messages if key[:12] in line]
    assert len(lines) == 1 and warning in lines[0] and "the step runs locally" in lines[0], messages
    assert tree(team / "b" / "dist") == tree(team / "a" / "dist")
    # The squatter's record was replaced by the honest push: a third machine pulls the real output.
    third, _ = machine(team, "c")
    assert set(third.pulled) == STEPS
    assert tree(team / "c" / "dist") == tree(team / "a" / "dist")


def test_no_trusted_keys_means_nothing_is_pulled(team):
    machine(team, "a")
    text = (team / "modelforge.toml").read_text()
    (team / "modelforge.toml").write_text(text.split("\ntrusted_keys")[0] + "\n")
    result, messages = machine(team, "b")
    assert set(result.ran) == STEPS and result.pulled == []
    assert any("lists no cache.trusted_keys" in line for line in messages)


# ------------------------------------------------------------------------- interrupted and racing pushes


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MODELFORGE_") or key in ("MODELFORGE_SIGNING_KEY",)}
    environment.update(PYTHONPATH=str(ROOT / "src"), PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _visible_is_whole(team: Path) -> set[str]:
    """Every record the remote shows is trusted and has all its objects, each hashing to its name;
    returns the keys of those records."""
    checked, problems = caching.verify_remote(team)
    assert problems == [], problems
    return {key for key, _ in remote_of(team).records()}


@pytest.mark.parametrize("point", ["remote/object:3", "remote/record:2", "remote/record:5"])
def test_a_push_killed_mid_way_leaves_nothing_partial_and_a_retry_completes(team, point):
    machine(team, "a", cache="")  # built locally, nothing pushed yet
    store = team.parent / "a" / "store"
    child = _cli("cache", "push", "lock/tiny-medgemma-text-only.lock", "--store", str(store), cwd=team, MODELFORGE_KILL_AT=point)
    child.communicate(timeout=300)
    assert child.returncode == -9
    visible = _visible_is_whole(team)
    assert len(visible) < len(STEPS)  # killed before the last record
    retry = _cli("cache", "push", "lock/tiny-medgemma-text-only.lock", "--store", str(store), cwd=team)
    out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err
    assert f"{len(STEPS) - len(visible)} step(s) pushed, {len(visible)} already there" in out
    assert len(_visible_is_whole(team)) == len(STEPS)
    result, _ = machine(team, "b")
    assert set(result.pulled) == STEPS


def test_a_multipart_upload_killed_between_parts_is_invisible_and_a_retry_completes(team, tmp_path):
    """A 20 MiB object goes up in parts (multipart): killed after 12 MiB were read, the object must
    not be visible at all, then a retry uploads it whole."""
    store_dir = tmp_path / "big-store"
    store = Store(store_dir)
    payload = os.urandom(20 << 20)
    with store.scratch("big") as scratch:
        (scratch / "weights.bin").write_bytes(payload)
        sha = hashlib.sha256(payload).hexdigest()
        store.adopt(scratch / "weights.bin", sha)
    key = hashlib.sha256(b"a step that made one big file").hexdigest()
    store.put_record(StepRecord(key, "transform_weights", {"model.safetensors": FileRecord(sha, len(payload))}))
    store.close()
    script = (
        "import sys; from pathlib import Path; from modelforge.api import caching; from modelforge.store import Store;"
        f"remote = caching.remote_for(Path({str(team)!r})); store = Store(Path({str(store_dir)!r}));"
        f"remote.push(store.get_record({key!r}), store); print('pushed')"
    )
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MODELFORGE_KILL_AT="remote/part:12")
    killed = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    assert _visible_is_whole(team) == set()
    assert [meta["path"] for meta in remote_of(team).entries("objects/")] == []
    environment.pop("MODELFORGE_KILL_AT")
    done = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "pushed" in done.stdout, done.stderr
    assert _visible_is_whole(team) == {key}
    assert hashlib.sha256(get_raw(team, object_path(sha))).hexdigest() == sha
    # gc --remote keeps what a lock pins, deletes the rest, and (file://) the killed upload's staging file.
    machine(team, "a")
    pinned = {key for key, _ in remote_of(team).records()} - {key}
    collected = caching.gc_remote(team, grace=0, record_grace=0)
    assert collected.records == 1
    assert {key for key, _ in remote_of(team).records()} == pinned
    assert _visible_is_whole(team) == pinned
    if remote_of(team).url.startswith("file://"):
        leftovers = list(Path(remote_of(team).url.removeprefix("file://")).rglob("*#*"))
        assert leftovers == []


def test_two_pushers_racing_write_each_record_exactly_once(team):
    machine(team, "a", cache="")
    store = str(team.parent / "a" / "store")
    # Both reach each record's create at about the same moment.
    racers = [
        _cli("cache", "push", "lock/tiny-medgemma-text-only.lock", "--store", store, cwd=team, MODELFORGE_PAUSE_AT="remote/record:0.3")
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    pushed = [int(out.split(": ")[1].split(" step(s) pushed")[0]) for out, _ in outputs]
    assert sum(pushed) == len(STEPS), outputs  # each record created once, by one of them
    assert len(_visible_is_whole(team)) == len(STEPS)
    result, _ = machine(team, "b")
    assert set(result.pulled) == STEPS


# ---------------------------------------------------------------------------------- configuration


def test_a_typo_in_modelforge_toml_is_an_error_naming_the_key(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "modelforge.toml").write_text('[cache]\nurl = "s3://bucket/x"\ntrusted_key = []\n')
    with pytest.raises(ConfigError, match=r"modelforge.toml: cache.trusted_key: Extra inputs are not permitted"):
        api.build(project / MANIFEST, store_dir=tmp_path / "store")


def test_a_bad_trusted_key_and_a_bad_url_are_refused(tmp_path):
    project = copy_project(tmp_path / "project")
    (project / "modelforge.toml").write_text('[cache]\nurl = "s3://bucket/x"\ntrusted_keys = ["ci-1:notakey"]\n')
    with pytest.raises(ConfigError, match=r"cache.trusted_keys: 'ci-1:notakey' is not a public key"):
        caching.remote_for(project)
    (project / "modelforge.toml").write_text("[cache]\n")
    with pytest.raises(ConfigError, match=r"the scheme must be one of s3://"):
        caching.remote_for(project, cache="http://example.com/cache")


def test_keygen_refuses_to_write_a_private_key_inside_a_repository(tmp_path):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"inside the git work tree .* must never be committed"):
        generate("ci-1", tmp_path / "repo" / "keys" / "ci.key")
    assert not (tmp_path / "repo" / "keys" / "ci.key").exists()


def test_cli_keygen_then_a_build_through_the_cli_pushes_and_a_second_pulls(tmp_path):
    project = copy_project(tmp_path / "project")
    environment = dict(os.environ, PYTHONPATH=str(ROOT / "src"), MODELFORGE_SIGNING_KEY=str(tmp_path / "keys" / "me.key"))
    keygen = subprocess.run([sys.executable, "-m", "modelforge.cli", "cache", "keygen", "me"], env=environment, capture_output=True, text=True)
    assert keygen.returncode == 0, keygen.stderr
    assert oct((tmp_path / "keys" / "me.key").stat().st_mode & 0o777) == "0o600"
    trusted_line = keygen.stdout.strip().splitlines()[-1]
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "file://{tmp_path / "cache"}"\n{trusted_line}\n')
    for store, expected in (("s1", "5 step(s) ran, 0 cached"), ("s2", "0 step(s) ran, 5 cached (5 pulled from the remote cache)")):
        run = subprocess.run(
            [sys.executable, "-m", "modelforge.cli", "build", MANIFEST, "--store", str(tmp_path / store), "--out", str(tmp_path / store / "dist")],
            cwd=project, env=environment, capture_output=True, text=True, timeout=300,
        )
        assert run.returncode == 0 and expected in run.stdout, run.stdout + run.stderr


def test_an_unreachable_cache_is_one_warning_and_the_build_goes_on_locally(team, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    result, messages = machine(team, "a", cache="s3://nobody-home/cache")
    assert set(result.ran) == STEPS
    warnings = [line for line in messages if "goes on without the remote cache" in line]
    assert len(warnings) == 1 and "check the network" in warnings[0], messages


# ------------------------------------------------------------------------------------------- gc


def test_local_gc_forgets_records_by_age_and_then_by_size_and_a_rebuild_runs_only_those(team):
    from modelforge.lock import read_lock

    machine(team, "a", cache="")
    built = tree(team.parent / "a" / "dist")
    store_dir = team.parent / "a" / "store"
    keys = {name: step.key for name, step in read_lock(team / "lock" / "tiny-medgemma-text-only.lock").steps.items()}
    old = time.time() - 40 * 86400
    record_file = store_dir / "steps" / keys["files"][:2] / f"{keys['files']}.json"
    os.utime(record_file, (old, old))
    collected = caching.gc_local(store_dir=store_dir, older_than=caching.parse_duration("30d"), grace=0)
    assert collected.records == 1  # its objects stay: `text` (assemble) names the same carried files
    again, _ = machine(team, "a", cache="")
    assert again.ran == ["files"]
    # By size: nothing fits in 1 byte, so every record goes, least recently used first, with every object.
    collected = caching.gc_local(store_dir=store_dir, max_size=1, grace=0)
    assert collected.records == len(STEPS)
    assert list((store_dir / "objects").rglob("*/*")) == []
    rebuilt, _ = machine(team, "a", cache="")
    assert set(rebuilt.ran) == STEPS
    assert tree(team.parent / "a" / "dist") == built


def test_cache_verify_through_the_cli_names_a_damaged_object_and_exits_7(team):
    machine(team, "a")
    record = remote_of(team).lookup(record_key(team, "config")).record
    (item,) = record.outputs.values()
    put_raw(team, object_path(item.sha256), b"not the config\n")
    run = _cli("cache", "verify", cwd=team)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 7, out + err
    assert f"DAMAGED objects/{item.sha256[:2]}/{item.sha256}: its content hashes to" in err
    # The object, and each record naming it (the config step's, and the assembled checkpoint's).
    assert err.strip().splitlines()[-1].startswith("error: 3 problem(s) in the remote cache; builds ignore these entries")
    assert err.count("but missing or damaged") == 2


# ------------------------------------------------------------------ hostile bytes from the bucket
# Anyone who can write to the bucket, with no key, must not stop a build: what they plant is a
# one-line warning and a local run.

FILE_ONLY = pytest.mark.parametrize("team", ["file"], indirect=True)


def committed_key(step: str) -> str:
    from modelforge.lock import read_lock

    return read_lock(ROOT / "lock" / "tiny-medgemma-text-only.lock").steps[step].key


def _plant_record(team: Path, step: str, data: bytes) -> str:
    key = committed_key(step)
    put_raw(team, record_path(key), data.replace(b"KEY", key.encode()))
    return key


HOSTILE_RECORDS = {
    "deep nesting": b"[" * 200_000,
    "deep nesting in a record": b'{"format": "modelforge-step-record/1", "record": ' + b"{\"a\": " * 100_000 + b"}",
    "not UTF-8": b"\xff\xfe\x00garbage",
    "outputs of the wrong shape": json.dumps(
        {"format": "modelforge-step-record/1", "record": {"key": "KEY", "kind": "x", "outputs": {"a": {"sha256": [], "size": {}}}}}
    ).encode(),
    "outputs a list": json.dumps({"format": "modelforge-step-record/1", "record": {"key": "KEY", "kind": "x", "outputs": []}}).encode(),
    "huge number": b'{"format": "modelforge-step-record/1", "n": 1' + b"0" * 100_000 + b"}",
}


@FILE_ONLY
@pytest.mark.parametrize("body", sorted(HOSTILE_RECORDS))
def test_a_hostile_remote_record_is_one_warning_in_plan_and_build_and_the_step_runs_locally(team, body):
    key = _plant_record(team, "config", HOSTILE_RECORDS[body])
    planned = api.plan(team / MANIFEST, store_dir=team.parent / "b" / "store")
    assert not any(status.remote for status in planned.statuses if status.name == "config")
    result, messages = machine(team, "b")
    assert "config" in result.ran and "config" not in result.pulled
    lines = [line for line in messages if key[:12] in line]
    assert len(lines) == 1 and "the step runs locally" in lines[0] and "\n" not in lines[0], messages
    assert len(lines[0]) < 400


@FILE_ONLY
def test_a_hostile_record_through_the_cli_plan_and_build_exits_0(team):
    _plant_record(team, "config", HOSTILE_RECORDS["deep nesting"])
    for command in (["plan", MANIFEST], ["build", MANIFEST, "--store", str(team.parent / "b" / "store"), "--out", str(team.parent / "b" / "dist")]):
        run = _cli(*command, "--cache", remote_of(team).url, cwd=team)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, out + err
        assert "internal error" not in out + err


@FILE_ONLY
def test_a_huge_remote_record_is_refused_by_its_size_before_it_is_read(team):
    from modelforge.remote import MAX_RECORD_BYTES

    key = committed_key("config")
    path = Path(remote_of(team).url.removeprefix("file://")) / record_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # 256 MiB, sparse: nothing on disk, everything to a reader that reads it whole
        handle.truncate(256 << 20)
    assert MAX_RECORD_BYTES <= 1 << 20
    result, messages = machine(team, "b", cache_read_only=True)  # read-only: the planted record stays
    assert "config" in result.ran and "config" not in result.pulled
    lines = [line for line in messages if key[:12] in line]
    assert len(lines) == 1 and "268435456 bytes" in lines[0] and "the step runs locally" in lines[0], messages
    # ls, verify and gc read records too: each names it, none reads it whole.
    entries = {entry.key: entry for entry in caching.ls(team)}
    assert "268435456 bytes" in entries[key].trust
    assert any("268435456 bytes" in problem.problem for problem in caching.verify_remote(team)[1])
    # A writer's honest push replaces it.
    machine(team, "c")
    assert remote_of(team).lookup(key).record is not None


# --------------------------------------------------------------- presence by hash, not by size


@pytest.mark.parametrize("how", ["same size", "other size"])
def test_a_planted_wrong_object_does_not_block_an_honest_push(team, how):
    """An attacker who predicts a reproducible build's hashes plants wrong bytes under one of them
    before any honest push: the pusher holding the right bytes replaces them, so readers (even
    read-only ones, who never push) pull the step instead of running it forever."""
    machine(team, "a", cache="")
    store = Store(team.parent / "a" / "store")
    record = store.get_record(committed_key("config"))
    store.close()
    (item,) = record.outputs.values()
    planted = b"x" * item.size if how == "same size" else b"x"
    put_raw(team, object_path(item.sha256), planted)
    caching.push(team / "lock" / "tiny-medgemma-text-only.lock", store_dir=team.parent / "a" / "store")
    assert hashlib.sha256(get_raw(team, object_path(item.sha256))).hexdigest() == item.sha256
    result, messages = machine(team, "reader", cache_read_only=True)
    assert set(result.pulled) == STEPS, messages


# ------------------------------------------------------------------------ one-line remote errors


@FILE_ONLY
def test_a_missing_bucket_is_one_line_in_build_and_push_never_a_dump(team, s3_server, monkeypatch):
    """The bucket's name is wrong (or it was deleted): a build goes on locally with one warning, and
    `cache push` fails with one line (exit 7) that says so, with no credentials in either."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    missing = "s3://no-such-bucket-here/modelforge"
    store = str(team.parent / "a" / "store")
    for command in (
        ["build", MANIFEST, "--store", store, "--out", str(team.parent / "a" / "dist"), "--cache", missing],
        ["cache", "push", "lock/tiny-medgemma-text-only.lock", "--store", store, "--cache", missing],
    ):
        run = _cli(*command, cwd=team, AWS_ACCESS_KEY_ID="AKIAIOSFODNN7EXAMPLE")
        out, err = run.communicate(timeout=300)
        assert run.returncode == (0 if command[0] == "build" else 7), out + err
        lines = [line for line in (out + err).splitlines() if "no-such-bucket-here" in line and ("warning" in line or "error" in line)]
        assert len(lines) == 1 and "does not exist" in lines[0], out + err
        assert len(lines[0]) < 500 and "Debug" not in out + err and "<?xml" not in out + err, lines
        assert "AKIAIOSFODNN7EXAMPLE" not in out + err and "wJalrXUtnFEMIK7MDENG" not in out + err


def test_remote_error_text_is_redacted_and_one_line():
    from modelforge.remote import redact

    text = (
        "Error performing GET https://bucket.s3.amazonaws.com/x/objects/ab/abcd?X-Amz-Algorithm=AWS4-HMAC-SHA256&"
        "X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20261204&X-Amz-Signature=deadbeef in 4ms\n"
        "https://acct.blob.core.windows.net/c/x?sv=2022-11-02&sig=c2VjcmV0 "
        'Authorization: AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2026, Signature=0123abcd '
        'secret_access_key: "wJalrXUtnFEMIK7MDENG" account_key=c2VjcmV0a2V5 https://user:hunter2@proxy.example/x'
    )
    shown = redact(text)
    for secret in ("AKIAIOSFODNN7EXAMPLE", "deadbeef", "c2VjcmV0", "0123abcd", "wJalrXUtnFEMIK7MDENG", "hunter2"):
        assert secret not in shown, shown
    assert "https://bucket.s3.amazonaws.com/x/objects/ab/abcd" in shown and "acct.blob.core.windows.net/c/x" in shown


# --------------------------------------------------------- gc --remote never deletes what may be pinned


def _other_lock(team: Path) -> None:
    """A second, readable lock pinning other keys (so that gc has something to keep)."""
    text = (ROOT / "lock" / "tiny-medgemma-text-only.lock").read_text()
    from modelforge.lock import read_lock

    for step in read_lock(ROOT / "lock" / "tiny-medgemma-text-only.lock").steps.values():
        text = text.replace(step.key, hashlib.sha256(step.key.encode()).hexdigest())
    (team / "lock" / "other.lock").write_text(text)


@FILE_ONLY
def test_gc_remote_refuses_when_a_lock_cannot_be_read_and_deletes_nothing(team):
    machine(team, "a")
    _other_lock(team)
    lock = team / "lock" / "tiny-medgemma-text-only.lock"
    lock.write_text("<<<<<<< HEAD\n" + lock.read_text() + "=======\nlock_version: 1\n>>>>>>> feature\n")
    before = {key for key, _ in remote_of(team).records()}
    for arguments in (["--dry-run"], []):
        run = _cli("cache", "gc", "--remote", "--record-grace", "0s", *arguments, cwd=team)
        out, err = run.communicate(timeout=300)
        assert run.returncode == 6, out + err
        assert err.count("\n") == 1 and "tiny-medgemma-text-only.lock" in err and "nothing was deleted" in err, err
        assert "would remove" not in out
    assert {key for key, _ in remote_of(team).records()} == before
    with pytest.raises(LockError, match=r"tiny-medgemma-text-only.lock"):
        caching.gc_remote(team, dry_run=True, grace=0, record_grace=0)


def test_gc_remote_spares_records_younger_than_the_grace_period_and_their_objects(team):
    machine(team, "a")
    _other_lock(team)
    (team / "lock" / "tiny-medgemma-text-only.lock").unlink()  # a teammate's branch lock, not here
    records = {key for key, _ in remote_of(team).records()}
    collected = caching.gc_remote(team, grace=0)  # records: the default grace, 7 days
    assert collected.records == 0 and collected.objects == 0
    assert {key for key, _ in remote_of(team).records()} == records
    assert caching.verify_remote(team)[1] == []
    assert caching.RECORD_GRACE_SECONDS == 7 * 86400
    collected = caching.gc_remote(team, grace=0, record_grace=0)
    assert collected.records == len(STEPS)
    assert list(remote_of(team).records()) == []


@FILE_ONLY
def test_gc_remote_deletes_an_unpinned_record_older_than_the_grace_period(team):
    machine(team, "a")
    _other_lock(team)
    (team / "lock" / "tiny-medgemma-text-only.lock").unlink()
    old_key = committed_key("text.check")
    path = Path(remote_of(team).url.removeprefix("file://")) / record_path(old_key)
    old = time.time() - 8 * 86400
    os.utime(path, (old, old))
    collected = caching.gc_remote(team, grace=0)
    assert collected.records == 1
    assert {key for key, _ in remote_of(team).records()} == {committed_key(step) for step in STEPS} - {old_key}
    assert caching.verify_remote(team)[1] == []


# ------------------------------------------------------------------------ credentials in the toml

SECRET_OPTIONS = [
    "account_key", "azure_storage_account_key", "master_key", "service_account_key", "google_service_account_key",
    "aws_secret_access_key", "aws_session_token", "azure_client_secret", "azure_storage_sas_key", "google_application_credentials",
]


@pytest.mark.parametrize("name", SECRET_OPTIONS)
def test_a_credential_in_cache_options_is_refused_naming_it(tmp_path, name):
    project = copy_project(tmp_path / "project")
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "s3://bucket/x"\n[cache.options]\n{name} = "c2VjcmV0"\n')
    with pytest.raises(ConfigError, match=rf"cache.options: {name}: credentials do not belong in a committed file"):
        caching.remote_for(project)


def test_settings_that_are_not_credentials_are_accepted_and_sent_to_ray_workers(tmp_path):
    from modelforge.ray_executor import remote_spec
    from modelforge.remote import RemoteCache

    project = copy_project(tmp_path / "project")
    allowed = {"endpoint": "http://minio:9000", "region": "eu-west-1", "aws_sse_kms_key_id": "arn:aws:kms:eu-west-1:1:key/x"}
    lines = "".join(f'{name} = "{value}"\n' for name, value in allowed.items())
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "s3://bucket/x"\n[cache.options]\n{lines}')
    assert caching.remote_for(project).options == allowed
    # Whatever reaches a RemoteCache another way, a Ray task spec carries no credential.
    remote = RemoteCache("s3://bucket/x", options={**allowed, **{name: "c2VjcmV0" for name in SECRET_OPTIONS}})
    assert remote_spec(remote) == {"url": "s3://bucket/x", "options": allowed}


# ------------------------------------------------------------------------- who wrote a record, and revocation


def _trust_only(project: Path, *keys: str) -> None:
    url = (project / "modelforge.toml").read_text().split('url = "')[1].split('"')[0]
    listed = ", ".join(f'"{key}"' for key in keys)
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "{url}"\ntrusted_keys = [{listed}]\n')


def _second_key(team: Path, monkeypatch, name: str = "ci-2"):
    """A second machine's key, trusted alongside the first; this process signs with it from now on."""
    key_path = team.parent / "keys" / f"{name}.key"
    public = generate(name, key_path)
    monkeypatch.setenv("MODELFORGE_SIGNING_KEY", str(key_path))
    return public


def test_local_records_say_who_wrote_them():
    from modelforge.store import describe_writer

    assert describe_writer("here") == "built here"
    assert describe_writer(None).startswith("writer unknown")
    text = describe_writer("signed:ci-1:" + "A" * 43 + "=")
    assert text.startswith("pulled, signed by ci-1 (key SHA256:") and text.endswith(")")


def test_revoking_a_key_makes_every_record_it_signed_unusable_in_every_store(team, monkeypatch):
    first_key = load_signing_key(Path(os.environ["MODELFORGE_SIGNING_KEY"])).public()
    machine(team, "a")
    pulled, _ = machine(team, "b")
    assert set(pulled.pulled) == STEPS
    store_b = team.parent / "b" / "store"
    writers = {json.loads(path.read_text()).get("writer") for path in store_b.glob("steps/*/*.json")}
    assert writers == {f"signed:{first_key.text}"}
    # ci-1 leaks: the team trusts ci-2 only. b's pulled records are unusable, with or without the remote.
    second = _second_key(team, monkeypatch)
    _trust_only(team, second.text)
    listed = _cli("cache", "ls", "--store", str(store_b), cwd=team)
    out, err = listed.communicate(timeout=300)
    assert listed.returncode == 0, err
    revoked = [line for line in out.splitlines() if "revoked" in line]
    assert len(revoked) == len(STEPS) and all("ci-1" in line for line in revoked), out
    checked = _cli("cache", "verify", "--store", str(store_b), cwd=team)
    out, err = checked.communicate(timeout=300)
    assert sum("ci-1" in line and "revoked" in line for line in (out + err).splitlines()) == len(STEPS), out + err
    rebuilt, messages = machine(team, "b", cache="")
    assert set(rebuilt.ran) == STEPS and rebuilt.pulled == [], messages
    assert tree(team / "b" / "dist") == tree(team / "a" / "dist")
    # Rebuilt here, they are b's own now: a second build runs nothing.
    again, _ = machine(team, "b", cache="")
    assert again.ran == []


def test_cache_push_never_signs_a_record_this_machine_did_not_build(team, monkeypatch):
    machine(team, "a")
    machine(team, "b")  # pulls every step, signed by ci-1
    second = _second_key(team, monkeypatch)
    # ci-1 is revoked: its remote records are untrusted now, and b must not re-sign them as ci-2.
    _trust_only(team, second.text)
    before = {key: get_raw(team, record_path(key)) for key, _ in remote_of(team).records()}
    result = caching.push(team / "lock" / "tiny-medgemma-text-only.lock", store_dir=team.parent / "b" / "store")
    assert result.done == [] and set(result.missing) == STEPS
    assert {key: get_raw(team, record_path(key)) for key, _ in remote_of(team).records()} == before
    store = Store(team.parent / "b" / "store")
    try:
        record = store.get_record(record_key(team, "config"))
        with pytest.raises(RemoteError, match="not built on this machine"):
            remote_of(team).put_record(record)
    finally:
        store.close()


def test_cache_push_refuses_target_outputs_that_differ_from_the_lock(team):
    machine(team, "a", cache="")
    store_dir = team.parent / "a" / "store"
    key = record_key(team, "text")
    path = store_dir / "steps" / key[:2] / f"{key}.json"
    record = json.loads(path.read_text())
    record["outputs"]["config.json"] = record["outputs"]["tokenizer_config.json"]
    path.write_text(json.dumps(record))
    with pytest.raises(LockError, match=r"target text differ.*\(config\.json\)"):
        caching.push(team / "lock" / "tiny-medgemma-text-only.lock", store_dir=store_dir)
    assert list(remote_of(team).records()) == []


def test_records_of_an_older_modelforge_are_not_trusted_as_built_here(team):
    machine(team, "a", cache="")
    store_dir = team.parent / "a" / "store"
    for path in store_dir.glob("steps/*/*.json"):
        record = json.loads(path.read_text())
        record.pop("writer", None)
        record.pop("inputs", None)
        path.write_text(json.dumps(record))
    result = caching.push(team / "lock" / "tiny-medgemma-text-only.lock", store_dir=store_dir)
    assert result.done == [] and list(remote_of(team).records()) == []
    rebuilt, _ = machine(team, "a", cache="")
    assert set(rebuilt.ran) == STEPS
