#!/usr/bin/env python
"""Benchmark: the `litertlm` target (litert-torch export, quantization, packaging, parity).

Four measurements, all in one run (see bench/README.md):

  stages    a fresh build of manifests/tiny-medgemma-litertlm.yaml: wall seconds and peak RSS of
            every stage (export_text, export_vision, quantize.*, metadata, package, parity)
  rebuild   the same manifest with only the vision_encoder recipe changed, into the same store:
            which steps ran (export_text must not) and the wall time
  overhead  a text_generation float export through `modelforge build` against
            `litert-torch export_hf` with the same options, alternating, fresh dirs, medians
  memory    peak RSS of the text and vision exports on synthetic Gemma3ForConditionalGeneration
            checkpoints of increasing size, fitted against their parameter counts, and compared
            with the prediction modelforge records in the plan (src/modelforge/memory.py)

Results: tables on stdout, JSON at --results, a section in --markdown (bench/RESULTS.md).
Never raises on a missed target; exits non-zero only if a build or export failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from results_markdown import replace_section, targets_table, text_tables  # noqa: E402  (bench/ is the script's directory)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TINY = ROOT / "fixtures" / "tiny-medgemma"
TINY_MANIFEST = ROOT / "manifests" / "tiny-medgemma-litertlm.yaml"
SECTIONS = ("stages", "rebuild", "overhead", "memory")
GENERATOR_VERSION = 1
OVERHEAD_LIMIT = 0.05  # target: modelforge at most 5 % slower than litert-torch export_hf
MARK = "bench:litertlm"

# The worker's environment (modelforge.steps.workers.launch), given to every command here.
ENV = {"PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# Synthetic checkpoints for the memory fit: overrides of the fixture's config. Text and vision grow
# at different rates (and `vision_big` grows only the vision tower), so that what is loaded and
# what is traced can be told apart.
CHECKPOINTS = {
    "tiny": None,  # fixtures/tiny-medgemma itself
    "small": {
        "text": {"hidden_size": 256, "num_hidden_layers": 8, "intermediate_size": 1024, "num_attention_heads": 4,
                 "num_key_value_heads": 1, "head_dim": 64, "query_pre_attn_scalar": 64, "vocab_size": 4096},
        "vision": {"hidden_size": 128, "num_hidden_layers": 4, "intermediate_size": 512, "num_attention_heads": 4},
    },
    "medium": {
        "text": {"hidden_size": 512, "num_hidden_layers": 12, "intermediate_size": 2048, "num_attention_heads": 8,
                 "num_key_value_heads": 2, "head_dim": 64, "query_pre_attn_scalar": 64, "vocab_size": 4096},
        "vision": {"hidden_size": 256, "num_hidden_layers": 6, "intermediate_size": 1024, "num_attention_heads": 4},
    },
    "large": {
        "text": {"hidden_size": 768, "num_hidden_layers": 14, "intermediate_size": 3072, "num_attention_heads": 12,
                 "num_key_value_heads": 2, "head_dim": 64, "query_pre_attn_scalar": 64, "vocab_size": 8192},
        "vision": {"hidden_size": 384, "num_hidden_layers": 8, "intermediate_size": 1536, "num_attention_heads": 6},
    },
    "vision_big": {
        "text": {},
        "vision": {"hidden_size": 512, "num_hidden_layers": 12, "intermediate_size": 2048, "num_attention_heads": 8},
    },
}
SMALL_FILES = ("added_tokens.json", "chat_template.jinja", "generation_config.json", "preprocessor_config.json",
               "processor_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json")
PART_PREFIXES = {"text": ("language_model.",), "vision": ("vision_tower.", "multi_modal_projector.")}


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _env(work: Path) -> dict:
    return {**os.environ, **ENV, "HF_HOME": str(work / "hf-home")}


# --------------------------------------------------------------------------- manifests
def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def _tiny_manifest() -> dict:
    """The tiny manifest's litertlm target alone (other targets, such as a web bundle, are not measured here)."""
    import yaml

    data = yaml.safe_load(TINY_MANIFEST.read_text())
    data["targets"] = {name: target for name, target in data["targets"].items() if target["kind"] == "litertlm"}
    return data


