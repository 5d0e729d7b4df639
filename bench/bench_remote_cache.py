#!/usr/bin/env python
"""Benchmark: a cold build that pushes to an empty remote cache vs a fresh machine that pulls.

For each manifest and each remote (a file:// directory, and moto's S3 server on 127.0.0.1 as
tests/test_remote_cache.py starts it), in one run:

  cold   a fresh local store and output directory, an empty remote: every step runs and is pushed
  warm   another fresh local store and output directory (a second "machine"), the now-warm remote:
         every step should be pulled, none run

Each build is its own child process (`python bench_remote_cache.py --child ...`, api.build with
cache=URL), timed by this harness around the subprocess, so both pay Python's start-up alike. The
project is a scratch copy (manifests/, fixtures/, lock/, modelforge.toml trusting one ed25519 key
whose private half sits in a temporary directory named by MODELFORGE_SIGNING_KEY), never the
repository. Figures: wall seconds of each build, the ratio warm / cold, bytes pushed (the remote's
listing after the cold build, which started empty: objects and signed records) and bytes pulled
(objects the warm build downloaded, counted in the child around RemoteCache.download), and whether
the warm build's output files hash (sha256) exactly as the cold build's.

Results: a table on stdout, JSON at --results, a section in --markdown (bench/RESULTS.md).
See bench/README.md. Never raises on a missed target; exits non-zero only if a build failed or a
check did not hold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from results_markdown import replace_section, targets_table  # noqa: E402  (bench/ is the script's directory)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TINY = ("manifests/tiny-medgemma-text-only.yaml", "manifests/tiny-medgemma-litertlm.yaml")
FULL = "manifests/medgemma-1.5-text-only.yaml"
FULL_CHECKPOINT = ROOT / "bench" / "out" / "medgemma_4b" / "checkpoint-full"  # made by bench_medgemma_4b.py; --checkpoint elsewhere
# The export worker's environment (as bench_litertlm.py runs it); nothing is downloaded.
CHILD_ENV = {"PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
WARM_OVER_COLD_TARGET = 0.5  # printed PASS/FAIL: a fresh machine pulling takes at most half the cold build's time


# --------------------------------------------------------------------------- the child: one build
def child(manifest: Path, store: Path, out: Path, cache: str, source_dir: Path | None, report: Path) -> int:
    """One api.build into store/out with the remote at cache; writes what happened to report."""
    from modelforge import api
    from modelforge.executor import SilentReporter
    from modelforge.remote import RemoteCache

    pulled = {"objects": 0, "bytes": 0}
    download = RemoteCache.download

    def counting(self, item, local_store):
        problem = download(self, item, local_store)
        if problem is None:
            pulled["objects"] += 1
            pulled["bytes"] += item.size
        return problem

    RemoteCache.download = counting

    class Messages(SilentReporter):
        def __init__(self):
            self.lines: list[str] = []

        def message(self, text: str) -> None:
            self.lines.append(text)

    reporter = Messages()
    started = time.perf_counter()
    result = api.build(manifest, store_dir=store, out=out, source_dir=source_dir, cache=cache, reporter=reporter)
    seconds = time.perf_counter() - started
    report.write_text(json.dumps({
        "build_s": round(seconds, 3),
        "ran": sorted(result.ran),
        "pulled": sorted(result.pulled),
        "cached": sorted(result.cached),
        "pulled_objects": pulled["objects"],
        "pulled_bytes": pulled["bytes"],
        "out_dir": str(result.out_dir),
        "messages": reporter.lines[-20:],
    }, indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------- helpers
def remove(path: Path) -> None:
    """rmtree that also removes read-only store objects and directories."""

    def retry(function, name, _):
        os.chmod(os.path.dirname(name), stat.S_IRWXU)
        if os.path.isdir(name) and not os.path.islink(name):
            os.chmod(name, stat.S_IRWXU)
        function(name)

    if path.exists():
        shutil.rmtree(path, onexc=retry) if sys.version_info >= (3, 12) else shutil.rmtree(path, onerror=retry)


def tree_hashes(directory: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(8 << 20):
                    digest.update(chunk)
            hashes[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return hashes


def remote_listing(url: str) -> dict:
    """The remote's objects and records, counted and summed (obstore's listing)."""
    from obstore.store import LocalStore, from_url
    import obstore
    from urllib.parse import urlparse

    parsed = urlparse(url)
    client = LocalStore(parsed.path) if parsed.scheme == "file" else from_url(url)
    totals = {}
    for prefix in ("objects/", "steps/"):
        count = size = 0
        for batch in obstore.list(client, prefix=prefix):
            for entry in batch:
                count += 1
                size += entry["size"]
        totals[prefix.rstrip("/")] = {"count": count, "bytes": size}
    return totals


def start_s3() -> tuple[object, str]:
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def machine_info() -> dict:
    sys.path.insert(0, str(BENCH))
    from bench_text_only import machine, versions

    found = versions()
    from importlib.metadata import PackageNotFoundError, version

    for package in ("obstore", "moto"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return {"machine": machine(), "versions": found}


# --------------------------------------------------------------------------- one scenario
def scenario(manifest: str, remote: str, work: Path, env: dict, s3_endpoint: str | None, source_dir: Path | None, log) -> dict:
    """Cold build pushing into an empty remote, then a fresh machine pulling from it."""
    from modelforge.signing import generate

    name = Path(manifest).stem
    base = work / f"{name}-{remote}"
    remove(base)
    project = base / "project"
    (project / "manifests").mkdir(parents=True)
    shutil.copy2(ROOT / manifest, project / manifest)
    if source_dir is None:
        shutil.copytree(ROOT / "fixtures", project / "fixtures")
    (project / "lock").mkdir()
    key_path = base / "keys" / "bench.key"
    public = generate("bench-1", key_path)
    if remote == "s3":
        import boto3

        bucket = f"bench-{os.urandom(6).hex()}"
        boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        url = f"s3://{bucket}/modelforge"
    else:
        url = f"file://{base / 'remote'}"
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "{url}"\ntrusted_keys = ["{public.text}"]\n')
    child_env = dict(env) | {"MODELFORGE_SIGNING_KEY": str(key_path), "HF_HOME": str(base / "hf-home")}
    child_env.pop("MODELFORGE_CACHE", None)

    runs = {}
    for label in ("cold", "warm"):
        report = base / f"{label}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--child", str(project / manifest), str(base / label / "store"),
                   str(base / label / "out"), url, str(source_dir or ""), str(report)]
        os.sync()
        started = time.perf_counter()
        done = subprocess.run(command, cwd=project, env=child_env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        run = {"rc": done.returncode, "wall_s": round(wall, 3)}
        if done.returncode == 0 and report.exists():
            run |= json.loads(report.read_text())
        else:
            run["stderr_tail"] = done.stderr[-3000:]
        if label == "cold" and done.returncode == 0:
            run["remote_after"] = remote_listing(url) if remote == "file" else _s3_listing(url, child_env)
        runs[label] = run
        log(f"  {name} [{remote}] {label}: {wall:.2f}s, rc {done.returncode}, ran {len(run.get('ran', []))}, pulled {len(run.get('pulled', []))}")

    cold, warm = runs["cold"], runs["warm"]
    ok = cold["rc"] == 0 and warm["rc"] == 0
    checks = {"builds_ok": ok}
    if ok:
        cold_files, warm_files = tree_hashes(Path(cold["out_dir"])), tree_hashes(Path(warm["out_dir"]))
        pushed = cold["remote_after"]
        checks |= {
            "cold_ran_every_step": bool(cold["ran"]) and cold["pulled"] == [],
            "warm_ran_nothing": warm["ran"] == [],
            "warm_pulled_every_step_cold_ran": warm["pulled"] == cold["ran"],
            "outputs_identical_sha256": bool(cold_files) and cold_files == warm_files,
            "output_files": len(cold_files),
        }
        figures = {
            "steps": len(cold["ran"]),
            "cold_s": cold["wall_s"],
            "warm_s": warm["wall_s"],
            "warm_over_cold": round(warm["wall_s"] / cold["wall_s"], 3),
            "cold_build_s": cold["build_s"],
            "warm_build_s": warm["build_s"],
            "warm_over_cold_in_process": round(warm["build_s"] / cold["build_s"], 3),
            "pushed_objects": pushed["objects"]["count"],
            "pushed_object_bytes": pushed["objects"]["bytes"],
            "pushed_records": pushed["steps"]["count"],
            "pushed_record_bytes": pushed["steps"]["bytes"],
            "pulled_objects": warm["pulled_objects"],
            "pulled_bytes": warm["pulled_bytes"],
            "output_bytes": sum(p.stat().st_size for p in Path(cold["out_dir"]).rglob("*") if p.is_file()),
        }
    else:
        figures = {}
    return {"manifest": manifest, "remote": remote, "url_kind": url.split(":", 1)[0], "figures": figures, "checks": checks, "runs": runs,
            "source_dir": str(source_dir) if source_dir else None, "_base": str(base)}


def _s3_listing(url: str, env: dict) -> dict:
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        return remote_listing(url)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- reporting
def _size(n: int | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


HEADERS = ["manifest", "remote", "steps", "cold s", "warm s", "warm / cold", "pushed (objects + records)", "pulled", "outputs identical"]


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for item in result["scenarios"]:
        f, c = item["figures"], item["checks"]
        if not f:
            rows.append([Path(item["manifest"]).stem, item["remote"], "failed", "", "", "", "", "", "no"])
            continue
        rows.append([
            Path(item["manifest"]).stem + (" (full scale)" if item["source_dir"] else ""), item["remote"], str(f["steps"]),
            f"{f['cold_s']:.2f}", f"{f['warm_s']:.2f}", f"{f['warm_over_cold']:.3f}",
            f"{_size(f['pushed_object_bytes'])} in {f['pushed_objects']} + {_size(f['pushed_record_bytes'])} in {f['pushed_records']}",
            f"{_size(f['pulled_bytes'])} in {f['pulled_objects']}",
            "yes" if c.get("outputs_identical_sha256") else "NO",
        ])
    return rows


def render_markdown(result: dict, label: str) -> str:
    m = result["machine"]
    lines = [
        f"<!-- bench:remote_cache {label} begin -->",
        f"## remote_cache, {label}",
        "",
        f"- date: {result['date']}",
        f"- machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}; "
        f"1-min load average {result['loadavg_1m_at_start']} at start, {m.get('loadavg_1m')} at end (the machine is shared)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "- cold: fresh store, empty remote, every step runs and is pushed; warm: another fresh store (a second machine) pulling "
        "from that remote. Wall seconds of each build's child process (Python start-up included); the ratio is of this run.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(HEADERS) - 3) + ["---"]) + "|",
        *["| " + " | ".join(row) + " |" for row in table_rows(result)],
        "",
        *targets_table(result["targets"]),
        "",
        "Checks (every scenario): " + ", ".join(f"{k} = {v}" for k, v in result["checks"].items()) + ".",
    ]
    if result.get("not_run"):
        lines += ["", "Not run: " + "; ".join(result["not_run"]) + "."]
    lines.append(f"<!-- bench:remote_cache {label} end -->")
    return "\n".join(lines) + "\n"


def update_markdown(path: Path, section: str, label: str) -> None:
    replace_section(path, f"bench:remote_cache {label}", section)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        manifest, store, out, cache, source, report = argv[1:7]
        return child(Path(manifest), Path(store), Path(out), cache, Path(source) if source else None, Path(report))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("tiny", "full"), default="tiny",
                        help="tiny: the two tiny manifests on the bundled fixture; full: medgemma-1.5-text-only on --checkpoint")
    parser.add_argument("--checkpoint", type=Path, default=FULL_CHECKPOINT, help="full scale: the synthetic MedGemma 4B checkpoint (read only)")
    parser.add_argument("--remotes", default=None, help="comma-separated subset of file,s3 (default: both for tiny, file for full: moto keeps objects in memory)")
    parser.add_argument("--manifests", default=None, help="comma-separated manifest paths (default: the scale's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cachebench"), help="scratch: projects, stores, remotes (deleted per scenario afterwards)")
    parser.add_argument("--results", type=Path, default=None, help="JSON results (default bench/results/remote_cache-<scale>.json)")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md", help="markdown file whose section for this scale is replaced")
    parser.add_argument("--keep", action="store_true", help="keep the scratch stores and outputs")
    args = parser.parse_args(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    remotes = (args.remotes or ("file,s3" if args.scale == "tiny" else "file")).split(",")
    manifests = args.manifests.split(",") if args.manifests else (list(TINY) if args.scale == "tiny" else [FULL])
    source_dir = args.checkpoint.resolve() if args.scale == "full" else None
    if source_dir is not None and not (source_dir / "model.safetensors.index.json").exists():
        log(f"error: {source_dir} has no model.safetensors.index.json; make the checkpoint with bench/bench_medgemma_4b.py first")
        return 2
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ) | CHILD_ENV
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])

    server = endpoint = None
    if "s3" in remotes:
        server, endpoint = start_s3()
        env |= {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    load_before = round(os.getloadavg()[0], 2)
    scenarios = []
    try:
        for manifest in manifests:
            for remote in remotes:
                item = scenario(manifest, remote, work, env, endpoint, source_dir, log)
                base = Path(item.pop("_base"))
                if not args.keep:
                    remove(base)
                scenarios.append(item)
    finally:
        if server is not None:
            server.stop()

    info = machine_info()
    check_names = ("builds_ok", "cold_ran_every_step", "warm_ran_nothing", "warm_pulled_every_step_cold_ran", "outputs_identical_sha256")
    checks = {name: all(item["checks"].get(name) for item in scenarios) for name in check_names}
    targets = [
        {"target": f"{Path(item['manifest']).stem} [{item['remote']}]: warm / cold <= {WARM_OVER_COLD_TARGET}",
         "value": item["figures"].get("warm_over_cold"), "passed": bool(item["figures"]) and item["figures"]["warm_over_cold"] <= WARM_OVER_COLD_TARGET}
        for item in scenarios
    ]
    label = "full scale" if args.scale == "full" else "tiny"
    result = {
        "benchmark": "remote_cache",
        "scale": args.scale,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "loadavg_1m_at_start": load_before,
        **info,
        "scenarios": scenarios,
        "checks": checks,
        "targets": targets,
        "notes": {
            "wall_s": "the build's child process, timed around the subprocess (Python start-up and imports included)",
            "build_s": "api.build alone, inside the child",
            "pushed": "the remote's listing after the cold build (it started empty): objects and signed step records",
            "pulled": "objects the warm build downloaded (RemoteCache.download that succeeded), re-hashed on arrival; records not counted",
        },
    }
    if args.scale == "full" and "s3" not in remotes:
        result["not_run"] = ["S3 (moto) at full scale: moto keeps every object in memory (about 2 × 7.8 GB here)"]
    results_path = args.results or BENCH / "results" / f"remote_cache-{args.scale}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1) + "\n")
    update_markdown(args.markdown, render_markdown(result, label), label)
    for row in table_rows(result):
        print("  ".join(row))
    print("checks: " + ", ".join(f"{k}={v}" for k, v in checks.items()))
    print(f"wrote {results_path} and {args.markdown}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
