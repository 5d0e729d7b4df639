"""The onnx target's text export alone (step onnx.export_text: onnxruntime-genai's builder through the
onnx worker, steps/onnx/worker.py) on a checkpoint, with the parameters the onnx target plans for
manifests/medgemma-1.5-onnx.yaml (int4 in blocks of 32, context 4096, inputs_embeds): its peak
anonymous memory as the worker measures it (the figure the build records), a timeline of the
worker's RssAnon sampled every second beside the builder's last log line, and the sha256 of each
file it writes (to compare the bytes of two versions of the code).

Usage (a 4B run is a heavy one: see /work/wt/COMMON.md):
    python bench/bench_onnx_text.py CHECKPOINT WORK_DIR [--timeline FILE]
WORK_DIR must not exist; it is left in place (delete it when done: the 4B decoder is 2.7 GB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from modelforge.steps import workers
from modelforge.steps.onnx.worker import MODULE


def _children_anonymous(parent: int) -> dict[int, int]:
    """RssAnon (bytes) of each direct child of `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip() or 0) == parent and "RssAnon" in fields:
            found[int(entry.name)] = int(fields["RssAnon"].split()[0]) * 1024
    return found


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - 4096))
            lines = [line.strip() for line in handle.read().decode(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1][:120] if lines else ""
    except OSError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("work", type=Path)
    parser.add_argument("--timeline", type=Path, help="write the per-second RssAnon samples here (tab-separated)")
    args = parser.parse_args()
    args.work.mkdir(parents=True)
    request = {"action": "export", "checkpoint": str(args.checkpoint.resolve()), "work_dir": str((args.work / "export").resolve()),
               "part": "text", "precision": "int4", "block_size": 32, "context_length": 4096, "exclude_embeds": True}
    (args.work / "export").mkdir()
    log = args.work / "job-export" / "log.txt"
    samples, stop, started = [], threading.Event(), time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            anonymous = sum(_children_anonymous(os.getpid()).values())
            samples.append((round(time.monotonic() - started, 1), anonymous, _last_line(log)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = workers.launch(request, args.work, lambda *_: None, "onnx export text", module=MODULE)
    finally:  # a worker killed at its cgroup's limit still leaves its timeline
        stop.set()
        sampler.join()
        if args.timeline:
            args.timeline.write_text("".join(f"{t}\t{anonymous / 2**30:.2f}\t{line}\n" for t, anonymous, line in samples))
    hashes = {}
    for name, path in sorted(result["files"].items()):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        hashes[name] = digest.hexdigest()
    print(json.dumps({"seconds": result["seconds"], "peak_anonymous_bytes": result["peak_anonymous_bytes"],
                      "peak_anonymous_gib": round(result["peak_anonymous_bytes"] / 2**30, 2),
                      "peak_rss_bytes": result["peak_rss_bytes"], "report": result.get("report"), "sha256": hashes}, indent=1))


if __name__ == "__main__":
    main()
