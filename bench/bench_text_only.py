#!/usr/bin/env python
"""Benchmark: MedGemma 4B multimodal checkpoint → text-only checkpoint.

Writes a synthetic checkpoint with the real MedGemma 4B layout (883 tensors, real names and
shapes, bf16, 2 shards, index and the small files; scaled by --scale: the text decoder's dimensions
together, with config.json to match, so the text-only output still fits its architecture, and the
first dimension of every other tensor), then
measures side by side, each method as its own subprocess (wall seconds, CPU seconds, peak RSS):

  cp                 baseline: `cp` of the input shards to a fresh directory
  naive              safetensors.torch.load_file → rename/drop keys in memory → save_file, per shard
  modelforge_build   `modelforge build` of manifests/medgemma-1.5-text-only.yaml into a fresh store
  modelforge_noop    the same command again (everything cached)
  modelforge_verify  `modelforge verify` of that build's lock
  sha256sum          `sha256sum` of the same output files

Results: a table on stdout, JSON at --results, a section in --markdown (bench/RESULTS.md).
See bench/README.md. Never raises on a missed target; exits non-zero only if a method failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from modelforge.hashing import CHUNK
from modelforge.testing.reference import load_tensor_shapes, reference_dir, shard_assignment, shard_file_names
from results_markdown import replace_section, targets_table, verdict  # noqa: E402  (bench/ is the script's directory)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MANIFEST = ROOT / "manifests" / "medgemma-1.5-text-only.yaml"
GENERATOR_VERSION = 2
DTYPE = "BF16"
DTYPE_BYTES = 2
BLOCK = 4 << 20  # bytes written per call while generating
PAD = 1 << 16  # the random pool is BLOCK + PAD; each block starts at a different offset in it

# Targets (printed pass/fail, never raised).
CLOSE_TO_CP = 1.5  # "close to cp": modelforge_build (synced wall) at most this × cp (synced wall)
RSS_LIMIT_MB = 256
PAIRED_LIMIT = 1.0  # issue #26: at most 1.0x cp, as the median of paired alternating runs
NOOP_LIMIT_S = 1.0

METHODS = ("cp", "naive", "modelforge_build", "modelforge_noop", "modelforge_noop_warm", "modelforge_verify", "sha256sum", "modelforge_build_profiled")

SMALL_FILES = {  # name in the checkpoint → file in the package reference data (None: a stand-in written here)
    "config.json": "mlx-community_gemma-3-4b-it-bf16-config.json",
    "generation_config.json": "medgemma-27b-it-generation_config.json",
    "special_tokens_map.json": "medgemma-27b-it-special_tokens_map.json",
    "added_tokens.json": "medgemma-27b-it-added_tokens.json",
    "chat_template.jinja": "medgemma-27b-it-chat_template.jinja",
    "preprocessor_config.json": "medgemma-27b-it-preprocessor_config.json",
    "processor_config.json": "medgemma-27b-it-processor_config.json",
    "tokenizer.model": None,
    "tokenizer.json": None,
    "tokenizer_config.json": None,
}

NAIVE_SCRIPT = r'''
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
weight_map, total = {}, 0
for shard in sorted(src.glob("*.safetensors")):
    tensors = load_file(shard)
    kept = {}
    for name, tensor in tensors.items():
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            continue
        new = name[len("language_model."):] if name.startswith("language_model.") else name
        kept[new] = tensor
        weight_map[new] = shard.name
        total += tensor.numel() * tensor.element_size()
    del tensors
    save_file(kept, out / shard.name, metadata={"format": "pt"})
    del kept
index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
(out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
'''

RUSAGE_WRAPPER = r'''
import resource, subprocess, sys, time
started = time.perf_counter()
rc = subprocess.call(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    out.write(f"Maximum resident set size (kbytes): {usage.ru_maxrss}\n")
    out.write(f"User time (seconds): {usage.ru_utime}\nSystem time (seconds): {usage.ru_stime}\n")
sys.exit(rc)
'''


# --------------------------------------------------------------------------- the checkpoint
def scale_label(scale: float) -> str:
    return repr(float(scale))


# MedGemma 4B's text decoder (the reference config's text_config, and Gemma3TextConfig's defaults
# for what it leaves out). Every dimension of a language_model.* tensor is one of these products.
TEXT_DIMENSIONS = {"hidden_size": 2560, "intermediate_size": 10240, "vocab_size": 262208, "head_dim": 256}
ATTENTION_HEADS, KEY_VALUE_HEADS = 8, 4


def text_dimensions(scale: float) -> dict[str, int]:
    """The text decoder's dimensions at a scale: each matrix scales by about `scale`."""
    if scale == 1.0:
        return dict(TEXT_DIMENSIONS)
    factor = math.sqrt(scale)
    return {
        # transformers wants the hidden size a multiple of the attention heads.
        "hidden_size": ATTENTION_HEADS * max(1, round(TEXT_DIMENSIONS["hidden_size"] * factor / ATTENTION_HEADS)),
        "intermediate_size": max(8, round(TEXT_DIMENSIONS["intermediate_size"] * factor)),
        "vocab_size": max(16, round(TEXT_DIMENSIONS["vocab_size"] * factor)),
        "head_dim": max(2, 2 * round(TEXT_DIMENSIONS["head_dim"] * factor / 2)),  # even: rotary halves
    }


