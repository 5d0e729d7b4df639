"""The rule for figures in the lock: which parts of a check report are pinned facts and which are
measurements, and the resolution a measurement is written at so that the lock is the same bytes on
every run and machine of one toolchain (docs/lockfile.md). Imports nothing of modelforge.

Pinned facts are written as the check reported them: counts (prompts, steps, tensors), token lists,
thresholds, the verdict, and agreement ratios (ratios of token counts: an argmax that flips is a
real change, not noise). Measurements — float errors that move with thread scheduling and CPU
kernels (max |Δlogit| moved 7.5e-05 → 7.0e-05 between two runs of byte-identical graphs) — are
written as bounds on a grid the noise cannot reach:

- an error figure (smaller is better) as an upper bound: rounded up to 2 significant digits, and
  never below its floor, the smallest figure worth telling apart (a tenth or less of the strictest
  threshold a manifest sets), so float-level noise reads "at most the floor" on every machine;
- a similarity (cosine, larger is better) as a lower bound: 1 − its distance written as above;
- a ratio to the source (perplexity ratio, 1.0 is no loss) as 1 + an upper bound of its excess.

The gate itself always uses the full figures; the step's own report in the store keeps them."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, Decimal
from typing import Any, Callable

# Error figures: name → floor.
ERROR_FLOORS = {
    "max_abs_logit": 1e-3,  # a tenth of the strictest max_abs_logit threshold (0.01)
    "mean_kl": 1e-6,
    "p99_kl": 1e-6,
    "max_abs": 1e-6,  # the RoPE and norm-gain checks: a hundredth of their tolerance (1e-4)
}
# Similarities: name → floor of the distance 1 − figure.
SIMILARITY_FLOORS = {
    "vision_cosine": 1e-4,  # a tenth of the strictest distance a threshold allows (min_vision_cosine 0.999)
}
# Ratios (1.0: no change), written as 1 + an upper bound of their excess: name → floor of the excess.
RATIO_FLOORS = {
    "perplexity_ratio": 1e-4,
}
# Subtrees written exactly, whatever their keys are called (thresholds are the manifest's numbers).
EXACT = frozenset({"thresholds"})


def upper_bound(value: float, floor: float) -> float:
    """value rounded up to 2 significant digits, and at least floor."""
    if not math.isfinite(value):
        return value
    exact = max(Decimal(repr(float(value))), Decimal(repr(floor)))
    return float(exact.quantize(Decimal(1).scaleb(exact.adjusted() - 1), rounding=ROUND_CEILING))


def lower_bound(value: float, floor: float) -> float:
    """A similarity (at most 1) written as 1 − the upper bound of its distance from 1."""
    if not math.isfinite(value):
        return value
    distance = upper_bound(float(Decimal(1) - Decimal(repr(float(value)))), floor)
    return float(Decimal(1) - Decimal(repr(distance)))


def ratio_bound(value: float, floor: float) -> float:
    """A ratio written as 1 + the upper bound of its excess over 1 (at least floor)."""
    if not math.isfinite(value):
        return value
    return float(Decimal(1) + Decimal(repr(upper_bound(float(Decimal(repr(float(value))) - 1), floor))))


def _rule(name: str) -> Callable[[float], float] | None:
    if name in ERROR_FLOORS:
        return lambda value: upper_bound(value, ERROR_FLOORS[name])
    if name in SIMILARITY_FLOORS:
        return lambda value: lower_bound(value, SIMILARITY_FLOORS[name])
    if name in RATIO_FLOORS:
        return lambda value: ratio_bound(value, RATIO_FLOORS[name])
    return None


def _walk(value: Any, rule: Callable[[float], float] | None, measured: bool) -> Any:
    """value with the rule applied to its float leaves (measured=False: those leaves become None,
    leaving only the pinned facts)."""
    if isinstance(value, dict):
        return {key: (item if key in EXACT else _walk(item, _rule(key) or rule, measured)) for key, item in value.items()}
    if isinstance(value, list):
        return [_walk(item, rule, measured) for item in value]
    if rule is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        return rule(float(value)) if measured else None
    return value


def stable_report(report: dict) -> dict:
    """A check report as the lock records it: pinned facts as they are, measurements as bounds."""
    return _walk(report, None, measured=True)


def pinned_facts(report: dict) -> dict:
    """A check report without its measurements: what must be equal for two locks to say the same."""
    return _walk(report, None, measured=False)
