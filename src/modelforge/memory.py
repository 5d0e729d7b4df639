"""Peak memory of the litert export steps (trace with torch.export, convert to .tflite), predicted
from parameter counts before anything runs, so that a build too large for the machine is refused
at once instead of swapping for 40 minutes.

The export worker loads the whole checkpoint in float32 (litert-torch's `load_model`, whatever the
checkpoint's dtype) and then traces and converts one part of it, so its peak is modelled as

    peak = base + factor × traced_f32_bytes + loaded_factor × loaded_f32_bytes

per part (`text`: the text decoder; `vision`: vision encoder + projector), where traced is the
part's parameter count and loaded the whole checkpoint's, times 4 bytes. The constants are a
least-squares fit over synthetic Gemma3ForConditionalGeneration checkpoints of five sizes, built
and measured by `bench/bench_litertlm.py` (its `memory` section; peak = the worker's
getrusage ru_maxrss) with the tiny manifest's lengths (prefill 32 and 128, cache 256): see
MEASUREMENTS. Longer prefill/cache lengths add activations and KV-cache sample inputs that the
fit does not see (for MedGemma 4B at cache 4096 about 1 GiB of KV cache per copy).

Imports only `errors`: `plan` and a no-op `build` use it without torch.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

from modelforge.errors import PlanError

F32_BYTES = 4
ENV_LIMIT = "MODELFORGE_MEMORY_LIMIT"

# --- measured (bench/bench_litertlm.py --sections memory) -------------------------------------
MEASURED_ON = "2026-11-23"
MEASURED_MACHINE = "2 cores (AMD EPYC), 23.5 GiB RAM, Linux 6.18, Python 3.11.7, torch 2.13.0+cpu, litert-torch 0.10.0, transformers 5.23.0"
# (checkpoint, part, part parameters, loaded parameters, peak RSS bytes of the export worker).
# tiny is fixtures/tiny-medgemma (float32); the others are bfloat16 Gemma3ForConditionalGeneration
# made with from_config (text hidden/layers 256/8, 512/12, 768/14; vision_big: the tiny text model
# with a 512-wide, 12-layer vision tower); bench/bench_litertlm.py CHECKPOINTS has the configs.
MEASUREMENTS: tuple[tuple[str, str, int, int, int], ...] = (
    ("tiny", "text", 139968, 170016, 1247993856),
    ("tiny", "vision", 30048, 170016, 1225809920),
    ("small", "text", 8660224, 9563904, 1489567744),
    ("small", "vision", 903680, 9563904, 1355075584),
    ("medium", "text", 47736832, 52762112, 2316763136),
    ("medium", "vision", 5025280, 52762112, 1898496000),
    ("large", "text", 124695040, 139419136, 3745366016),
    ("large", "vision", 14724096, 139419136, 2982457344),
    ("vision_big", "text", 139968, 38312640, 1570439168),
    ("vision_big", "vision", 38172672, 38312640, 2003759104),
)
# part → (base bytes, factor on the part's f32 bytes, factor on the loaded checkpoint's f32 bytes):
# least squares over MEASUREMENTS (largest residual: text 4.7 %, vision 0.7 %).
FIT: dict[str, tuple[int, float, float]] = {
    "text": (1_304_165_207, 3.03, 1.719),
    "vision": (1_231_898_797, 2.123, 2.92),
}
# The largest |predicted / measured − 1| over MEASUREMENTS is below this (tests/test_memory.py); a
# second run of the bench on the same machine stays within it too (bench/RESULTS.md). Far beyond
# the measured sizes (MedGemma 4B is 30× the largest) the error is not known: the fit is linear.
STATED_ERROR = 0.10

PARTS = tuple(FIT)


def predict_export_peak(part: str, parameter_count: int, loaded_parameter_count: int | None = None) -> int:
    """Predicted peak resident bytes of exporting `part` ('text' or 'vision') with
    `parameter_count` parameters, from a checkpoint of `loaded_parameter_count` parameters in all
    (default: the part alone). Monotonic in both counts."""
    if part not in FIT:
        raise ValueError(f"unknown export part {part!r}; expected one of {', '.join(PARTS)}")
    if parameter_count < 0 or (loaded_parameter_count is not None and loaded_parameter_count < 0):
        raise ValueError("parameter counts cannot be negative")
    loaded = parameter_count if loaded_parameter_count is None else max(loaded_parameter_count, parameter_count)
    base, factor, loaded_factor = FIT[part]
    return int(round(base + factor * F32_BYTES * parameter_count + loaded_factor * F32_BYTES * loaded))


def constants() -> dict:
    return {part: {"base_bytes": base, "factor": factor, "loaded_factor": loaded} for part, (base, factor, loaded) in FIT.items()}


# --- the machine ---------------------------------------------------------------------------------
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str | int) -> int:
    """'16GB' → 16e9, '16GiB' or '16G' → 16 × 2^30, '1000000' → bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?)?(b)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size")
    number, unit, bytes_suffix = match.groups()
    unit = (unit or "").lower()
    if unit and len(unit) == 1 and not bytes_suffix:
        unit += "i"  # a bare 'G' means GiB, as in free -g
    return int(float(number) * _UNITS[unit])


def machine_memory() -> int:
    """Total physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit(override: str | int | None = None) -> tuple[int, str]:
    """The memory a build may use and where that figure comes from: the override (--memory-limit),
    else $MODELFORGE_MEMORY_LIMIT (bytes, or a size such as 16GiB), else the physical memory."""
    for value, origin in ((override, "--memory-limit"), (os.environ.get(ENV_LIMIT), ENV_LIMIT)):
        if value is None or value == "":
            continue
        try:
            return parse_size(value), origin
        except ValueError:
            raise PlanError(f"{origin}={value!r} is not a size in bytes (or like 16GiB, 16GB); fix it or unset it") from None
    return machine_memory(), "physical memory"


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def refuse_if_too_large(predictions: Mapping[str, int], to_run: Iterable[str], override: str | int | None = None) -> None:
    """Raise a one-line PlanError when the largest predicted peak of a step that would run is more
    than the memory available; steps already in the store do not count."""
    pending = set(to_run)
    candidates = [(peak, name) for name, peak in predictions.items() if name in pending]
    if not candidates:
        return
    peak, name = max(candidates)
    limit, origin = memory_limit(override)
    if peak > limit:
        where = "this machine has" if origin == "physical memory" else f"{origin} allows"
        raise PlanError(
            f"step {name} would need about {_gib(peak)} of memory at its peak (predicted from its parameter count), "
            f"but {where} {_gib(limit)}; build on a machine with more RAM, or set --memory-limit / {ENV_LIMIT} "
            "higher if you know better (swap makes it crawl)"
        )


def count_parameters(tensors: Mapping[str, object], owner: Mapping[str, str], components: Iterable[str] | None = None) -> int:
    """Parameters of the tensors (name → TensorInfo with .shape) owned by `components` (all if None)."""
    wanted = None if components is None else set(components)
    total = 0
    for name, info in tensors.items():
        if wanted is not None and owner.get(name) not in wanted:
            continue
        numel = 1
        for dimension in info.shape:
            numel *= dimension
        total += numel
    return total
