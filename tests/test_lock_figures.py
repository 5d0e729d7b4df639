"""The lock is the same bytes on every machine: measurements enter it as bounds the noise cannot
move (figures.py), and a build whose outputs and facts are unchanged never rewrites it."""

from __future__ import annotations

import pytest

from modelforge.figures import lower_bound, pinned_facts, ratio_bound, stable_report, upper_bound

# Two runs of byte-identical graphs on one machine (issue 27): only the thread schedule differed.
RUN_A = {"onnx.parity": {"max_abs_logit": 7.486e-05, "mean_kl": 1.975e-11, "top1_agreement": 1.0, "vision_cosine": 1.0,
                         "greedy_identical_steps": [24, 24], "passed": True,
                         "thresholds": {"max_abs_logit": 0.01, "max_kl": None, "min_top1_agreement": 1.0, "min_vision_cosine": 0.999}},
         "web.parity.tiny-float": {"max_abs_logit": 0.0001688, "mean_kl": 5.224e-11, "vision_cosine": 0.9999999, "top1_agreement": 1.0}}
RUN_B = {"onnx.parity": RUN_A["onnx.parity"] | {"max_abs_logit": 7.038e-05, "mean_kl": 1.826e-11},
         "web.parity.tiny-float": RUN_A["web.parity.tiny-float"] | {"max_abs_logit": 0.0001842, "mean_kl": 4.54e-11, "vision_cosine": 0.99999994}}


def test_the_noise_of_two_runs_reaches_no_recorded_figure():
    assert {name: stable_report(report) for name, report in RUN_A.items()} == {name: stable_report(report) for name, report in RUN_B.items()}
    onnx = stable_report(RUN_A["onnx.parity"])
    assert (onnx["max_abs_logit"], onnx["mean_kl"], onnx["vision_cosine"]) == (0.001, 1e-06, 0.9999)
    assert onnx["thresholds"] == RUN_A["onnx.parity"]["thresholds"]  # the manifest's numbers, never rounded
    assert onnx["top1_agreement"] == 1.0 and onnx["greedy_identical_steps"] == [24, 24]


@pytest.mark.parametrize("value, floor, expected", [
    (0.03735, 1e-6, 0.038), (0.037, 1e-6, 0.037), (5.76, 1e-3, 5.8), (0.0014, 1e-3, 0.0014), (1e-9, 1e-6, 1e-06),
    (123.4, 1e-3, 130.0), (0.0, 1e-6, 1e-06),
])
def test_an_error_figure_is_an_upper_bound_at_two_significant_digits(value, floor, expected):
    assert upper_bound(value, floor) == expected
    assert upper_bound(expected, floor) == expected  # on the grid already: the rule is idempotent


def test_a_similarity_is_a_lower_bound():
    assert lower_bound(0.99853, 1e-4) == 0.9985
    assert lower_bound(0.999996, 1e-4) == lower_bound(1.0, 1e-4) == 0.9999
    assert lower_bound(0.9, 1e-4) == 0.9


def test_a_ratio_is_one_plus_an_upper_bound_of_its_excess():
    """The perplexity ratio (quantized over float on the reference's tokens): noise around 1.0
    reads "at most 1.0001" on every machine; a real loss keeps two significant digits of excess."""
    assert ratio_bound(1.0000003, 1e-4) == ratio_bound(0.99996, 1e-4) == ratio_bound(1.0, 1e-4) == 1.0001
    assert ratio_bound(1.03468, 1e-4) == 1.035 and ratio_bound(1.035, 1e-4) == 1.035
    assert stable_report({"perplexity_ratio": 1.6038, "p99_kl": 4.4143}) == {"perplexity_ratio": 1.61, "p99_kl": 4.5}


def test_nested_check_figures_follow_their_parents_rule():
    report = {"rope_check": {"max_abs": {"cos_cache_global": 0.0, "sin_cache_local": 3e-07}, "positions": 1024, "tolerance": 0.0001},
              "gain_check": {"gains": 13, "max_abs": 0.0}}
    assert stable_report(report) == {
        "rope_check": {"max_abs": {"cos_cache_global": 1e-06, "sin_cache_local": 1e-06}, "positions": 1024, "tolerance": 0.0001},
        "gain_check": {"gains": 13, "max_abs": 1e-06},
    }
    assert pinned_facts(report)["rope_check"] == {"max_abs": {"cos_cache_global": None, "sin_cache_local": None}, "positions": 1024, "tolerance": 0.0001}


def _lock_with(checks):
    from modelforge.lock import Lock, LockedManifest, LockedSource

    return Lock(
        manifest=LockedManifest(name="m", path="manifests/m.yaml", digest="d", content={}),
        source=LockedSource(kind="local", path="fixtures/m", files={}), toolchain={"torch": "2.13.0"}, steps={}, targets={}, checks=checks,
    )


def test_a_lock_that_differs_only_in_measurements_is_not_rewritten(tmp_path):
    from modelforge.lock import write_lock

    path = tmp_path / "m.lock"
    assert write_lock(path, _lock_with({"p": {"mean_kl": 0.01, "top1_agreement": 0.9}}))
    before = path.read_bytes()
    assert not write_lock(path, _lock_with({"p": {"mean_kl": 0.012, "top1_agreement": 0.9}}))
    assert path.read_bytes() == before
    # A pinned fact that moved (an argmax flipped: the agreement changed) is a change.
    assert write_lock(path, _lock_with({"p": {"mean_kl": 0.012, "top1_agreement": 0.8}}))
    assert b"0.8" in path.read_bytes()


def test_a_build_with_other_threads_writes_the_same_lock_bytes(litertlm_build, litertlm_store, tmp_path, monkeypatch):
    """The tiny litertlm manifest (all its targets) built twice: the session's build with the
    machine's default threads, then again in a fresh copy of its store from which every step that
    measures (parity, architecture and export checks) was removed, so each of them runs again with
    one thread (OMP_NUM_THREADS reaches torch in the workers). The two locks, and the committed one,
    are the same bytes."""
    import os
    import shutil

    from modelforge import api
    from modelforge.api.locking import CHECK_REPORTS
    from modelforge.lock import read_lock
    from modelforge.store import Store

    from conftest import MANIFEST_LITERTLM, ROOT, copy_project

    assert os.environ.get("OMP_NUM_THREADS") in (None, "", str(os.cpu_count())) and (os.cpu_count() or 1) > 1
    first = litertlm_build.project.lock_path.read_bytes()
    lock = read_lock(litertlm_build.project.lock_path)
    # The measuring steps, and the PyTorch reference they compare with (its logits move with threads too).
    measuring = sorted(name for name, step in lock.steps.items() if step.kind in CHECK_REPORTS or step.kind == "parity_reference")
    assert {"bundle.parity", "onnx.parity", "web.parity.tiny-float", "reference"} <= set(measuring)
    store = tmp_path / "store"
    shutil.copytree(litertlm_store, store, symlinks=True)
    copied = Store(store)
    for name in measuring:
        copied.remove_record(lock.steps[name].key)
    copied.close()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = copy_project(tmp_path / "project")
    result = api.build(project / "manifests" / MANIFEST_LITERTLM, store_dir=store)
    # Every measuring step ran again (two steps with one key, like the int8 web variants' parity, run once).
    assert {lock.steps[name].key for name in measuring} <= {lock.steps[name].key for name in result.ran}
    assert result.project.lock_path.read_bytes() == first
    assert first == (ROOT / "lock" / MANIFEST_LITERTLM.replace(".yaml", ".lock")).read_bytes()
