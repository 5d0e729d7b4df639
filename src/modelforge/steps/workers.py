"""The worker plumbing every toolchain shares: a step's heavy job runs in a child interpreter
(`python -m <toolchain>.worker REQUEST.json`) with PYTHONHASHSEED=0 (litert-torch and transformers
iterate Python sets while tracing, so only a fixed seed gives byte-identical graphs), its peak
anonymous memory measured, its log kept for the error, and it dies with its parent. A separate
process also keeps torch, TensorFlow and onnxruntime out of modelforge's own process.

Owns launch()/run_job() (the step side) and main()/serve() (the worker side). Imports only the
standard library, `errors` and `faults.fault_point` (the safety tests' hook), never a model toolchain.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

from modelforge.faults import fault_point  # the safety tests' hook; imports nothing heavy


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


class AnonymousPeak:
    """The largest RssAnon of this process, sampled every 50 ms: the memory a job really takes
    (ru_maxrss also counts pages of mapped checkpoint and .tflite files, which the kernel can drop)."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def sample() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.sample())


def main(actions: dict) -> None:
    """A worker module's entry point: `python -m MODULE REQUEST.json` runs actions[request["action"]]."""
    _die_with_parent()
    request_path = Path(sys.argv[1])
    request = json.loads(request_path.read_text())
    fault_point(f"worker/{request['action']}")  # the safety tests hold a worker here (MODELFORGE_PAUSE_AT)
    anonymous = AnonymousPeak()
    started = time.monotonic()
    result = actions[request["action"]](request)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_anonymous_bytes"] = anonymous.stop()
    request_path.with_name("result.json").write_text(json.dumps(result, indent=1, sort_keys=True))


def launch(request: dict, scratch: Path, progress, label: str, module: str) -> dict:
    """Run one job in a child interpreter (`python -m module`, a worker whose main() this is) with
    PYTHONHASHSEED=0; its log is kept for the error. Called by the steps; imports nothing heavy here."""
    import subprocess
    import threading

    from modelforge.errors import StepFailed

    job = scratch / "-".join(["job", request["action"], *([request["phase"]] if "phase" in request else [])])
    job.mkdir(parents=True, exist_ok=True)
    (job / "request.json").write_text(json.dumps(request, indent=1, sort_keys=True))
    env = {**os.environ, "MODELFORGE_PARENT_PID": str(os.getpid()), "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_path = job / "log.txt"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        child = subprocess.Popen([sys.executable, "-m", module, str(job / "request.json")], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=job)
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


def job_request(context, action: str, **fields) -> dict:
    """A worker request for `action`, with an empty work directory in the step's scratch space for
    the job's files (run_job moves them into the step's outputs)."""
    work = context.scratch_dir / action
    work.mkdir()
    return {"action": action, "work_dir": str(work), **fields}


def run_job(context, request: dict, label: str, module: str) -> dict:
    """launch() for a step: the job's files become the step's outputs, its measurements the step's."""
    import shutil

    result = launch(request, context.scratch_dir, context.progress, label, module)
    for name, path in sorted(result.get("files", {}).items()):
        shutil.move(path, context.output(name))
    context.measurements.update({key: result[key] for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")})
    return result


def serve(actions: dict) -> None:
    """Run main() and leave at once: tearing down torch and TensorFlow takes seconds and does nothing
    for us, the result is written."""
    main(actions)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
