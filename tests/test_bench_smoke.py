"""The text-only benchmark runs end to end at a tiny scale (no timing assertions: tests never
assert on wall-clock time; bench/RESULTS.md holds the figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "bench_text_only.py"


def test_bench_text_only_runs_at_tiny_scale_and_the_build_verifies(tmp_path):
    pytest.importorskip("numpy")
    pytest.importorskip("torch")  # the naive method loads shards with safetensors.torch
    results, markdown = tmp_path / "results.json", tmp_path / "RESULTS.md"
    committed_lock = (ROOT / "lock" / "medgemma-1.5-text-only.lock").read_bytes()
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--scale", "0.001", "--work", str(tmp_path / "work"),
         "--results", str(results), "--markdown", str(markdown), "--cache", "warm", "--pairs", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    data = json.loads(results.read_text())
    expected = {"cp", "naive", "modelforge_build", "modelforge_noop", "modelforge_noop_warm", "modelforge_verify", "sha256sum"}
    assert expected <= set(data["methods"])
    for name in expected:
        method = data["methods"][name]
        assert method["rc"] == 0, (name, method["stderr_tail"])
        assert method["wall_s"] >= 0 and method["peak_rss_mb"] is not None
    checks = data["checks"]
    assert checks["build_ok"] and checks["verify_ok"] and checks["sha256sum_agrees_with_lock"]
    assert checks["noop_steps_ran"] == 0
    assert checks["output_tensors"] == checks["output_tensors_expected"] == 444
    assert checks["naive_and_modelforge_same_tensors"]
    assert data["checkpoint"]["tensors"] == 883
    assert {"modelforge_over_cp", "modelforge_over_naive", "verify_over_sha256sum", "noop_s"} <= set(data["ratios"])
    assert len(data["targets"]) == 5  # the fifth: the median of the paired cp/build runs
    pairs = data["pairs"]
    assert len(pairs["runs"]) == 2 and [row["first"] for row in pairs["runs"]] == ["cp", "build"]
    assert all(row["build"]["rc"] == 0 and row["cp"]["rc"] == 0 for row in pairs["runs"])
    assert data["ratios"]["modelforge_over_cp_paired_median"] == pairs["median"] is not None
    floor = data["floor"]  # the work a build cannot skip, measured in the same run
    assert floor["sha256_gb_s"] > 0 and floor["cores"] >= 1 and floor["floor_s"] > 0
    assert floor["hashed_gb"] > data["methods"]["modelforge_build"]["bytes_written"] / 1e9  # the source's bytes too
    assert data["ratios"]["cpu_floor_over_cp"] == floor["floor_over_cp"]
    assert "<!-- bench:text_only scale=0.001 begin -->" in markdown.read_text()
    assert "CPU floor" in markdown.read_text()
    # Nothing is left in the repository: the committed lock untouched, no dist.
    assert (ROOT / "lock" / "medgemma-1.5-text-only.lock").read_bytes() == committed_lock
