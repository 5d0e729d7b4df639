"""The litert parity's interpreters (steps/parity_phases.py): they use the cores the process may run
on, or $OMP_NUM_THREADS where set, not ai_edge_litert's default of one thread (issue #26: at
MedGemma 4B the graphs phase ran on one core of two)."""

from __future__ import annotations

import os

from modelforge.steps import parity_phases


def test_the_interpreters_use_the_cores_unless_omp_num_threads_says_otherwise(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert parity_phases.interpreter_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert parity_phases.interpreter_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert parity_phases.interpreter_threads() == len(os.sched_getaffinity(0))
