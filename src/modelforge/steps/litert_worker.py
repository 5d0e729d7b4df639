"""Runs one litert-torch / ai-edge-quantizer / ai-edge-litert job in a fresh interpreter, started by
the litert steps with PYTHONHASHSEED=0: litert-torch and transformers iterate Python sets while
tracing, so only a fixed hash seed gives byte-identical graphs. A separate process also keeps
TensorFlow and torch out of modelforge's own process and lets the step measure peak memory.

Usage: python -m modelforge.steps.litert_worker REQUEST.json   (writes RESULT.json beside it)
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def _resolve(root, dotted: str):
    node = root
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise LookupError(f"the model has no module at {dotted!r} (stopped at {part!r})")
        node = getattr(node, part)
    return node


def apply_hoists(model, hoists: list[dict]) -> dict:
    """Lift nested modules to top-level attributes; returns what ended up where, for the report."""
    import torch

    report = {}
    for hoist in hoists:
        module = _resolve(model, hoist["path"])
        if not isinstance(module, torch.nn.Module):
            raise LookupError(f"hoist {hoist['name']!r}: {hoist['path']!r} is a {type(module).__name__}, not a module")
        setattr(model, hoist["to"], module)
        report[hoist["name"]] = {
            "path": hoist["path"],
            "to": hoist["to"],
            "class": type(getattr(model, hoist["to"])).__name__,
            "same_object": getattr(model, hoist["to"]) is module,
        }
    return report


def export(request: dict) -> dict:
    from litert_torch.generative.export_hf.core import export_lib, exportable_module

    work_dir = request["work_dir"]
    multimodal = request["task"] == "image_text_to_text"
    config = exportable_module.ExportableModuleConfig(
        model=request["checkpoint"],
        output_dir=work_dir,
        work_dir=work_dir,
        task=request["task"],
        prefill_lengths=list(request["prefill_lengths"]),
        cache_length=request["cache_length"],
        quantization_recipe="none",
        vision_encoder_quantization_recipe="none",
        bundle_litert_lm=False,
        externalize_embedder=multimodal,
        single_token_embedder=multimodal,
        export_vision_encoder=multimodal and request["part"] == "vision",
        trust_remote_code=False,
    )
    source = export_lib.load_model(request["checkpoint"], config, trust_remote_code=False, task=request["task"])
    hoists = apply_hoists(source.model, request.get("hoists", []))
    image_input = _take_runtime_pixels(source, request) if request["part"] == "vision" else None
    config = export_lib.update_export_config(config, source)
    artifacts = export_lib.ExportedModelArtifacts()
    if request["part"] == "text":
        tasks = ([export_lib.export_embedder_model] if multimodal else []) + [export_lib.export_text_prefill_decode_model]
    else:
        tasks = [export_lib.export_vision_encoder_models]
    for task in tasks:
        artifacts = task(source, config, artifacts)
    files = {
        "model.tflite": artifacts.prefill_decode_model_path,
        "embedder.tflite": artifacts.embedder_model_path,
        "vision_encoder.tflite": artifacts.vision_encoder_model_path,
        "vision_adapter.tflite": artifacts.vision_adapter_model_path,
    }
    result = {"files": {name: path for name, path in files.items() if path}, "hoists": hoists}
    if image_input is not None:
        result["image_input"] = image_input
    return result


def _take_runtime_pixels(source, request: dict) -> dict | None:
    """Vision export, image_input 'runtime': the graph takes the LiteRT-LM runtime's [0, 1] pixels
    and applies the source processor's normalization itself (see image_input.py)."""
    if request.get("image_input") != "runtime":
        return None
    from modelforge.steps.image_input import normalize_runtime_pixels, processor_affine

    affine = processor_affine(source.image_processor)
    normalize_runtime_pixels(source.model.model.vision_tower, affine)
    return {"pixel_range": [0.0, 1.0], **affine}


def quantize(request: dict) -> dict:
    from ai_edge_quantizer import quantizer, recipe as recipes

    plan = list(getattr(recipes, request["recipe"])())
    for override in request.get("overrides", []):
        entries = getattr(recipes, override["recipe"])()
        for entry in entries:
            entry = dict(entry)
            entry["regex"] = override["regex"]
            plan.append(entry)
    outputs = {}
    for name in request["files"]:
        job = quantizer.Quantizer(str(Path(request["input_dir"]) / name))
        job.load_quantization_recipe(plan)
        target = Path(request["work_dir"]) / name
        job.quantize().export_model(str(target), overwrite=True)
        outputs[name] = str(target)
    return {"files": outputs}


def parity(request: dict) -> dict:
    from modelforge.steps.parity_impl import run_parity

    return run_parity(request)


ACTIONS = {"export": export, "quantize": quantize, "parity": parity}


def _die_with_parent() -> None:
    """A worker outlives a SIGKILLed build otherwise, burning CPU on a job nobody will collect."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = os.environ.get("MODELFORGE_PARENT_PID")
    if parent and os.getppid() != int(parent):  # the parent died before prctl took effect
        os._exit(1)


def main() -> None:
    _die_with_parent()
    request_path = Path(sys.argv[1])
    request = json.loads(request_path.read_text())
    started = time.monotonic()
    result = ACTIONS[request["action"]](request)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    request_path.with_name("result.json").write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
    # Tearing down torch and TensorFlow takes seconds and does nothing for us: the result is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch(request: dict, scratch: Path, progress, label: str) -> dict:
    """Run one job in a child interpreter with PYTHONHASHSEED=0; its log is kept for the error.
    Called by the steps; imports nothing heavy here."""
    import subprocess
    import threading

    from modelforge.errors import StepFailed

    job = scratch / f"job-{request['action']}"
    job.mkdir(parents=True, exist_ok=True)
    (job / "request.json").write_text(json.dumps(request, indent=1, sort_keys=True))
    env = {**os.environ, "MODELFORGE_PARENT_PID": str(os.getpid()), "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = job / "log.txt"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", "modelforge.steps.litert_worker", str(job / "request.json")], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=job)
        stop = threading.Event()

        def tick() -> None:  # long exports say they are alive
            while not stop.wait(1.0):
                progress(int(time.monotonic() - started), 0, f"{label}: {int(time.monotonic() - started)} s")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            code = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            stop.set()
    if code != 0:
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-1:] or ["(no output)"]
        raise StepFailed(f"{label} failed (exit {code}): {tail[-1][:300]}")
    return json.loads((job / "result.json").read_text())


def run_job(context, request: dict, label: str) -> dict:
    """launch() for a step: the job's files become the step's outputs, its measurements the step's."""
    import shutil

    result = launch(request, context.scratch_dir, context.progress, label)
    for name, path in sorted(result.get("files", {}).items()):
        shutil.move(path, context.output(name))
    context.measurements.update({"seconds": result["seconds"], "peak_rss_bytes": result["peak_rss_bytes"]})
    return result
