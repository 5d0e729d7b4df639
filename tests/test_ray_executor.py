"""`build --executor ray` against a real Ray cluster started here: two nodes on this machine (`ray
start --head`, then `ray start --address`), a "small" one and a "big" one, each with its own memory
resource and its own store directory, and a file:// remote cache between them and the driver (this
process, with a third store). Nothing here mocks Ray or the steps."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import ROOT, copy_project
from modelforge import api
from modelforge.api import caching
from modelforge.errors import ClusterError, PlanError, RemoteError
from modelforge.executor import SilentReporter
from modelforge.lock import read_lock
from modelforge.plan import compute_keys
from modelforge.signing import generate
from modelforge.store import Store

MANIFEST = "manifests/tiny-medgemma-text-only.yaml"
LOCK = "lock/tiny-medgemma-text-only.lock"
STEPS = {"config", "files", "text.weights", "text", "text.check"}
GIB = 2**30
SMALL_MEMORY, BIG_MEMORY = 1 * GIB, 6 * GIB  # what each node offers Ray's scheduler (`ray start --memory`)
# A task no node can take waits for one forever: a wrong placement fails, it must not hang.
pytestmark = pytest.mark.timeout(240)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclasses.dataclass
class Cluster:
    address: str
    stores: dict[str, Path]  # "small" / "big" → that node's store directory ($MODELFORGE_STORE on the node)
    node_ids: dict[str, str]

    def wipe_stores(self) -> None:
        for store in self.stores.values():
            shutil.rmtree(store, ignore_errors=True)
            store.mkdir(parents=True)

    def node_has(self, name: str, key: str) -> bool:
        return (self.stores[name] / "steps" / key[:2] / f"{key}.json").exists()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two Ray nodes on 127.0.0.1, each started in its own process group so that teardown stops
    exactly what it started (never `ray stop`, which stops every Ray process of the user)."""
    import ray

    base = tmp_path_factory.mktemp("ray-nodes")
    temp_dir = Path(tempfile.mkdtemp(prefix="mf-ray-", dir="/tmp"))  # short: Ray's unix socket paths
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("MODELFORGE_", "RAY_", "HF_"))}
    environment.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(base / "hf"),
        RAY_USAGE_STATS_ENABLED="0",
        # Ray's memory monitor kills workers when the whole machine is short of memory; what this
        # module tests is placement by the declared resources, on a machine others share.
        RAY_memory_monitor_refresh_ms="0",
    )
    ray_command = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "80000000", "--disable-usage-stats"]
    nodes = {
        "small": [
            "--head", "--port", str(port), "--temp-dir", str(temp_dir), "--include-dashboard=false", "--dashboard-port", str(_free_port()),
            "--ray-client-server-port", str(_free_port()), "--memory", str(SMALL_MEMORY), "--resources", '{"small": 1}',
        ],
        "big": ["--address", f"127.0.0.1:{port}", "--memory", str(BIG_MEMORY), "--resources", '{"big": 1}'],
    }
    groups, stores = [], {}
    try:
        for name, arguments in nodes.items():
            stores[name] = base / f"{name}-store"
            stores[name].mkdir()
            started = subprocess.Popen(
                [ray_command, "start", *arguments, *common, "--dashboard-agent-listen-port", str(_free_port())],
                env={**environment, "MODELFORGE_STORE": str(stores[name])}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )
            groups.append(started.pid)  # the leader of a new session: its pid is the group's id
            output, _ = started.communicate(timeout=120)
            assert started.returncode == 0, output[-2000:]
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        try:
            node_ids = {}
            for node in ray.nodes():
                for name in ("small", "big"):
                    if node["Alive"] and name in node["Resources"]:
                        node_ids[name] = node["NodeID"]
        finally:
            ray.shutdown()
        assert set(node_ids) == {"small", "big"}
        yield Cluster(f"127.0.0.1:{port}", stores, node_ids)
    finally:
        # `ray start` ran as the leader of a new session; the daemons it spawned (and their workers)
        # stayed in its process group: stop exactly those.
        for group in groups:
            _stop_group(group)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(group: int) -> None:
    for signal_number, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, signal_number)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------- helpers


