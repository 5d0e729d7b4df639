"""How the runtimes attend inside Gemma 3's image block, on the shared tiny litertlm build
(bench/bench_image_attention.py --quick; docs/targets/litertlm.md has the full measurement). Pins the
facts behind shipping the bundle causal: the exported graph attends as transformers does when given
transformers' mask; the shipped bundle and the onnx graphs answer as causal PyTorch, not as its
default; and LiteRT-LM 0.18.1's ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL lets the image block see
<end_of_image>. When a LiteRT-LM release stops at the block, the last assertion fails: then write
the executor metadata (steps/litert/metadata.py) and gate on the bidirectional reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_runtimes_attend_causally_and_litert_lms_flag_reaches_end_of_image(litertlm_build, litertlm_store, tmp_path):
    results = tmp_path / "image_attention.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_image_attention.py"), "--quick", "--store", str(litertlm_store),
         "--lock", str(litertlm_build.project.lock_path), "--work", str(tmp_path / "work"), "--results", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    data = json.loads(results.read_text())
    runs, answers = data["runs"], data["answers"]
    assert data["references_identical_answers"] < answers  # the images make the two references differ
    assert runs["float graph, transformers' image block"]["bidirectional"]["identical_answers"] == answers
    for name in ("litert_lm float", "onnxruntime float (onnx target)"):
        assert runs[name]["causal"]["identical_answers"] == answers, name
        assert runs[name]["bidirectional"]["identical_answers"] < answers, name
    flagged = data["litert_lm float+vision_bidirectional against the graph"]
    assert flagged["graph, image block to <end_of_image>"]["identical_answers"] == answers
    assert runs["litert_lm float+vision_bidirectional"]["bidirectional"]["identical_answers"] < answers
