"""The child processes the gguf steps run their heavy work in: the pinned converter script, llama.cpp's
quantizer and the parity runs (torch and llama.cpp side by side). Each child gets PYTHONHASHSEED=0, an
offline Hub, its own log (its last line becomes the error) and is measured with os.wait4, so neither
torch nor llama.cpp ever loads into modelforge's own process. Imports only the stdlib and
modelforge.errors at module level.

Usage: python -m modelforge.steps.gguf.worker REQUEST.json   (writes result.json beside it)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed

MODULE = "modelforge.steps.gguf.worker"


def child_environment() -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MODELFORGE_PARENT_PID": str(os.getpid())}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, never an installed gguf
    return env


def run_child(argv: list[str], job: Path, label: str, progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """Run argv in `job` (its log in job/log.txt); returns seconds and the child's peak RSS. A non-zero
    exit raises StepFailed with the log's last line."""
    job.mkdir(parents=True, exist_ok=True)
    log_path = job / "log.txt"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_environment(), cwd=job)
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(1.0):
                progress(int(time.monotonic() - started), 0, f"{label}: {int(time.monotonic() - started)} s")

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)
        except BaseException:
            child.kill()
            child.wait()
            raise
        finally:
            stop.set()
    if child.returncode != 0:
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()] or ["(no output)"]
        raise StepFailed(f"{label} failed (exit {child.returncode}): {lines[-1][:300]}; the full log is {log_path}")
    return {"seconds": round(time.monotonic() - started, 3), "peak_rss_bytes": usage.ru_maxrss * 1024}


def launch(request: dict, job: Path, label: str, progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """One action of this module in a child interpreter; returns its result.json plus the measurements."""
    job.mkdir(parents=True, exist_ok=True)
    (job / "request.json").write_text(json.dumps(request, indent=1, sort_keys=True))
    measured = run_child([sys.executable, "-m", MODULE, str(job / "request.json")], job, label, progress)
    return {**json.loads((job / "result.json").read_text()), **measured}


def _actions() -> dict:
    from modelforge.steps.gguf import parity, quantize

    return {"quantize": quantize.quantize_in_child, "parity": parity.parity_in_child}


def main() -> None:
    request_path = Path(sys.argv[1])
    request = json.loads(request_path.read_text())
    result = _actions()[request["action"]](request)
    request_path.with_name("result.json").write_text(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # tearing down torch and llama.cpp takes time and does nothing for us