class Recording(SilentReporter):
    """Keeps what the executor reports; on_message may act on a line (the kill test does)."""

    def __init__(self, on_message=None):
        self.started: dict[str, str] = {}
        self.messages: list[str] = []
        self.on_message = on_message

    def step_started(self, name: str, kind: str, reason: str) -> None:
        self.started[name] = reason

    def message(self, text: str) -> None:
        self.messages.append(text)
        if self.on_message is not None:
            self.on_message(text)


@pytest.fixture
def team(cluster, tmp_path, monkeypatch):
    """A project whose modelforge.toml points at an empty file:// cache trusting this driver's key;
    both nodes' stores emptied, so every step that runs runs on the cluster."""
    cluster.wipe_stores()
    key_path = tmp_path / "keys" / "driver.key"
    monkeypatch.setenv("MODELFORGE_SIGNING_KEY", str(key_path))
    public = generate("driver", key_path)
    project = copy_project(tmp_path / "project")
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "file://{tmp_path / "cache"}"\ntrusted_keys = ["{public.text}"]\n')
    return project


def keys_of(project: Path) -> dict[str, str]:
    return {name: step.key for name, step in read_lock(project / LOCK).steps.items()}


# ---------------------------------------------------------------------------------------- cases


def test_the_tiny_manifest_builds_on_the_cluster_byte_for_byte_as_locally(cluster, team):
    reporter = Recording()
    result = api.build(team / MANIFEST, executor="ray", address=cluster.address, store_dir=team.parent / "driver-store", reporter=reporter)
    assert set(result.ran) == STEPS and set(result.placements) == STEPS, reporter.messages
    assert set(result.placements.values()) <= set(cluster.node_ids.values())
    assert reporter.started == {name: "never built" for name in STEPS}  # the reasons, as a local build gives them
    # The lock (every step key, every target file's sha256, the architecture check) is the committed
    # one, which a local build reproduces (tests/test_offline.py): byte for byte the local build.
    assert (team / LOCK).read_text() == (ROOT / LOCK).read_text()
    assert api.verify(ROOT / LOCK, directory=team / "dist" / "tiny-medgemma-text-only") == []
    # Each step ran where its record is: in that node's store, and only there.
    by_id = {node_id: name for name, node_id in cluster.node_ids.items()}
    for step, key in keys_of(team).items():
        assert cluster.node_has(by_id[result.placements[step]], key), step
    # The driver signed and pushed every record: a fresh machine pulls the whole build.
    again = api.build(team / MANIFEST, store_dir=team.parent / "fresh-store", out=team.parent / "fresh-dist")
    assert again.ran == [] and set(again.pulled) == STEPS


def test_two_manifests_build_at_once_and_the_steps_they_share_run_once(cluster, team):
    # A variant that differs only in its shard size: its config and files steps have the same keys.
    variant = team / "manifests" / "tiny-variant.yaml"
    text = (team / MANIFEST).read_text().replace("name: tiny-medgemma-text-only", "name: tiny-variant")
    variant.write_text(text.replace("max_shard_size: 400KB", "max_shard_size: 200KB"))
    reporter = Recording()
    first, second = api.build_many(
        [team / MANIFEST, variant], executor="ray", address=cluster.address, store_dir=team.parent / "driver-store", reporter=reporter
    )
    # One worker process per task (max_calls=1): 5 tasks, and the variant's own text.weights, text, text.check.
    workers = {found.group(1) for line in reporter.messages if (found := re.search(r" runs on Ray node (\w+ \(worker pid \d+\))", line))}
    assert len(workers) == 8, reporter.messages
    assert set(reporter.started) == {f"{manifest}:{name}" for manifest in ("tiny-medgemma-text-only", "tiny-variant") for name in STEPS}
    assert set(first.placements) == set(second.placements) == STEPS
    assert (team / LOCK).read_text() == (ROOT / LOCK).read_text()
    assert api.verify(team / "lock" / "tiny-variant.lock", directory=team / "dist" / "tiny-variant") == []
    shards = sorted(path.name for path in (team / "dist" / "tiny-variant" / "text").glob("*.safetensors"))
    assert len(shards) > len(list((team / "dist" / "tiny-medgemma-text-only" / "text").glob("*.safetensors")))


