"""Step `transform_weights`: write output shards whose tensors are renamed byte ranges of the
source shards, plus the index. Streams; never imports torch. Under the non-finite policy
"refuse" the hashing pass also checks every float tensor for NaN and infinity (no second read).
Two shards are written at once: each shard's sha256 is one sequential stream, so one shard at a
time leaves a core idle behind its hashing thread."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from modelforge.safetensors_io import read_header, write_shard
from modelforge.steps.base import StepContext

KIND = "transform_weights"
VERSION = 2  # 2: refuses NaN/infinity in weights unless params.non_finite is "allow"
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    """params: {"shards": [{"file": name, "tensors": [[out_name, src_file, src_name], ...]}],
    "metadata": {...}, "index": bool, "non_finite": "refuse" | "allow"}. The planner decided every
    name and shard."""
    params = context.params
    source_files = sorted({src_file for shard in params["shards"] for _, src_file, _ in shard["tensors"]})
    headers = {}
    source_paths = {src_file: context.input_path("source", src_file) for src_file in source_files}
    for src_file in source_files:
        tensors, _ = read_header(context.input_path("source", src_file), src_file)
        headers[src_file] = tensors
    total = sum(headers[f][n].nbytes for shard in params["shards"] for _, f, n in shard["tensors"])
    done = 0
    lock = threading.Lock()
    weight_map = {}
    total_size = 0

    def advance(count: int) -> None:
        nonlocal done
        with lock:
            done += count
            context.progress(done, total, "copying tensors")

    work = []
    for shard in params["shards"]:
        entries = []
        for out_name, src_file, src_name in shard["tensors"]:
            info = headers[src_file][src_name]
            entries.append((out_name, info))
            weight_map[out_name] = shard["file"]
            total_size += info.nbytes
        work.append((shard["file"], entries))

    def write(item: tuple) -> str:
        name, entries = item
        return write_shard(
            context.output(name), entries, source_paths, params["metadata"], advance,
            check_finite=params["non_finite"] != "allow",
        )

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="modelforge-shard") as pool:
        futures = [pool.submit(write, item) for item in work]
    # Every shard has ended; the first one that failed (in the plan's order) is the one reported.
    for (name, _), future in zip(work, futures):
        context.known_hashes[name] = future.result()
    if params["index"]:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        context.output("model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
