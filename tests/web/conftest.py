"""Fixtures for the web-bundle tests: small fake inputs for the fast tests, and (session-scoped) a real
litert-torch export of the tiny fixture packed as a `.task` for the browser test."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelforge.web.layout import Variant, write_bundle
from modelforge.web.taskfile import gemma_params, write_task

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-medgemma"
WEB_DIR = ROOT / "web"


def fake_tflite(path: Path, size: int = 4096, seed: int = 0) -> Path:
    """Bytes with the TFLite file identifier at offset 4 (all write_task checks)."""
    body = bytes((i * 31 + seed) % 251 for i in range(size - 8))
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + body)
    return path


@pytest.fixture
def tokenizer_model() -> Path:
    return TINY / "tokenizer.model"


@pytest.fixture
def fake_runtime(tmp_path) -> dict[str, Path]:
    base = tmp_path / "runtime-src"
    base.mkdir()
    files = {
        "genai_bundle.mjs": b"export const FilesetResolver = {};\n",
        "genai_wasm_internal.js": b"self.ModuleFactory = null;\n",
        "genai_wasm_internal.wasm": b"\x00asm\x01\x00\x00\x00",
    }
    out = {}
    for name, data in files.items():
        (base / name).write_bytes(data)
        out[name] = base / name
    return out


@pytest.fixture
def small_task(tmp_path, tokenizer_model) -> Path:
    path = tmp_path / "small.task"
    write_task(path, tflite=fake_tflite(tmp_path / "g.tflite"), tokenizer=tokenizer_model, params=gemma_params())
    return path


@pytest.fixture
def small_bundle(tmp_path, small_task, fake_runtime) -> Path:
    """A bundle with fake runtime files and a fake (but well-formed) .task: for header/server tests."""
    out = tmp_path / "bundle"
    write_bundle(
        out,
        variants=[Variant(name="small", task=small_task, label="Small", max_tokens=64)],
        runtime=fake_runtime,
        title="Test bundle",
        runtime_version="0.0.0-test",
    )
    return out


# ---------------------------------------------------------------------------------------------
# The real thing: the .task files modelforge built from the tiny fixture (tests/conftest.py
# litertlm_build: litert-torch plain export, dynamic int8 and int4 weights).
# ---------------------------------------------------------------------------------------------

TINY_CACHE_LENGTH = 256  # cache_length of manifests/tiny-medgemma-litertlm.yaml


@pytest.fixture(scope="session")
def tiny_web_bundle(litertlm_build) -> Path:
    """The web_bundle target exactly as `modelforge build` wrote it."""
    return litertlm_build.out_dir / "web"


@pytest.fixture(scope="session")
def tiny_task(tiny_web_bundle) -> Path:
    """The int8 variant's .task from that bundle."""
    (task,) = sorted((tiny_web_bundle / "models").glob("tiny-int8-*.task"))
    return task