def scaled_shapes(scale: float) -> dict[str, tuple[int, ...]]:
    """Text decoder tensors with all their dimensions scaled together (modelforge checks the
    text-only output against its config's architecture, so they must stay consistent); every
    other tensor (vision, projector: dropped by the text-only target) by its first dimension."""
    shapes, dtype = load_tensor_shapes()
    if dtype.upper() != DTYPE:
        raise SystemExit(f"reference tensor list is {dtype}, expected {DTYPE}")
    if scale == 1.0:
        return shapes
    old, new = TEXT_DIMENSIONS, text_dimensions(scale)
    mapping = {
        old["hidden_size"]: new["hidden_size"], old["intermediate_size"]: new["intermediate_size"],
        old["vocab_size"]: new["vocab_size"], old["head_dim"]: new["head_dim"],
        ATTENTION_HEADS * old["head_dim"]: ATTENTION_HEADS * new["head_dim"],
        KEY_VALUE_HEADS * old["head_dim"]: KEY_VALUE_HEADS * new["head_dim"],
    }
    result = {}
    for name, shape in shapes.items():
        if name.startswith("language_model."):
            unknown = [dimension for dimension in shape if dimension not in mapping]
            if unknown:
                raise SystemExit(f"{name}: dimension {unknown[0]} is none of the text decoder's; update TEXT_DIMENSIONS")
            result[name] = tuple(mapping[dimension] for dimension in shape)
        else:
            result[name] = ((max(1, round(shape[0] * scale)),) + tuple(shape[1:])) if shape else shape
    return result


def scaled_config(scale: float) -> bytes:
    """The reference config.json with the text decoder's dimensions at the scale."""
    config = json.loads((reference_dir() / SMALL_FILES["config.json"]).read_text())
    if scale != 1.0:
        config["text_config"].update(
            text_dimensions(scale), num_attention_heads=ATTENTION_HEADS, num_key_value_heads=KEY_VALUE_HEADS
        )
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _numel(shape) -> int:
    return math.prod(shape) if shape else 1