def _project(base: Path, manifests: dict[str, dict], source: Path | None = None) -> Path:
    """A scratch project (manifests/, fixtures/, lock/) so no lock or dist lands in the repo."""
    shutil.rmtree(base, ignore_errors=True)
    (base / "manifests").mkdir(parents=True)
    (base / "lock").mkdir()
    shutil.copytree(TINY, base / "fixtures" / "tiny-medgemma")
    for name, data in manifests.items():
        if source is not None:
            data = {**data, "source": {"kind": "local", "path": os.path.relpath(source, base / "manifests")}}
        (base / "manifests" / name).write_text(_yaml(data))
    return base


def text_float_manifest() -> dict:
    """text_generation, float, no parity, same lengths as the tiny manifest: what export_hf does."""
    tiny = _tiny_manifest()
    bundle = tiny["targets"]["bundle"]
    return {
        "name": "bench-text-float",
        "source": tiny["source"],
        "components": tiny["components"],
        "weights": [{"kind": "drop", "components": ["vision_encoder", "projector"]}],
        "files": tiny["files"],
        "targets": {"bundle": {
            "kind": "litertlm", "task": "text_generation", "file": "model.litertlm", "components": ["text_decoder"],
            "prefill_lengths": bundle["prefill_lengths"], "cache_length": bundle["cache_length"], "metadata": bundle["metadata"],
        }},
    }


def memory_manifest() -> dict:
    """The tiny manifest's export (image_text_to_text, same lengths and hoists) without quantization or parity."""
    tiny = _tiny_manifest()
    bundle = dict(tiny["targets"]["bundle"])
    bundle.pop("quantization", None)
    bundle.pop("parity", None)
    return {**tiny, "name": "bench-memory", "targets": {"bundle": bundle}}


def vision_recipe_manifest() -> dict:
    tiny = _tiny_manifest()
    tiny["targets"]["bundle"]["quantization"]["vision_encoder"] = {"recipe": "dynamic_wi8_afp32"}
    return tiny


