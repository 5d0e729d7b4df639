"""What quantization does to a model's next-token distribution: a float model's logits against a
quantized model's over the same evaluation tokens (teacher-forced, so both see identical inputs).

Figures, the ones llama.cpp's `llama-perplexity --kl-divergence` reports:
- mean_kl, p99_kl: KL(P_float || P_quantized) per position (nats), its mean and 99th percentile
  (numpy's linear interpolation);
- top1_agreement: the share of positions where the two argmaxes are equal;
- perplexity_ratio: quantized perplexity / float perplexity on the actual next tokens
  (exp of the difference of mean negative log-likelihoods); 1.0 is no loss;
- max_abs_logit: the largest |Δlogit| anywhere.

`load_eval_text()` reads the committed evaluation text (data/eval/). Imports numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np

FIGURES = ("mean_kl", "p99_kl", "top1_agreement", "perplexity_ratio", "max_abs_logit")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (stable: the row maximum is subtracted first)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class QualityAccumulator:
    """Adds positions a chunk at a time (a 262k-wide logit row is 2 MB in float64), keeping only
    per-position figures; `report()` summarises them."""

    kls: list = field(default_factory=list)
    agreements: list = field(default_factory=list)
    float_nll: list = field(default_factory=list)
    quantized_nll: list = field(default_factory=list)
    max_abs_logit: float = 0.0

    def add(self, float_logits: np.ndarray, quantized_logits: np.ndarray, targets: np.ndarray | None = None) -> None:
        """float_logits, quantized_logits: [positions, vocabulary]; targets: [positions] token ids
        (the actual next token at each position), or None where there is none (perplexity skipped)."""
        reference, candidate = np.atleast_2d(float_logits), np.atleast_2d(quantized_logits)
        if reference.shape != candidate.shape:
            raise ValueError(f"logit shapes differ: float {reference.shape}, quantized {candidate.shape}; compare the same positions")
        if not np.isfinite(candidate).all():
            raise ValueError("the quantized logits contain NaN or infinity")
        log_p, log_q = log_softmax(reference), log_softmax(candidate)
        self.kls.extend((np.exp(log_p) * (log_p - log_q)).sum(axis=-1).clip(min=0.0).tolist())
        self.agreements.extend((reference.argmax(axis=-1) == candidate.argmax(axis=-1)).tolist())
        self.max_abs_logit = max(self.max_abs_logit, float(np.abs(reference.astype(np.float64) - candidate).max()))
        if targets is not None:
            targets = np.asarray(targets, dtype=np.int64).reshape(-1)
            if targets.shape[0] != reference.shape[0]:
                raise ValueError(f"{targets.shape[0]} targets for {reference.shape[0]} positions")
            rows = np.arange(targets.shape[0])
            self.float_nll.extend((-log_p[rows, targets]).tolist())
            self.quantized_nll.extend((-log_q[rows, targets]).tolist())

    def report(self) -> dict:
        if not self.kls:
            raise ValueError("no positions compared")
        kls = np.asarray(self.kls)
        report = {
            "positions": int(kls.size),
            "mean_kl": float(kls.mean()),
            "p99_kl": float(np.percentile(kls, 99)),
            "top1_agreement": float(np.mean(self.agreements)),
            "max_abs_logit": self.max_abs_logit,
            "perplexity_ratio": math.nan,
            "float_perplexity": math.nan,
            "quantized_perplexity": math.nan,
        }
        if self.float_nll:
            float_mean, quantized_mean = float(np.mean(self.float_nll)), float(np.mean(self.quantized_nll))
            report.update({"float_perplexity": math.exp(float_mean), "quantized_perplexity": math.exp(quantized_mean),
                           "perplexity_ratio": math.exp(quantized_mean - float_mean)})
        return report


def compare(float_logits: np.ndarray, quantized_logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
    """The figures over one block of positions (see the module docstring)."""
    accumulator = QualityAccumulator()
    accumulator.add(float_logits, quantized_logits, targets)
    return accumulator.report()


@dataclass(frozen=True)
class QualityGate:
    """Thresholds a quantized model must meet; None leaves a figure unchecked."""

    min_top1_agreement: float | None = None
    max_mean_kl: float | None = None
    max_p99_kl: float | None = None
    max_perplexity_ratio: float | None = None

    def failures(self, report: dict) -> list[str]:
        """One line per threshold the report misses (empty: it passes). NaN never passes."""
        checks = (("top1_agreement", self.min_top1_agreement, False), ("mean_kl", self.max_mean_kl, True),
                  ("p99_kl", self.max_p99_kl, True), ("perplexity_ratio", self.max_perplexity_ratio, True))
        missed = []
        for name, limit, upper in checks:
            if limit is None:
                continue
            value = report[name]
            passes = (value <= limit) if upper else (value >= limit)
            if not passes:  # also catches NaN: every comparison with NaN is False
                missed.append(f"{name} {value:.4g} {'>' if upper else '<'} {limit:g}")
        return missed


def _lines(name: str) -> list[str]:
    text = files("modelforge").joinpath("data", "eval", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def load_eval_text() -> dict[str, list[str]]:
    """The committed evaluation text: {"clinical_prompts": [...], "icd10": [...]} (see each file's header)."""
    return {"clinical_prompts": _lines("clinical_prompts.txt"), "icd10": _lines("icd10_descriptions.txt")}
