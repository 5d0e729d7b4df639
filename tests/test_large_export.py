"""Byte reproducibility above 2 GB (issue 9): a text export whose .tflite keeps its weights after the
flatbuffer (MedGemma's layer shapes, one decoder layer, a 180,000-token vocabulary: 0.56 B text
parameters, a 2.2 GB graph) is built twice in fresh stores and must give the same bytes. The
second build runs with glibc's mmap threshold raised, so the worker's tensors sit at other
addresses: litert-torch 0.10.0's converter orders the external buffers by address, so without
tflite_layout.normalize the two graphs differ. Needs ~5 GB of RAM, ~6 GB of disk, minutes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelforge import api
from modelforge.steps.litert import tflite_layout
from modelforge.testing.gemma3_checkpoint import write_checkpoint

pytestmark = pytest.mark.slow

MANIFEST = """\
name: large-text
description: One MedGemma-shaped decoder layer with a large vocabulary, exported as a >2 GB text graph.
source: {kind: local, path: ../checkpoint}
components:
  text_decoder: {match: ["language_model.*"], description: Gemma 3 decoder.}
  vision_encoder: {match: ["vision_tower.*"], description: SigLIP.}
  projector: {match: ["multi_modal_projector.*"], description: Projector.}
weights:
  - {kind: drop, components: [vision_encoder, projector]}
files:
  carry: [tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja]
  drop: [added_tokens.json, generation_config.json, preprocessor_config.json, processor_config.json]
targets:
  bundle:
    kind: litertlm
    task: text_generation
    file: large.litertlm
    components: [text_decoder]
    prefill_lengths: [8]
    cache_length: 32
    metadata:
      start_token: "<bos>"
      stop_tokens: ["<eos>", "<end_of_turn>"]
      sampler: {type: top_k, k: 1, p: 1.0, temperature: 1.0}
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _graph(manifest: Path, store: Path) -> Path:
    from modelforge.plan import compute_keys
    from modelforge.store import Store

    report = api.plan(manifest, store_dir=store)
    key = compute_keys(report.plan, report.toolchain)["bundle.export_text"]["key"]
    return Store(store).object_path(Store(store).get_record(key).outputs["model.tflite"].sha256)


def test_a_graph_over_2_gb_is_byte_identical_across_builds(tmp_path, monkeypatch):
    stamp = write_checkpoint(tmp_path / "checkpoint", text_layers=1, vision_layers=1, vocabulary=180_000)
    assert 0.5e9 < stamp["text"] < 0.6e9
    (tmp_path / "project" / "manifests").mkdir(parents=True)
    manifest = tmp_path / "project" / "manifests" / "large.yaml"
    manifest.write_text(MANIFEST.replace("../checkpoint", str(tmp_path / "checkpoint")))
    hashes, layouts = [], []
    for run, tunables in enumerate((None, "glibc.malloc.mmap_threshold=33554432")):
        if tunables:
            monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        store = tmp_path / f"store{run}"
        result = api.build(manifest, store_dir=store, out=tmp_path / f"out{run}")
        graph = _graph(manifest, store)
        assert graph.stat().st_size > 2 * 2**30  # really the external-buffer format
        with open(graph, "rb") as handle:
            buffers = tflite_layout.external_buffers(handle.read(min(graph.stat().st_size, 64 << 20)))
        assert buffers and [offset for _, offset, _, _ in buffers] == sorted(offset for _, offset, _, _ in buffers)
        layouts.append(json.dumps(buffers))
        hashes.append((_sha256(graph), _sha256(result.out_dir / "bundle" / "large.litertlm")))
    assert layouts[0] == layouts[1]
    assert hashes[0] == hashes[1]