# --------------------------------------------------------------------------- checkpoints
def ensure_checkpoint(name: str, work: Path) -> Path:
    spec = CHECKPOINTS[name]
    if spec is None:
        return TINY
    directory = work / "checkpoints" / name
    stamp = {"generator_version": GENERATOR_VERSION, "spec": spec}
    stamp_path = directory / ".bench-stamp.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return directory
    log(f"  writing synthetic checkpoint {name} …")
    shutil.rmtree(directory, ignore_errors=True)
    script = r'''
import json, sys, torch, transformers
spec, source, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
config = json.load(open(source + "/config.json"))
config["text_config"].update(spec["text"])
config["vision_config"].update(spec["vision"])
layers = config["text_config"]["num_hidden_layers"]
config["text_config"]["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
torch.manual_seed(0)
model = transformers.Gemma3ForConditionalGeneration(transformers.Gemma3Config(**config)).to(torch.bfloat16)
model.save_pretrained(out)
'''
    subprocess.run([sys.executable, "-c", script, json.dumps(spec), str(TINY), str(directory)], check=True, env=_env(work),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for file in SMALL_FILES:
        shutil.copyfile(TINY / file, directory / file)
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return directory


def parameter_counts(directory: Path) -> dict[str, int]:
    """Parameters per export part and in all, from the safetensors headers (what the planner sees)."""
    from modelforge.safetensors_io import read_header

    counts = {"text": 0, "vision": 0, "total": 0}
    for path in sorted(directory.glob("*.safetensors")):
        for name, info in read_header(path)[0].items():
            numel = 1
            for dimension in info.shape:
                numel *= dimension
            counts["total"] += numel
            for part, prefixes in PART_PREFIXES.items():
                if name.startswith(prefixes):
                    counts[part] += numel
    return counts


# --------------------------------------------------------------------------- the build driver
def _vm_hwm(pid: int | str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class SamplingReporter:
    """Per step: wall seconds (as the executor reports them) and peak RSS. Steps that run in this
    process get their peak from VmHWM after resetting it (`clear_refs` 5) at the step's start;
    steps that run a child get the largest VmHWM of any descendant, sampled every 0.1 s."""

    def __init__(self):
        self.steps: dict[str, dict] = {}
        self.current: str | None = None
        self.child_peak = 0
        self.stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        while not self.stop.wait(0.1):
            if self.current is None:
                continue
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                peak = _vm_hwm(child.pid)
                if peak:
                    self.child_peak = max(self.child_peak, peak)

    def step_started(self, name: str, kind: str, reason: str) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            reset = False
        self.child_peak = 0
        self.current = name
        self.steps[name] = {"kind": kind, "reason": reason, "in_process_peak_reset": reset, "order": len(self.steps)}

    def step_progress(self, name: str, done: int, total: int, message: str) -> None: ...

    def step_finished(self, name: str, ran: bool, seconds: float) -> None:
        if ran:
            self.steps[name].update({
                "wall_s": round(seconds, 3),
                "in_process_peak_rss_bytes": _vm_hwm("self"),
                "child_peak_rss_bytes_sampled": self.child_peak or None,
            })
        self.current = None

    def message(self, text: str) -> None: ...


def driver(request_path: Path) -> int:
    """`--driver REQUEST.json`: api.build with a SamplingReporter; writes RESULT.json beside it."""
    from modelforge import api
    from modelforge.errors import ModelforgeError

    request = json.loads(request_path.read_text())
    reporter = SamplingReporter()
    started = time.perf_counter()
    result: dict = {}
    try:
        built = api.build(request["manifest"], store_dir=Path(request["store"]), out=Path(request["out"]), reporter=reporter, write_lockfile=False)
        result.update({"ran": built.ran, "cached": built.cached, "measurements": built.measurements,
                       "memory_prediction": dict(built.plan.facts.get("memory", {})), "error": None})
    except ModelforgeError as error:
        result["error"] = f"{type(error).__name__}: {error}"
    result["wall_s"] = round(time.perf_counter() - started, 3)
    reporter.stop.set()
    result["steps"] = reporter.steps
    request_path.with_name("result.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return 0 if result["error"] is None else 1


def run_build(manifest: Path, store: Path, out: Path, job: Path, work: Path) -> dict:
    job.mkdir(parents=True, exist_ok=True)
    (job / "request.json").write_text(json.dumps({"manifest": str(manifest), "store": str(store), "out": str(out)}))
    with open(job / "log.txt", "wb") as logfile:
        started = time.perf_counter()
        rc = subprocess.call([sys.executable, str(Path(__file__).resolve()), "--driver", str(job / "request.json")],
                             stdout=logfile, stderr=subprocess.STDOUT, env=_env(work), cwd=manifest.parent.parent)
        wall = time.perf_counter() - started
    result = json.loads((job / "result.json").read_text()) if (job / "result.json").exists() else {"error": f"driver exit {rc}"}
    result["process_wall_s"] = round(wall, 3)
    if result.get("error"):
        result["log_tail"] = (job / "log.txt").read_text(errors="replace")[-1500:]
    return result


def stage_rows(build: dict) -> list[dict]:
    """One row per step that ran: wall, worker seconds and the best peak-RSS figure with its source."""
    rows = []
    for name, step in sorted(build.get("steps", {}).items(), key=lambda item: item[1].get("order", 0)):
        if "wall_s" not in step:
            continue
        measured = build.get("measurements", {}).get(name)
        if measured:
            rss, source = measured["peak_rss_bytes"], "worker getrusage"
        elif step.get("child_peak_rss_bytes_sampled"):
            rss, source = step["child_peak_rss_bytes_sampled"], "worker VmHWM (sampled)"
        else:
            rss, source = step.get("in_process_peak_rss_bytes"), "build process VmHWM"
        rows.append({"step": name, "kind": step["kind"], "wall_s": step["wall_s"], "worker_s": (measured or {}).get("seconds"),
                     "peak_rss_bytes": rss, "rss_source": source})
    return rows


# --------------------------------------------------------------------------- timed commands
def timed(command: list[str], logs: Path, label: str, env: dict, cwd: Path | None = None) -> dict:
    usage = logs / f"{label}.usage"
    with open(logs / f"{label}.out", "wb") as out:
        started = time.perf_counter()
        rc = subprocess.call(["/usr/bin/time", "-v", "-o", str(usage), *command], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        wall = time.perf_counter() - started
    text = usage.read_text() if usage.exists() else ""
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    output = (logs / f"{label}.out").read_text(errors="replace")
    return {"command": " ".join(command), "rc": rc, "wall_s": round(wall, 3),
            "peak_rss_bytes": int(match.group(1)) * 1024 if match else None,
            "steps_s": {name: float(seconds) for name, seconds in re.findall(r"done\s+(\S+) in ([0-9.]+)s", output)},
            "tail": output[-800:] if rc else ""}


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# --------------------------------------------------------------------------- sections
def section_stages(work: Path, results: dict, with_rebuild: bool) -> None:
    base = work / "stages"
    project = _project(base / "project", {TINY_MANIFEST.name: _tiny_manifest(), "vision-recipe.yaml": vision_recipe_manifest()})
    store = base / "store"
    log("stages: fresh build of tiny-medgemma-litertlm …")
    build = run_build(project / "manifests" / TINY_MANIFEST.name, store, base / "dist", base / "job-build", work)
    results["stages"] = {"build": build, "rows": stage_rows(build)}
    log(f"  {build.get('wall_s')} s, {len(build.get('ran', []))} steps ran" + (f" — {build['error']}" if build.get("error") else ""))
    if not with_rebuild or build.get("error"):
        return
    log("rebuild: vision_encoder recipe weight_only_wi8_afp32 → dynamic_wi8_afp32, same store …")
    again = run_build(project / "manifests" / "vision-recipe.yaml", store, base / "dist-vision", base / "job-rebuild", work)
    results["rebuild"] = {
        "change": "targets.bundle.quantization.vision_encoder.recipe: weight_only_wi8_afp32 → dynamic_wi8_afp32",
        "build": again, "rows": stage_rows(again),
        "export_text_retraced": "bundle.export_text" in again.get("ran", []),
        "export_vision_retraced": "bundle.export_vision" in again.get("ran", []),
        "fresh_build_wall_s": build.get("wall_s"),
    }
    log(f"  {again.get('wall_s')} s; ran: {', '.join(again.get('ran', []))}" + (f" — {again['error']}" if again.get("error") else ""))


def section_overhead(work: Path, results: dict, repeats: int) -> None:
    base = work / "overhead"
    shutil.rmtree(base, ignore_errors=True)
    logs = base / "logs"
    logs.mkdir(parents=True)
    manifest_data = text_float_manifest()
    project = _project(base / "project", {"bench-text-float.yaml": manifest_data})
    bundle = manifest_data["targets"]["bundle"]
    prefill = ",".join(str(length) for length in bundle["prefill_lengths"])
    litert_torch = str(Path(sys.executable).with_name("litert-torch"))
    env = _env(work)
    runs: dict[str, list[dict]] = {"modelforge": [], "export_hf": []}
    hashes: dict[str, set] = {"modelforge": set(), "export_hf": set()}

    def modelforge(index: int) -> dict:
        store, out = base / f"store-{index}", base / f"dist-{index}"
        command = [sys.executable, "-m", "modelforge.cli", "build", str(project / "manifests" / "bench-text-float.yaml"),
                   "--store", str(store), "--out", str(out)]
        item = timed(command, logs, f"modelforge-{index}", env, cwd=project)
        found = _export_output(project, store, "model.tflite")
        hashes["modelforge"].add(found)
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        return item

    def export_hf(index: int) -> dict:
        out = base / f"export_hf-{index}"
        command = [litert_torch, "export_hf", f"--model={TINY}", f"--output_dir={out}", "--task=text_generation",
                   f"--prefill_lengths={prefill}", f"--cache_length={bundle['cache_length']}", "--quantization_recipe=none",
                   "--bundle_litert_lm=False", "--keep_temporary_files=True"]
        item = timed(command, logs, f"export_hf-{index}", env, cwd=base)
        hashes["export_hf"].add(_sha256(out / "model.tflite"))
        shutil.rmtree(out, ignore_errors=True)
        return item

    methods = {"modelforge": modelforge, "export_hf": export_hf}
    for index in range(repeats):
        order = ("modelforge", "export_hf") if index % 2 == 0 else ("export_hf", "modelforge")
        for name in order:
            log(f"overhead: {name} run {index + 1}/{repeats} …")
            runs[name].append(methods[name](index))
            log(f"  {runs[name][-1]['wall_s']} s (rc {runs[name][-1]['rc']})")
    median = lambda name, key: statistics.median(r[key] for r in runs[name]) if runs[name] and all(r[key] is not None for r in runs[name]) else None  # noqa: E731
    mf, direct = median("modelforge", "wall_s"), median("export_hf", "wall_s")
    step = lambda name: statistics.median(r["steps_s"].get(name, 0.0) for r in runs["modelforge"])  # noqa: E731
    export_step = step("bundle.export_text")
    others = step("bundle.metadata") + step("bundle.package")
    results["overhead"] = {
        "manifest": manifest_data,
        "export_hf_command": runs["export_hf"][0]["command"] if runs["export_hf"] else None,
        "runs": runs,
        "median_wall_s": {"modelforge": mf, "export_hf": direct},
        "median_peak_rss_bytes": {"modelforge": median("modelforge", "peak_rss_bytes"), "export_hf": median("export_hf", "peak_rss_bytes")},
        "median_step_s": {"bundle.export_text": export_step, "bundle.metadata": step("bundle.metadata"), "bundle.package": step("bundle.package")},
        "overhead": round(mf / direct - 1, 4) if mf and direct else None,
        "overhead_export_step": round(export_step / direct - 1, 4) if export_step and direct else None,
        "overhead_without_packaging": round((mf - others) / direct - 1, 4) if mf and direct else None,
        "model_tflite_identical": len(hashes["modelforge"]) == 1 and hashes["modelforge"] == hashes["export_hf"] and None not in hashes["modelforge"],
        "model_tflite_sha256": sorted(h for h in hashes["modelforge"] | hashes["export_hf"] if h),
    }


def _export_output(project: Path, store: Path, file: str) -> str | None:
    """sha256 of an export_text output, from the lock's step key and the store's record."""
    import yaml

    from modelforge.store import Store

    lock = project / "lock" / "bench-text-float.lock"
    if not lock.exists():
        return None
    key = yaml.safe_load(lock.read_text())["steps"]["bundle.export_text"]["key"]
    opened = Store(store)
    try:
        record = opened.get_record(key)
        return record.outputs[file].sha256 if record and file in record.outputs else None
    finally:
        opened.close()


def section_memory(work: Path, results: dict, names: list[str]) -> None:
    import numpy as np

    from modelforge import api, memory

    base = work / "memory"
    rows = []
    for name in names:
        checkpoint = ensure_checkpoint(name, work)
        project = _project(base / name / "project", {"bench-memory.yaml": memory_manifest()}, source=checkpoint)
        manifest = project / "manifests" / "bench-memory.yaml"
        report = api.plan(manifest, store_dir=base / name / "store")
        predicted = dict(report.plan.facts.get("memory", {}))
        counts = parameter_counts(checkpoint)
        log(f"memory: {name} (text {counts['text'] / 1e6:.2f} M, vision {counts['vision'] / 1e6:.2f} M parameters) …")
        build = run_build(manifest, base / name / "store", base / name / "dist", base / name / "job", work)
        if build.get("error"):
            log(f"  failed: {build['error']}")
        for part in ("text", "vision"):
            step = f"bundle.export_{part}"
            measured = build.get("measurements", {}).get(step, {})
            row = {
                "checkpoint": name, "part": part, "parameters": counts[part], "loaded_parameters": counts["total"],
                "peak_rss_bytes": measured.get("peak_rss_bytes"), "seconds": measured.get("seconds"),
                "wall_s": build.get("steps", {}).get(step, {}).get("wall_s"),
                "predicted_bytes": predicted.get(step),
            }
            if row["peak_rss_bytes"] and row["predicted_bytes"]:
                row["error"] = round(row["predicted_bytes"] / row["peak_rss_bytes"] - 1, 4)
            rows.append(row)
            log(f"  {part}: {(row['peak_rss_bytes'] or 0) / 2**20:.0f} MiB measured, {(row['predicted_bytes'] or 0) / 2**20:.0f} MiB predicted, {row['seconds']} s")
        shutil.rmtree(base / name / "store", ignore_errors=True)
        shutil.rmtree(base / name / "dist", ignore_errors=True)
    fits = {}
    for part in ("text", "vision"):
        points = [row for row in rows if row["part"] == part and row["peak_rss_bytes"]]
        if len(points) < 3:
            continue
        traced = np.array([4.0 * row["parameters"] for row in points])
        loaded = np.array([4.0 * row["loaded_parameters"] for row in points])
        peak = np.array([float(row["peak_rss_bytes"]) for row in points])
        design = np.stack([np.ones_like(traced), traced, loaded], axis=1)
        (base_bytes, factor, loaded_factor), *_ = np.linalg.lstsq(design, peak, rcond=None)
        fitted = design @ np.array([base_bytes, factor, loaded_factor])
        fits[part] = {
            "model": "peak = base + factor × traced_f32_bytes + loaded_factor × loaded_f32_bytes",
            "base_bytes": int(round(base_bytes)), "factor": round(float(factor), 3), "loaded_factor": round(float(loaded_factor), 3),
            "max_abs_error": round(float(np.max(np.abs(fitted / peak - 1))), 4),
            "points": len(points),
        }
    results["memory"] = {
        "rows": rows, "fit_this_run": fits, "medgemma_4b": medgemma_prediction(),
        "recorded": {"date": memory.MEASURED_ON, "machine": memory.MEASURED_MACHINE, "constants": memory.constants(),
                     "stated_error": memory.STATED_ERROR},
        "max_abs_error_of_recorded": max((abs(row["error"]) for row in rows if "error" in row), default=None),
    }


def medgemma_prediction() -> dict | None:
    """What the plan of manifests/medgemma-1.5-litertlm.yaml (its litertlm target) predicts, from
    the reference tensor list of the real checkpoint (no weights), and whether this machine would
    build it."""
    from modelforge import memory
    from modelforge.errors import PlanError
    from modelforge.manifest import load_manifest, manifest_digest
    from modelforge.planner import make_plan
    from modelforge.testing.reference import reference_facts

    try:
        facts = reference_facts()
    except OSError:
        return None  # no reference data in the package
    manifest = load_manifest(ROOT / "manifests" / "medgemma-1.5-litertlm.yaml")
    manifest = manifest.model_copy(update={"targets": {n: t for n, t in manifest.targets.items() if t.kind == "litertlm"}})
    predicted = dict(make_plan(manifest, facts, "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest)).facts["memory"])
    try:
        memory.refuse_if_too_large(predicted, predicted)  # as `modelforge build` would, here
        refusal = None
    except PlanError as error:
        refusal = str(error)
    return {"predicted_bytes": predicted, "machine_memory_bytes": memory.machine_memory(), "refusal_here": refusal}


# --------------------------------------------------------------------------- machine, versions
def machine() -> dict:
    cpu, ram = platform.processor() or "unknown", None
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
        ram = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (OSError, StopIteration, ValueError):
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "ram_gib": ram, "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "loadavg_1m": round(os.getloadavg()[0], 2)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("modelforge", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "litert-lm-builder", "torch", "transformers", "tensorflow-cpu"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:
        found["git"] = head.stdout.strip() + ("+dirty src" if dirty.stdout.strip() else "")
    return found


# --------------------------------------------------------------------------- reporting
def _mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:.0f}"


def _s(value, digits=2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "—" if value is None else f"{value * 100:+.1f} %"


def tables(result: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) for every table, shared by the text and markdown renderings."""
    out = []
    if "stages" in result:
        rows = [[r["step"], r["kind"], _s(r["wall_s"]), _s(r["worker_s"]), _mib(r["peak_rss_bytes"]), r["rss_source"]] for r in result["stages"]["rows"]]
        rows.append(["(whole build)", "", _s(result["stages"]["build"].get("wall_s")), "", "", ""])
        out.append(("Stages of a fresh build of tiny-medgemma-litertlm", ["step", "kind", "wall s", "worker s", "peak RSS MiB", "RSS from"], rows))
    if "rebuild" in result:
        rebuild = result["rebuild"]
        rows = [[r["step"], _s(r["wall_s"]), _mib(r["peak_rss_bytes"])] for r in rebuild["rows"]]
        rows.append(["(whole build)", _s(rebuild["build"].get("wall_s")), ""])
        out.append((f"Rebuild after changing only the vision recipe ({rebuild['change']}); cached: "
                    f"{', '.join(rebuild['build'].get('cached', []))}", ["step that ran", "wall s", "peak RSS MiB"], rows))
    if "overhead" in result:
        o = result["overhead"]
        rows = []
        for name in ("modelforge", "export_hf"):
            walls = ", ".join(_s(r["wall_s"], 1) for r in o["runs"][name])
            rows.append([name, _s(o["median_wall_s"][name]), walls, _mib(o["median_peak_rss_bytes"][name])])
        out.append(("modelforge build vs litert-torch export_hf (text_generation, float, same lengths; medians)",
                    ["method", "median wall s", "runs (wall s)", "median peak RSS MiB (tree)"], rows))
        rows = [["modelforge build / export_hf − 1", _pct(o["overhead"])],
                ["… minus the metadata and package steps", _pct(o["overhead_without_packaging"])],
                ["export_text step alone / export_hf − 1", _pct(o["overhead_export_step"])],
                ["median seconds of the modelforge steps", ", ".join(f"{k} {_s(v)}" for k, v in o["median_step_s"].items())],
                ["model.tflite byte-identical to export_hf's", str(o["model_tflite_identical"])]]
        out.append(("Overhead (same run)", ["ratio", "value"], rows))
    if "memory" in result:
        m = result["memory"]
        rows = [[r["checkpoint"], r["part"], f"{r['parameters'] / 1e6:.2f}", f"{r['loaded_parameters'] / 1e6:.2f}", _mib(r["peak_rss_bytes"]),
                 _mib(r["predicted_bytes"]), _pct(r.get("error")), _s(r["seconds"], 1)] for r in m["rows"]]
        out.append(("Export peak RSS vs parameters (prediction: src/modelforge/memory.py constants)",
                    ["checkpoint", "part", "part params M", "loaded params M", "peak RSS MiB", "predicted MiB", "error", "worker s"], rows))
        rows = [[part, f"{fit['base_bytes'] / 2**20:.0f}", f"{fit['factor']:.2f}", f"{fit['loaded_factor']:.2f}", _pct(fit["max_abs_error"])]
                for part, fit in m["fit_this_run"].items()]
        out.append(("Least-squares fit of this run: peak = base + factor × part f32 bytes + loaded_factor × loaded f32 bytes",
                    ["part", "base MiB", "factor", "loaded_factor", "max abs error"], rows))
        if m.get("medgemma_4b"):
            g = m["medgemma_4b"]
            rows = [[step, f"{peak / 2**30:.1f}"] for step, peak in g["predicted_bytes"].items()]
            rows.append(["this machine's memory", f"{g['machine_memory_bytes'] / 2**30:.1f}"])
            rows.append(["`modelforge build` here says", g["refusal_here"] or "(builds)"])
            out.append(("Predicted for manifests/medgemma-1.5-litertlm.yaml (3.88 B text, 0.42 B vision parameters; reference tensor list)",
                        ["export step", "predicted peak GiB"], rows))
    return out


def render_text(result: dict) -> str:
    m = result["machine"]
    machine_line = f"machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}; load {m.get('loadavg_1m_at_start')} → {m['loadavg_1m']}"
    return "\n".join([machine_line, *text_tables(tables(result), result["targets"])])


def render_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"<!-- {MARK} begin -->", "## litertlm (tiny model, synthetic sizes)", "",
             f"- date: {result['date']}",
             f"- machine: {m['nproc']} cores, {m['ram_gib']} GiB RAM, {m['cpu']}, Linux {m['kernel']}, Python {m['python']}; "
             f"1-min load average {m.get('loadavg_1m_at_start')} at start, {m['loadavg_1m']} at end (the machine is shared)",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
             f"- environment of every command: {', '.join(f'{k}={v}' for k, v in ENV.items())}; sections run one at a time"]
    for title, headers, rows in tables(result):
        lines += ["", f"{title}:", "", "| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines += ["", *targets_table(result["targets"])]
    lines.append(f"<!-- {MARK} end -->")
    return "\n".join(lines) + "\n"


def update_markdown(path: Path, section: str) -> None:
    replace_section(path, MARK, section)


def targets(result: dict) -> list[dict]:
    found = []
    if "overhead" in result and result["overhead"]["overhead"] is not None:
        value = result["overhead"]["overhead"]
        found.append({"target": f"modelforge overhead vs export_hf <= {OVERHEAD_LIMIT:.0%}", "value": _pct(value), "passed": value <= OVERHEAD_LIMIT})
    if "rebuild" in result:
        found.append({"target": "vision-recipe rebuild does not re-trace the text decoder", "value": f"export_text ran: {result['rebuild']['export_text_retraced']}",
                      "passed": not result["rebuild"]["export_text_retraced"] and not result["rebuild"]["build"].get("error")})
    if "memory" in result and result["memory"]["max_abs_error_of_recorded"] is not None:
        value, stated = result["memory"]["max_abs_error_of_recorded"], result["memory"]["recorded"]["stated_error"]
        found.append({"target": f"recorded prediction within its stated error ({stated:.0%})", "value": _pct(value), "passed": value <= stated})
    return found


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--driver"]:
        return driver(Path(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "litertlm", help="scratch directory (default bench/out/litertlm/, gitignored)")
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "litertlm.json")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md", help="markdown file whose litertlm section is replaced")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each method in the overhead comparison (alternating)")
    parser.add_argument("--checkpoints", default=",".join(CHECKPOINTS), help=f"memory section: subset of {','.join(CHECKPOINTS)}")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS) or set(args.checkpoints.split(",")) - set(CHECKPOINTS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "litertlm", "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
                    "machine": machine(), "versions": versions(), "sections": sections}
    result["machine"]["loadavg_1m_at_start"] = result["machine"].pop("loadavg_1m")
    if "stages" in sections or "rebuild" in sections:
        section_stages(work, result, "rebuild" in sections)
    if "overhead" in sections:
        section_overhead(work, result, args.repeats)
    if "memory" in sections:
        section_memory(work, result, [name for name in CHECKPOINTS if name in args.checkpoints.split(",")])
    result["machine"]["loadavg_1m"] = round(os.getloadavg()[0], 2)
    result["targets"] = targets(result)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    update_markdown(args.markdown, render_markdown(result))
    print(render_text(result))
    print(f"\nwrote {args.results} and {args.markdown}")
    failed = [name for name in ("stages", "rebuild") if result.get(name, {}).get("build", {}).get("error")]
    failed += [f"overhead {name}" for name, runs in result.get("overhead", {}).get("runs", {}).items() if any(r["rc"] for r in runs)]
    failed += [f"memory {r['checkpoint']} {r['part']}" for r in result.get("memory", {}).get("rows", []) if not r["peak_rss_bytes"]]
    if failed:
        log(f"error: {', '.join(failed)} failed; see {args.results}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
