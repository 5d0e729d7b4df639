"""Fault injection for the safety tests (tests/safety): named points where a process can be
killed, failed with ENOSPC, paused or traced, driven by environment variables and free when they
are unset. Imports only the standard library."""

from __future__ import annotations

import errno
import fnmatch
import os
import signal
import time


_fault_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    """A named moment where the safety tests (tests/safety) stop or slow this process, from the
    environment: MODELFORGE_KILL_AT="glob:N" sends SIGKILL to this process at the Nth point whose
    name matches glob; MODELFORGE_FAIL_AT="glob:N" raises ENOSPC there instead;
    MODELFORGE_PAUSE_AT="glob:seconds" sleeps at every match (to make concurrent builds overlap);
    MODELFORGE_FAULT_TRACE=file appends the name of every point reached. Unset, it costs four
    dictionary lookups."""
    kill, fail, pause, trace = (os.environ.get(f"MODELFORGE_{var}") for var in ("KILL_AT", "FAIL_AT", "PAUSE_AT", "FAULT_TRACE"))
    if trace:
        with open(trace, "a") as log:
            log.write(name + "\n")
    if pause:
        pattern, _, seconds = pause.rpartition(":")
        if fnmatch.fnmatchcase(name, pattern):
            time.sleep(float(seconds))
    for spec, action in ((kill, "kill"), (fail, "fail")):
        if not spec:
            continue
        pattern, _, nth = spec.rpartition(":")
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        _fault_counts[spec] = _fault_counts.get(spec, 0) + 1
        if str(_fault_counts[spec]) != nth:
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC) + f" (injected at {name})")