def _pool() -> np.ndarray:
    """BLOCK + PAD bytes of bf16 values from N(0, 0.02): real-looking weights, not compressible."""
    rng = np.random.default_rng(20250101)
    floats = rng.normal(0.0, 0.02, (BLOCK + PAD) // 2).astype(np.float32)
    return (floats.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)


def _write_shard(path: Path, names: list[str], shapes: dict, pool: np.ndarray) -> int:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in names:  # safetensors' writer orders same-dtype tensors by name
        nbytes = _numel(shapes[name]) * DTYPE_BYTES
        header[name] = {"dtype": DTYPE, "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    view = memoryview(pool)
    block = 0
    with open(path, "wb", buffering=0) as out:
        out.write(len(encoded).to_bytes(8, "little"))
        out.write(encoded)
        remaining = offset
        while remaining:
            count = min(BLOCK, remaining)
            start = (block * 7919 * 2) % PAD  # even: keeps bf16 values aligned
            written = 0
            while written < count:
                written += out.write(view[start + written : start + count])
            remaining -= count
            block += 1
        os.fsync(out.fileno())
    return 8 + len(encoded) + offset


def _stand_in(name: str) -> bytes:
    if name == "tokenizer.model":
        return b"\x0a\x0bbenchmark stand-in for a sentencepiece model\n" * 64
    if name == "tokenizer.json":
        return json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2}, "merges": []}, "added_tokens": []}, indent=2).encode()
    if name == "tokenizer_config.json":
        return json.dumps({"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "model_max_length": 131072}, indent=2).encode()
    raise KeyError(name)


def ensure_checkpoint(directory: Path, scale: float, log) -> dict:
    """The synthetic checkpoint in directory, reused when its stamp matches."""
    stamp_path = directory / ".bench-stamp.json"
    shapes = scaled_shapes(scale)
    groups = shard_assignment(shapes, DTYPE)
    shard_names = shard_file_names(len(groups))
    if stamp_path.exists():
        try:
            stamp = json.loads(stamp_path.read_text())
            if stamp["generator_version"] == GENERATOR_VERSION and stamp["scale"] == scale and all(
                (directory / name).is_file() and (directory / name).stat().st_size == size for name, size in stamp["files"].items()
            ):
                log(f"reusing the checkpoint in {directory} (stamp matches)")
                return {**stamp, "generated_s": None, "reused": True}
        except (ValueError, KeyError, TypeError):
            pass
    log(f"writing a scale-{scale_label(scale)} checkpoint into {directory} …")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    pool = _pool()
    files: dict[str, int] = {}
    weight_map: dict[str, str] = {}
    for shard, names in zip(shard_names, groups):
        files[shard] = _write_shard(directory / shard, names, shapes, pool)
        weight_map.update({name: shard for name in names})
        log(f"  {shard}: {files[shard] / 1e9:.2f} GB, {len(names)} tensors")
    total = sum(_numel(shape) * DTYPE_BYTES for shape in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    small = {"model.safetensors.index.json": (json.dumps(index, indent=2) + "\n").encode()}
    for name, reference in SMALL_FILES.items():
        small[name] = (reference_dir() / reference).read_bytes() if reference else _stand_in(name)
    small["config.json"] = scaled_config(scale)
    for name, content in small.items():
        (directory / name).write_bytes(content)
        files[name] = len(content)
    seconds = time.perf_counter() - started
    stamp = {
        "generator_version": GENERATOR_VERSION,
        "scale": scale,
        "tensors": len(shapes),
        "tensor_bytes": total,
        "shards": shard_names,
        "files": files,
    }
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    log(f"  done in {seconds:.1f}s ({total / seconds / 1e9:.2f} GB/s)")
    return {**stamp, "generated_s": round(seconds, 2), "reused": False}


# --------------------------------------------------------------------------- measuring
def drop_caches() -> bool:
    """Flush dirty pages and drop the page cache; False where not allowed (not root, sandbox)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("3\n")
        return True
    except OSError:
        return False


def warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            buffer = bytearray(8 << 20)
            while handle.readinto(buffer):
                pass


def _rss_tool() -> str:
    if Path("/usr/bin/time").exists():
        probe = subprocess.run(["/usr/bin/time", "-v", "true"], capture_output=True, text=True)
        if probe.returncode == 0 and "Maximum resident set size" in probe.stderr:
            return "gnu-time"
    return "rusage-wrapper"


def measure(name: str, command: list[str], logs: Path, rss_tool: str, cwd: Path | None = None) -> dict:
    """Run command; wall seconds, then the seconds of a sync (so writers are compared at the point
    their bytes are on disk), CPU seconds and peak RSS of the process tree."""
    usage_file = logs / f"{name}.usage"
    if rss_tool == "gnu-time":
        wrapped = ["/usr/bin/time", "-v", "-o", str(usage_file), *command]
    else:
        wrapped = [sys.executable, "-c", RUSAGE_WRAPPER, str(usage_file), *command]
    with open(logs / f"{name}.stdout", "wb") as out, open(logs / f"{name}.stderr", "wb") as err:
        started = time.perf_counter()
        rc = subprocess.call(wrapped, stdout=out, stderr=err, cwd=cwd)
        wall = time.perf_counter() - started
    started = time.perf_counter()
    os.sync()
    synced = time.perf_counter() - started
    usage = usage_file.read_text() if usage_file.exists() else ""

    def field(label: str) -> float | None:
        match = re.search(re.escape(label) + r"[^:]*:\s*([0-9.]+)", usage)
        return float(match.group(1)) if match else None

    rss_kb, user, system = field("Maximum resident set size"), field("User time"), field("System time")
    return {
        "command": " ".join(command),
        "rc": rc,
        "wall_s": round(wall, 3),
        "sync_s": round(synced, 3),
        "wall_synced_s": round(wall + synced, 3),
        "cpu_s": round((user or 0) + (system or 0), 2) if user is not None else None,
        "user_s": user,
        "sys_s": system,
        "peak_rss_mb": round(rss_kb / 1024, 1) if rss_kb is not None else None,
        "stdout_tail": (logs / f"{name}.stdout").read_text(errors="replace")[-600:],
        "stderr_tail": (logs / f"{name}.stderr").read_text(errors="replace")[-600:],
    }


def _tree_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _header_names(directory: Path) -> dict[str, list]:
    """tensor name → [dtype, shape] over every safetensors file of a directory (headers only)."""
    found = {}
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        header.pop("__metadata__", None)
        found.update({name: [entry["dtype"], entry["shape"]] for name, entry in header.items()})
    return found


PHASES = {  # label → (file suffix, function name) in a cProfile of `modelforge build`
    "total (cli main)": ("modelforge/cli.py", "build"),
    "gather: hash + read source headers": ("modelforge/api/gathering.py", "gather"),
    "run_plan: all steps": ("modelforge/executor.py", "run_plan"),
    "write_shard: copy + hash output": ("modelforge/safetensors_io.py", "write_shard"),
    "hash_file: whole-file sha256 passes": ("modelforge/hashing.py", "hash_file"),
    "materialize: link into --out": ("modelforge/executor.py", "materialize"),
    "write_lock": ("modelforge/lock.py", "write_lock"),
}


def profile_summary(path: Path) -> dict:
    import pstats

    stats = pstats.Stats(str(path))
    phases = {}
    for label, (suffix, function) in PHASES.items():
        found = [value for (file, _, name), value in stats.stats.items() if file.endswith(suffix) and name == function]
        phases[label] = round(sum(value[3] for value in found), 2) if found else None
    top = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:12]
    return {
        "cumulative_s": phases,
        "top_self_s": [{"function": f"{Path(file).name}:{line}({name})", "calls": value[1], "self_s": round(value[2], 2), "cumulative_s": round(value[3], 2)} for (file, line, name), value in top],
    }


# --------------------------------------------------------------------------- machine
def machine() -> dict:
    def cpu_model() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or "unknown"

    def ram_gib() -> float | None:
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / (1 << 20), 1)
        except OSError:
            pass
        return None

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def filesystem(path: Path) -> dict:
    info: dict = {"type": "unknown"}
    try:
        result = subprocess.run(["findmnt", "-n", "-T", str(path), "-o", "FSTYPE,SOURCE"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.split():
            info["type"], info["device"] = (result.stdout.split() + [""])[:2]
    except OSError:
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, kind = line.split()[:3]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, info = mount, {"type": kind, "device": device}
    usage = shutil.disk_usage(path)
    info["free_gb"] = round(usage.free / 1e9, 1)
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("modelforge", "safetensors", "torch", "numpy"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:
            found["git"] = head.stdout.strip() + ("+dirty src" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return found


def paired_runs(count: int, shards: list[Path], run: Path, build_command: list[str], store: Path, out: Path, logs: Path,
                rss_tool: str, prepare, log) -> dict:
    """`count` pairs, each `cp` of the input shards then a fresh `modelforge build` (new store, new
    --out, the page cache dropped before each), so slow drift of a shared machine hits both sides
    alike; the pairs alternate which side goes first. Each ratio is of wall+sync seconds."""
    rows = []
    for index in range(count):
        order = ("cp", "build") if index % 2 == 0 else ("build", "cp")
        row = {"first": order[0]}
        for side in order:
            if side == "cp":
                target = run / f"pair-cp-{index}"
                target.mkdir()
                prepare(shards)
                item = measure(f"pair{index}-cp", ["cp", *map(str, shards), str(target)], logs, rss_tool)
                shutil.rmtree(target)
            else:
                shutil.rmtree(store, ignore_errors=True)
                shutil.rmtree(out, ignore_errors=True)
                prepare(shards)
                item = measure(f"pair{index}-build", build_command, logs, rss_tool, cwd=build_command_cwd(build_command))
            row[side] = {key: item[key] for key in ("rc", "wall_s", "wall_synced_s", "cpu_s", "peak_rss_mb")}
        row["ratio"] = _ratio(row["build"]["wall_synced_s"], row["cp"]["wall_synced_s"])
        log(f"  pair {index + 1}/{count}: cp {row['cp']['wall_synced_s']:.2f}s, build {row['build']['wall_synced_s']:.2f}s, ratio {row['ratio']}")
        rows.append(row)
    ratios = sorted(row["ratio"] for row in rows if row["ratio"] is not None and row["build"]["rc"] == 0 and row["cp"]["rc"] == 0)
    median = round(statistics.median(ratios), 3) if ratios else None
    return {"count": count, "runs": rows, "median": median, "min": ratios[0] if ratios else None, "max": ratios[-1] if ratios else None}


def sha256_rate(size: int = 512 << 20, chunk: int = CHUNK, repeats: int = 3) -> float:
    """Bytes a second that hashlib's sha256 (OpenSSL: SHA-NI where the CPU has it) hashes on one
    core, in the chunks the build hashes in; the best of a few passes over random bytes in memory."""
    import hashlib

    data = memoryview(bytearray(os.urandom(chunk)) * (size // chunk))
    best = math.inf
    for _ in range(repeats):
        start, digest = time.perf_counter(), hashlib.sha256()
        for offset in range(0, len(data), chunk):
            digest.update(data[offset : offset + chunk])
        best = min(best, time.perf_counter() - start)
    return len(data) / best


def cpu_floor(pairs: dict, input_bytes: int, output_bytes: int, cores: int, rate: float) -> dict:
    """The least wall time a fresh build can take on these cores, from work it cannot skip: sha256
    of the whole source (the lock pins it) and of the output (the lock pins that too) at the rate
    measured here, plus the kernel's copying of the output's bytes, taken from cp's own CPU in the
    paired runs (its median, scaled to the bytes the build copies); all spread perfectly over the
    cores. Beside the paired cp's median wall: a floor over 1.0 means no build that hashes what it
    pins can match cp on this machine."""
    runs = [row for row in pairs["runs"] if row["cp"]["rc"] == 0]
    cp_cpu = statistics.median(row["cp"]["cpu_s"] for row in runs) * output_bytes / input_bytes
    cp_wall = statistics.median(row["cp"]["wall_synced_s"] for row in runs)
    hashing = (input_bytes + output_bytes) / rate
    floor = (hashing + cp_cpu) / cores
    return {"sha256_gb_s": round(rate / 1e9, 3), "hashed_gb": round((input_bytes + output_bytes) / 1e9, 3), "hashing_cpu_s": round(hashing, 4),
            "copy_cpu_s": round(cp_cpu, 4), "cores": cores, "floor_s": round(floor, 4), "cp_median_s": round(cp_wall, 4),
            "floor_over_cp": _ratio(floor, cp_wall)}


def build_command_cwd(build_command: list[str]) -> Path:
    """The project directory a build command runs in: the one holding its manifests/ folder."""
    manifest = Path(next(arg for arg in build_command if arg.endswith(".yaml")))
    return manifest.parent.parent


def paired_target(pairs: dict) -> dict:
    value = pairs["median"]
    return {"target": f"modelforge wall <= {PAIRED_LIMIT}x cp (median of {pairs['count']} paired runs, synced)", "value": value,
            "limit": PAIRED_LIMIT, "passed": None if value is None else value <= PAIRED_LIMIT}


# --------------------------------------------------------------------------- reporting
def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def summarize(methods: dict) -> tuple[dict, list[dict]]:
    get = lambda method, key: methods.get(method, {}).get(key)  # noqa: E731
    ratios = {
        "modelforge_over_cp": _ratio(get("modelforge_build", "wall_synced_s"), get("cp", "wall_synced_s")),
        "modelforge_over_naive": _ratio(get("modelforge_build", "wall_synced_s"), get("naive", "wall_synced_s")),
        "modelforge_over_cp_unsynced": _ratio(get("modelforge_build", "wall_s"), get("cp", "wall_s")),
        "modelforge_over_naive_unsynced": _ratio(get("modelforge_build", "wall_s"), get("naive", "wall_s")),
        "modelforge_rss_over_naive_rss": _ratio(get("modelforge_build", "peak_rss_mb"), get("naive", "peak_rss_mb")),
        "verify_over_sha256sum": _ratio(get("modelforge_verify", "wall_s"), get("sha256sum", "wall_s")),
        "noop_s": get("modelforge_noop", "wall_s"),
        "noop_warm_s": get("modelforge_noop_warm", "wall_s"),
    }

    def target(name: str, value, limit, passed) -> dict:
        return {"target": name, "value": value, "limit": limit, "passed": None if value is None else bool(passed)}

    mf, naive, cp = get("modelforge_build", "wall_synced_s"), get("naive", "wall_synced_s"), get("cp", "wall_synced_s")
    rss, noop = get("modelforge_build", "peak_rss_mb"), get("modelforge_noop_warm", "wall_s")
    targets = [
        target("modelforge wall <= naive wall (synced)", ratios["modelforge_over_naive"], 1.0, mf is not None and naive is not None and mf <= naive),
        target(f"modelforge wall close to cp (<= {CLOSE_TO_CP}x, synced)", ratios["modelforge_over_cp"], CLOSE_TO_CP, mf is not None and cp and mf <= CLOSE_TO_CP * cp),
        target(f"modelforge peak RSS <= {RSS_LIMIT_MB} MB", rss, RSS_LIMIT_MB, rss is not None and rss <= RSS_LIMIT_MB),
        target(f"no-op rebuild <= {NOOP_LIMIT_S} s (warm; cold is noop_s)", noop, NOOP_LIMIT_S, noop is not None and noop <= NOOP_LIMIT_S),
    ]
    return ratios, targets


def _fmt(value, digits=2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_rows(result: dict) -> list[list[str]]:
    rows = []
    for name in METHODS:
        item = result["methods"].get(name)
        if not item:
            continue
        rate = item.get("bytes_written") or item.get("bytes_read")
        rows.append([
            name,
            _fmt(item["wall_s"]),
            _fmt(item["wall_synced_s"]),
            _fmt(item["cpu_s"], 1),
            _fmt(item["peak_rss_mb"], 0),
            _fmt(rate / item["wall_synced_s"] / 1e9 if rate and item["wall_synced_s"] else None),
            "ok" if item["rc"] == 0 else f"rc={item['rc']}",
        ])
    return rows


HEADERS = ["method", "wall s", "wall+sync s", "CPU s", "peak RSS MB", "GB/s", "status"]


def render_text(result: dict) -> str:
    rows = table_rows(result)
    widths = [max(len(str(row[i])) for row in rows + [HEADERS]) for i in range(len(HEADERS))]
    line = lambda row: "  ".join(str(cell).rjust(width) if i else str(cell).ljust(width) for i, (cell, width) in enumerate(zip(row, widths)))  # noqa: E731
    m = result["machine"]
    out = [
        f"machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, work dir on {result['filesystem']['type']} ({result['filesystem'].get('device', '')})",
        f"scale {scale_label(result['scale'])}: {result['checkpoint']['tensors']} tensors, {result['checkpoint']['tensor_bytes'] / 1e9:.3f} GB in, "
        f"{(result['methods'].get('modelforge_build', {}).get('bytes_written') or 0) / 1e9:.3f} GB out; page cache: {result['cache']}",
        "",
        line(HEADERS),
        line(["-" * w for w in widths]),
        *[line(row) for row in rows],
        "",
        "ratios (same run): " + ", ".join(f"{k}={_fmt(v, 3)}" for k, v in result["ratios"].items()),
        "checks: " + ", ".join(f"{k}={v}" for k, v in result["checks"].items()),
        "targets:",
        *[f"  [{verdict(t['passed']):4}] {t['target']}: {_fmt(t['value'], 3)}" for t in result["targets"]],
    ]
    if result.get("pairs"):
        pairs = result["pairs"]
        out += [f"paired runs: median build/cp {_fmt(pairs['median'], 3)} over {pairs['count']} (range {_fmt(pairs['min'], 3)}–{_fmt(pairs['max'], 3)})"]
    if result.get("floor"):
        out += [floor_sentence(result["floor"])]
    if result.get("profile"):
        out += ["profile of a fresh build (cProfile, cumulative seconds):"]
        out += [f"  {label}: {_fmt(value)}" for label, value in result["profile"]["cumulative_s"].items()]
        out += ["  top functions by own time:"] + [f"    {item['self_s']:8.2f}s  {item['calls']:>7} calls  {item['function']}" for item in result["profile"]["top_self_s"][:8]]
    return "\n".join(out)


def floor_sentence(floor: dict) -> str:
    return (f"CPU floor (work a build cannot skip, spread over {floor['cores']} cores): sha256 of {floor['hashed_gb']} GB (the source and the output, "
            f"both pinned by the lock) at {floor['sha256_gb_s']} GB/s a core is {_fmt(floor['hashing_cpu_s'])} CPU s, plus cp's own copying CPU "
            f"scaled to the output, {_fmt(floor['copy_cpu_s'])} s: {_fmt(floor['floor_s'])} s, {_fmt(floor['floor_over_cp'], 3)}x the paired cp median "
            f"({_fmt(floor['cp_median_s'])} s).")


def render_markdown(result: dict) -> str:
    m, fs = result["machine"], result["filesystem"]
    label = scale_label(result["scale"])
    rows = table_rows(result)
    lines = [
        f"<!-- bench:text_only scale={label} begin -->",
        f"## text_only, scale {label}",
        "",
        f"- date: {result['date']}",
        f"- machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}; "
        f"1-min load average {m.get('loadavg_1m_at_start')} at start, {m.get('loadavg_1m')} at end (the machine is shared)",
        f"- work dir filesystem: {fs['type']} ({fs.get('device', '')})",
        f"- input: {result['checkpoint']['tensors']} tensors, {result['checkpoint']['tensor_bytes'] / 1e9:.3f} GB bf16 in {len(result['checkpoint']['shards'])} shards; "
        f"output: {(result['methods'].get('modelforge_build', {}).get('bytes_written') or 0) / 1e9:.3f} GB",
        f"- page cache: {result['cache']}",
        f"- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 2) + ["---"]) + "|",
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        "| ratio (same run) | value |",
        "|---|---:|",
        *[f"| {k} | {_fmt(v, 3)} |" for k, v in result["ratios"].items()],
        "",
        *targets_table(result["targets"], lambda value: _fmt(value, 3)),
        "",
        "Checks: " + ", ".join(f"{k} = {v}" for k, v in result["checks"].items()) + ".",
    ]
    if result.get("pairs"):
        pairs = result["pairs"]
        lines += ["", f"Paired runs (`--pairs {pairs['count']}`; each pair is cp then a fresh build or the reverse, the page cache dropped before each; "
                  f"wall+sync seconds): median {_fmt(pairs['median'], 3)}, range {_fmt(pairs['min'], 3)}–{_fmt(pairs['max'], 3)}.", "",
                  "| pair | first | cp s | build s | build CPU s | build peak RSS MB | ratio |", "|---:|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {i + 1} | {row['first']} | {_fmt(row['cp']['wall_synced_s'])} | {_fmt(row['build']['wall_synced_s'])} | "
                  f"{_fmt(row['build']['cpu_s'], 1)} | {_fmt(row['build']['peak_rss_mb'], 0)} | {_fmt(row['ratio'], 3)} |" for i, row in enumerate(pairs["runs"])]
    if result.get("floor"):
        lines += ["", floor_sentence(result["floor"])]
    if result.get("profile"):
        lines += ["", "Profile of one more fresh build under cProfile (`--profile`; cumulative seconds, cProfile overhead included):", "",
                  "| phase | s |", "|---|---:|"]
        lines += [f"| {label} | {_fmt(value)} |" for label, value in result["profile"]["cumulative_s"].items()]
        lines += ["", "| function (own time) | calls | self s | cumulative s |", "|---|---:|---:|---:|"]
        lines += [f"| `{item['function']}` | {item['calls']} | {item['self_s']:.2f} | {item['cumulative_s']:.2f} |" for item in result["profile"]["top_self_s"][:8]]
    lines.append(f"<!-- bench:text_only scale={label} end -->")
    return "\n".join(lines) + "\n"


def update_markdown(path: Path, section: str, label: str) -> None:
    replace_section(path, f"bench:text_only scale={label}", section)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="first-dimension scale of every tensor (1.0: full MedGemma 4B, ~8.6 GB)")
    parser.add_argument("--work", type=Path, default=BENCH / "out", help="checkpoint and scratch directory (default bench/out/)")
    parser.add_argument("--results", type=Path, default=None, help="JSON results (default bench/results/text_only-scale<S>.json)")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md", help="markdown file whose section for this scale is replaced")
    parser.add_argument("--cache", choices=("drop", "warm"), default="drop", help="drop the page cache before each method (falls back to warm)")
    parser.add_argument("--profile", action="store_true", help="afterwards, one more fresh build under cProfile; its phase times go into the results")
    parser.add_argument("--keep-outputs", action="store_true", help="keep every method's output under WORK/run/")
    parser.add_argument("--pairs", type=int, default=4, help="afterwards, this many paired runs of cp then a fresh build, alternating (0: none); the target is their median ratio")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1.0:
        parser.error("--scale must be in (0, 1]")
    label = scale_label(args.scale)
    results_path = args.results or BENCH / "results" / f"text_only-scale{label}.json"
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = work / f"checkpoint-scale{label}"
    expected = sum(_numel(s) * DTYPE_BYTES for s in scaled_shapes(args.scale).values())
    # Outputs are deleted as soon as measured, so at most the input plus about two copies coexist.
    needed = (0 if (checkpoint_dir / ".bench-stamp.json").exists() else expected) + 2.1 * expected
    if shutil.disk_usage(work).free < needed:
        log(f"error: {work} has {shutil.disk_usage(work).free / 1e9:.1f} GB free; this scale needs about {needed / 1e9:.1f} GB")
        return 2
    checkpoint = ensure_checkpoint(checkpoint_dir, args.scale, log)
    shards = [checkpoint_dir / name for name in checkpoint["shards"]]

    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    logs = run / "logs"
    logs.mkdir(parents=True)
    project = run / "project"
    (project / "manifests").mkdir(parents=True)
    shutil.copy2(MANIFEST, project / "manifests" / MANIFEST.name)
    manifest = project / "manifests" / MANIFEST.name
    lock = project / "lock" / "medgemma-1.5-text-only.lock"
    store, out = run / "store", run / "mf-out"
    modelforge = [sys.executable, "-m", "modelforge.cli"]
    build_command = [*modelforge, "build", str(manifest), "--source-dir", str(checkpoint_dir), "--store", str(store), "--out", str(out)]
    rss_tool = _rss_tool()

    cache_state = {"mode": args.cache, "dropped": None}
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None

    def prepare(inputs: list[Path]) -> None:
        if cache_state["mode"] == "drop":
            ok = drop_caches()
            if cache_state["dropped"] is None:
                cache_state["dropped"] = ok
                if not ok:
                    log("cannot drop the page cache (needs root); every method runs with a warm cache instead")
                    cache_state["mode"] = "warm"
            if ok:
                return
        os.sync()
        warm(inputs)

    methods: dict[str, dict] = {}

    log(f"measuring (peak RSS via {rss_tool}) …")
    # (a) cp
    cp_out = run / "cp-out"
    cp_out.mkdir()
    prepare(shards)
    methods["cp"] = measure("cp", ["cp", *map(str, shards), str(cp_out)], logs, rss_tool)
    methods["cp"]["bytes_written"] = _tree_bytes(cp_out)
    log(f"  cp: {methods['cp']['wall_synced_s']:.2f}s")
    if not args.keep_outputs:
        shutil.rmtree(cp_out)

    # (b) naive: load_file / rename / save_file
    naive_out = run / "naive-out"
    prepare(shards)
    methods["naive"] = measure("naive", [sys.executable, "-c", NAIVE_SCRIPT, str(checkpoint_dir), str(naive_out)], logs, rss_tool)
    methods["naive"]["bytes_written"] = _tree_bytes(naive_out) if naive_out.exists() else None
    naive_tensors = _header_names(naive_out) if naive_out.exists() else {}
    log(f"  naive: {methods['naive']['wall_synced_s']:.2f}s")
    if not args.keep_outputs:
        shutil.rmtree(naive_out, ignore_errors=True)

    # (c) modelforge build into a fresh store
    prepare(shards)
    methods["modelforge_build"] = measure("modelforge_build", build_command, logs, rss_tool, cwd=project)
    outputs = sorted(p for p in (out / "text").rglob("*") if p.is_file()) if (out / "text").is_dir() else []
    methods["modelforge_build"]["bytes_written"] = sum(p.stat().st_size for p in outputs)
    log(f"  modelforge build: {methods['modelforge_build']['wall_synced_s']:.2f}s")

    # (d) no-op rebuild
    prepare(shards)
    methods["modelforge_noop"] = measure("modelforge_noop", build_command, logs, rss_tool, cwd=project)
    log(f"  modelforge no-op: {methods['modelforge_noop']['wall_s']:.2f}s")
    # The same again straight away (Python and its imports warm): the usual edit-rebuild loop.
    methods["modelforge_noop_warm"] = measure("modelforge_noop_warm", build_command, logs, rss_tool, cwd=project)
    log(f"  modelforge no-op (warm): {methods['modelforge_noop_warm']['wall_s']:.2f}s")

    # (e) verify vs (f) sha256sum of the same files
    prepare(outputs)
    methods["modelforge_verify"] = measure("modelforge_verify", [*modelforge, "verify", str(lock), "--dir", str(out)], logs, rss_tool, cwd=project)
    methods["modelforge_verify"]["bytes_read"] = methods["modelforge_build"]["bytes_written"]
    log(f"  modelforge verify: {methods['modelforge_verify']['wall_s']:.2f}s")
    prepare(outputs)
    methods["sha256sum"] = measure("sha256sum", ["sha256sum", *map(str, outputs)], logs, rss_tool)
    methods["sha256sum"]["bytes_read"] = methods["modelforge_build"]["bytes_written"]
    log(f"  sha256sum: {methods['sha256sum']['wall_s']:.2f}s")

    # Correctness checks (not timed).
    mf_tensors = _header_names(out / "text") if (out / "text").is_dir() else {}
    lock_files = {}
    if lock.exists():
        import yaml

        lock_files = {name: item["sha256"] for name, item in (yaml.safe_load(lock.read_text())["targets"]["text"]["files"] or {}).items()}
    sums = {}
    for line in (logs / "sha256sum.stdout").read_text().splitlines():
        if line.strip():
            digest, path = line.split(None, 1)
            relative = Path(path.strip()).relative_to(out / "text").as_posix()
            if relative not in ("provenance.intoto.jsonl", "model.sig"):  # beside the files, not in the lock
                sums[relative] = digest
    sha_agrees = bool(lock_files) and sums == lock_files
    noop_match = re.search(r"(\d+) step\(s\) ran, (\d+) cached", methods["modelforge_noop"]["stdout_tail"])
    noop_warm_match = re.search(r"(\d+) step\(s\) ran, (\d+) cached", methods["modelforge_noop_warm"]["stdout_tail"])
    expected_kept = sum(1 for name in scaled_shapes(args.scale) if name.startswith("language_model."))
    checks = {
        "build_ok": methods["modelforge_build"]["rc"] == 0,
        "verify_ok": methods["modelforge_verify"]["rc"] == 0 and "ok: every file matches" in methods["modelforge_verify"]["stdout_tail"],
        "sha256sum_agrees_with_lock": sha_agrees,
        "noop_steps_ran": int(noop_match.group(1)) + int(noop_warm_match.group(1)) if noop_match and noop_warm_match else None,
        "output_tensors": len(mf_tensors),
        "output_tensors_expected": expected_kept,
        "naive_and_modelforge_same_tensors": bool(mf_tensors) and naive_tensors == mf_tensors,
    }
    ratios, targets = summarize(methods)
    if cache_state["dropped"]:
        cache = "dropped before each method (sync; echo 3 > /proc/sys/vm/drop_caches)"
    else:
        cache = "warm: could not drop it; each method's inputs were read once just before it" if args.cache == "drop" else "warm (--cache warm): each method's inputs were read once just before it"
    result = {
        "benchmark": "text_only",
        "scale": args.scale,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "machine": machine() | {"loadavg_1m_at_start": load_before},
        "filesystem": filesystem(work),
        "versions": versions(),
        "cache": cache,
        "cache_dropped": bool(cache_state["dropped"]),
        "rss_tool": rss_tool,
        "checkpoint": {k: v for k, v in checkpoint.items() if k != "files"} | {"dir": str(checkpoint_dir)},
        "methods": methods,
        "ratios": ratios,
        "targets": targets,
        "checks": checks,
        "notes": {
            "wall_s": "the command alone",
            "wall_synced_s": "the command then os.sync(): writers compared with their bytes on disk (modelforge fsyncs; cp and save_file do not)",
            "ratios": "against cp/naive/sha256sum measured in this same run; build ratios use wall_synced_s, verify/sha256sum use wall_s",
        },
    }
    if args.pairs > 0:
        result["pairs"] = paired_runs(args.pairs, shards, run, build_command, store, out, logs, rss_tool, prepare, log)
        result["ratios"]["modelforge_over_cp_paired_median"] = result["pairs"]["median"]
        result["targets"].append(paired_target(result["pairs"]))
        if checks["build_ok"]:
            input_bytes = sum(path.stat().st_size for path in shards)
            result["floor"] = cpu_floor(result["pairs"], input_bytes, methods["modelforge_build"]["bytes_written"], len(os.sched_getaffinity(0)), sha256_rate())
            result["ratios"]["cpu_floor_over_cp"] = result["floor"]["floor_over_cp"]
    if args.profile:
        # A second fresh build under cProfile (not in the table's ratios): where the time goes.
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        profile_file = logs / "build.prof"
        profiled = [sys.executable, "-m", "cProfile", "-o", str(profile_file), "-m", "modelforge.cli", *build_command[3:]]
        profiled[profiled.index("--store") + 1] = str(run / "store-profiled")
        prepare(shards)
        methods["modelforge_build_profiled"] = measure("modelforge_build_profiled", profiled, logs, rss_tool, cwd=project)
        log(f"  modelforge build under cProfile: {methods['modelforge_build_profiled']['wall_s']:.2f}s")
        result["profile"] = profile_summary(profile_file) if profile_file.exists() else None
        result["methods"] = methods
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(result, indent=1) + "\n")
    update_markdown(args.markdown, render_markdown(result), label)
    print(render_text(result))
    print(f"\nwrote {results_path} and {args.markdown}")
    if not args.keep_outputs:
        shutil.rmtree(run, ignore_errors=True)
    failed = [name for name, item in methods.items() if item["rc"] != 0]
    if failed:
        log(f"error: {', '.join(failed)} failed; see the stderr tails in {results_path}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