def test_a_step_predicted_larger_than_the_small_node_runs_on_the_big_node(cluster, team):
    project = api.open_project(team / MANIFEST)
    remote = caching.remote_for(team)
    store = Store(team.parent / "driver-store")
    try:
        gathered = api.gather(project, store, None, SilentReporter(), need_weights=True)
        plan = api.plan_for(project, gathered)
        # Every step predicted above the small node's memory and within the big one's: as a 4B
        # export is on a cluster of a 16 GiB and a 64 GiB machine.
        predicted = {step.name: 3 * GIB for step in plan.steps}
        plan = dataclasses.replace(plan, facts={**plan.facts, "memory": predicted})
        from modelforge import ray_executor

        job = ray_executor.Job(plan, gathered.paths, api.tools_of(plan), {}, SilentReporter(), frozenset({"text"}))
        ray_executor.run_plans([job], store, remote, cluster.address)
    finally:
        store.close()
    assert job.placements == {name: cluster.node_ids["big"] for name in STEPS}
    keys = compute_keys(plan, api.tools_of(plan))
    for step in plan.steps:
        key = keys[step.name]["key"]
        assert cluster.node_has("big", key) and not cluster.node_has("small", key), step.name


def test_a_step_larger_than_every_node_is_refused_before_anything_runs(cluster, team):
    project = api.open_project(team / MANIFEST)
    store = Store(team.parent / "driver-store")
    try:
        gathered = api.gather(project, store, None, SilentReporter(), need_weights=True)
        plan = api.plan_for(project, gathered)
        plan = dataclasses.replace(plan, facts={**plan.facts, "memory": {"text.weights": 40 * GIB}})
        from modelforge import ray_executor

        job = ray_executor.Job(plan, gathered.paths, api.tools_of(plan), {}, SilentReporter(), frozenset({"text"}))
        with pytest.raises(PlanError, match=r"step text.weights would need about 40.0 GiB .* the largest node of the Ray cluster offers 6.0 GiB"):
            ray_executor.run_plans([job], store, caching.remote_for(team), cluster.address)
    finally:
        store.close()
    assert job.placements == {}


def test_a_worker_killed_mid_step_is_retried_and_the_build_is_right(cluster, team, monkeypatch):
    # The step pauses at its start on every attempt (fault points reach the workers), long enough
    # for the driver to hear where it runs; the first attempt's worker is then SIGKILLed.
    monkeypatch.setenv("MODELFORGE_PAUSE_AT", "transform_weights/start:2")
    killed: list[int] = []

    def kill_first_worker(text: str) -> None:
        found = re.fullmatch(r"step text\.weights runs on Ray node \w+ \(worker pid (\d+)\)", text)
        if found and not killed:
            killed.append(int(found.group(1)))
            os.kill(killed[0], signal.SIGKILL)

    reporter = Recording(kill_first_worker)
    result = api.build(team / MANIFEST, executor="ray", address=cluster.address, store_dir=team.parent / "driver-store", reporter=reporter)
    assert killed, reporter.messages
    assert any("text.weights: its worker was lost; retried (attempt 2" in line for line in reporter.messages), reporter.messages
    assert set(result.ran) == STEPS
    assert (team / LOCK).read_text() == (ROOT / LOCK).read_text()
    assert api.verify(ROOT / LOCK, directory=team / "dist" / "tiny-medgemma-text-only") == []


