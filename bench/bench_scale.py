#!/usr/bin/env python
"""Benchmark: memory of the litert export worker at MedGemma's layer shapes (issue 9, item 1).

For each synthetic checkpoint (modelforge.testing.gemma3_checkpoint: MedGemma 4B's shapes, the real
262,208-token vocabulary, the full 27-layer SigLIP tower, N decoder layers) and each export part
(text: embedder + prefill/decode graphs; vision: encoder + adapter), runs the export worker
(`python -m modelforge.steps.litert.worker`) of one or more source trees, exactly as the
litert_export step does (PYTHONHASHSEED=0, the real manifest's prefill 128/1024 and cache 4096),
and samples the worker's VmRSS, RssAnon and RssFile from /proc every 0.1 s. A run whose RSS passes
--limit GiB is killed (so the machine never goes down) and recorded as such.

    PYTHONPATH=src .venv/bin/python bench/bench_scale.py --layers 1,4 --code after=src --code before=/path/to/old/src

Results: JSON at --results (default bench/results/scale.json), one line per run on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ENV = {"PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
HOISTS = [{"name": "vision_tower", "path": "model.vision_tower", "to": "vision_tower"},
          {"name": "multi_modal_projector", "path": "model.multi_modal_projector", "to": "multi_modal_projector"}]


def _status(pid: int) -> dict[str, int]:
    values = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return values


def run_worker(source: Path, checkpoint: Path, part: str, out: Path, limit: int, prefill: list[int], cache: int) -> dict:
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    request = {"action": "export", "checkpoint": str(checkpoint), "work_dir": str(work), "part": part, "task": "image_text_to_text",
               "prefill_lengths": prefill, "cache_length": cache, "hoists": HOISTS}
    (out / "request.json").write_text(json.dumps(request))
    env = {**os.environ, **ENV, "PYTHONPATH": str(source)}
    peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
    started, killed = time.monotonic(), False
    with open(out / "log.txt", "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "modelforge.steps.litert.worker", str(out / "request.json")],
                                 stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out, start_new_session=True)
        while child.poll() is None:
            sample = _status(child.pid)
            for key in peak:
                peak[key] = max(peak[key], sample.get(key, 0))
            if sample.get("VmRSS", 0) > limit and not killed:
                os.killpg(child.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.1)
    row = {"part": part, "source": str(source), "exit": child.returncode, "killed_at_limit": killed,
           "wall_s": round(time.monotonic() - started, 1), **{f"peak_{key}_bytes": value for key, value in peak.items()}}
    result_path = out / "result.json"
    if child.returncode == 0 and result_path.exists():
        result = json.loads(result_path.read_text())
        row["worker"] = {key: result.get(key) for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")}
        row["files"] = {}
        for name, path in sorted(result["files"].items()):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            row["files"][name] = {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
            os.remove(path)
    else:
        row["log_tail"] = (out / "log.txt").read_text(errors="replace")[-1500:]
    return row


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from modelforge.testing.gemma3_checkpoint import write_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="1,4", help="decoder layer counts, comma-separated")
    parser.add_argument("--parts", default="text,vision")
    parser.add_argument("--code", action="append", default=[], help="LABEL=SRC_DIR (a modelforge source tree); repeatable")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=float, default=14.0, help="GiB of RSS at which a run is killed")
    parser.add_argument("--prefill", default="128,1024")
    parser.add_argument("--cache", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "scale")
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "scale.json")
    args = parser.parse_args(argv)
    codes = [item.split("=", 1) for item in (args.code or [f"after={ROOT / 'src'}"])]
    results = json.loads(args.results.read_text()) if args.results.exists() else {"runs": []}
    for layers in [int(value) for value in args.layers.split(",")]:
        checkpoint = args.work / f"gemma3-medgemma-shapes-L{layers}"
        stamp = write_checkpoint(checkpoint, layers)
        for part in args.parts.split(","):
            for label, source in codes:
                for repeat in range(args.repeats):
                    out = args.work / "runs" / f"L{layers}-{part}-{label}-{repeat}"
                    row = run_worker(Path(source).resolve(), checkpoint, part, out, int(args.limit * 2**30),
                                     [int(value) for value in args.prefill.split(",")], args.cache)
                    row.update({"label": label, "repeat": repeat, "text_layers": layers, "text_params": stamp["text"],
                                "vision_params": stamp["vision"], "date": time.strftime("%Y-%m-%d %H:%M")})
                    results["runs"].append(row)
                    args.results.parent.mkdir(parents=True, exist_ok=True)
                    args.results.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
                    brief = {key: row.get(key) for key in ("label", "text_layers", "part", "exit", "killed_at_limit", "wall_s")}
                    brief.update({key: round(row[key] / 2**30, 2) for key in ("peak_VmRSS_bytes", "peak_RssAnon_bytes", "peak_RssFile_bytes")})
                    brief["sha256"] = {name: info["sha256"][:12] for name, info in row.get("files", {}).items()}
                    print(json.dumps(brief), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
