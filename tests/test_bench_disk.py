"""bench_medgemma_4b's disk figures: the peak the build held counts a file hard-linked from out/
into the store once, as the disk holds it (the plan predicts dist/'s links at no bytes)."""

from __future__ import annotations

import os
import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from bench_medgemma_4b import DiskSampler, tree_bytes  # noqa: E402


def test_a_file_linked_into_out_counts_once_in_the_sampled_peak(tmp_path):
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    out.mkdir()
    (store / "object").write_bytes(os.urandom(1 << 20))
    os.link(store / "object", out / "model.litertlm")
    (out / "small.json").write_bytes(b"{}" * 2048)  # a copy: its own blocks
    held = sum(os.lstat(path).st_blocks * 512 for path in (store / "object", out / "small.json"))
    with DiskSampler([store, out], interval=0.05) as sampler:
        pass
    assert sampler.peak == held == tree_bytes(store, out, allocated=True)
    assert 1 << 20 <= held < 2 << 20