def test_without_a_cache_url_the_ray_executor_says_what_to_set(cluster, tmp_path):
    project = copy_project(tmp_path / "project")
    with pytest.raises(RemoteError, match=r"--executor ray exchanges step outputs through the remote cache, and none is set: pass --cache URL"):
        api.build(project / MANIFEST, executor="ray", address=cluster.address, store_dir=tmp_path / "store")
    from modelforge.cli import main

    outcome = CliRunner().invoke(main, ["build", "--executor", "ray", "--address", cluster.address, str(project / MANIFEST)])
    assert outcome.exit_code == 7
    assert outcome.output.count("\n") == 1 and "error: --executor ray exchanges step outputs through the remote cache" in outcome.output


def test_without_ray_installed_the_ray_executor_says_how_to_install_it(tmp_path):
    project = copy_project(tmp_path / "project")
    program = "import sys; sys.modules['ray'] = None; from modelforge.cli import main; main()"  # as if not installed
    outcome = subprocess.run(
        [sys.executable, "-c", program, "build", "--executor", "ray", "--cache", f"file://{tmp_path / 'cache'}", str(project / MANIFEST)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=120,
    )
    assert outcome.returncode == 8
    assert outcome.stderr == "error: --executor ray needs Ray, which is not installed; run `pip install 'modelforge[ray]'`\n"


def test_a_cluster_out_of_reach_is_one_line_not_a_hang(tmp_path):
    project = copy_project(tmp_path / "project")
    nobody = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ClusterError, match=rf"cannot reach a Ray cluster at {nobody} .*; start one with `ray start --head`"):
        api.build(project / MANIFEST, executor="ray", address=nobody, cache=f"file://{tmp_path / 'cache'}", store_dir=tmp_path / "store")


def _run_on_big(team: Path, cluster, remote, store_dir: Path):
    """Every step predicted too large for the small node, so each runs on the big one."""
    from modelforge import ray_executor

    project = api.open_project(team / MANIFEST)
    store = Store(store_dir)
    try:
        gathered = api.gather(project, store, None, SilentReporter(), need_weights=True)
        plan = api.plan_for(project, gathered)
        plan = dataclasses.replace(plan, facts={**plan.facts, "memory": {step.name: 3 * GIB for step in plan.steps}})
        job = ray_executor.Job(plan, gathered.paths, api.tools_of(plan), {}, SilentReporter(), frozenset({"text"}))
        keys = {name: value["key"] for name, value in compute_keys(plan, api.tools_of(plan)).items()}
        ray_executor.run_plans([job], store, remote, cluster.address)
    finally:
        store.close()
    return keys


def test_the_driver_signs_nothing_a_worker_uploaded_under_a_hash_it_does_not_have(cluster, team, tmp_path):
    """A compromised node (here: one whose store was edited, hash cache and all) uploads other
    bytes than the hash it reports. The driver re-hashes every uploaded object before signing:
    that step fails with one line, and no record naming those bytes is signed."""
    import json
    import sqlite3

    keys = _run_on_big(team, cluster, caching.remote_for(team), tmp_path / "driver-1")
    big = cluster.stores["big"]
    record = json.loads((big / "steps" / keys["config"][:2] / f"{keys['config']}.json").read_text())
    ((name, item),) = record["outputs"].items()
    path = big / "objects" / item["sha256"][:2] / item["sha256"]
    original = path.read_bytes()
    evil = original.replace(b"Gemma3", b"Evil_3")
    assert evil != original and len(evil) == len(original)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:  # in place: same inode, so the node's own checks see "its" object
        handle.write(evil)
    stat = os.stat(path)
    with sqlite3.connect(big / "state.sqlite") as database:
        changed = database.execute(
            "UPDATE state SET stamp = ? WHERE path = ?",
            (f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}", str(path.resolve())),
        ).rowcount
    assert changed == 1

    fresh = caching.remote_for(team, cache=f"file://{tmp_path / 'fresh-cache'}")
    with pytest.raises(ClusterError, match=rf"step config: the worker on Ray node \w+ reported {name} as {item['sha256'][:12]}…, but the object it uploaded .* does not hash to its name") as caught:
        _run_on_big(team, cluster, fresh, tmp_path / "driver-2")
    assert "\n" not in str(caught.value)
    assert caching.remote_for(team, cache=fresh.url).lookup(keys["config"]).record is None
