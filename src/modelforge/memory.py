"""Peak memory of the heavy build steps, predicted from the source's tensor headers before anything
runs, so that a build too large for the machine is refused at once instead of swapping for an hour
(and, with `--executor ray`, so that each step's Ray task requests its peak: ray_executor).

What is predicted is the step worker's peak *anonymous* memory (RssAnon): what the kernel cannot
drop. Resident file pages (the mapped checkpoint, the .tflite being written and hashed) are page
cache that the kernel reclaims under pressure, so they are not counted (the peak RSS high-water mark
overstates a 4B export by the 15 GB graph it writes).

Each step kind follows the copies that exist on its path (steps/litert/worker.py, partial_load.py):

    export text    base + factor × f32 bytes of the text decoder + the KV cache at the manifest's
                   cache length (sample input of the decode signature; f32, K and V of every layer)
                   Lightweight conversion makes the MLIR constants share the torch tensors, so the
                   weights exist about once; the converter's folding and the traced program add the
                   rest of the factor. Only the decoder's tensors are loaded.
    export vision  base + factor × f32 bytes of the vision tower and projector (only they are loaded;
                   the converter still copies the constants of this path, hence the larger factor).
    onnx export    the onnx target's text decoder (onnxruntime-genai's builder) and vision graphs
                   (torch.onnx.export, dynamo; with the float32 token embedding): fitted on the
                   tiny fixture and MedGemma 4B (6.0 GiB for the int4 text decoder since its
                   quantizer gets one float32 weight at a time; 21.2 GiB before).
    quantize       base + factor × f32 bytes of the graphs quantized (ai-edge-quantizer reads the
                   float .tflite into numpy and writes the quantized one beside it).
    onnx quantize  the onnx vision graph's int8 quantization (onnxruntime's MatMulNBits quantizer):
                   the whole float ModelProto in memory with its quantized initializers beside it,
                   about 1.3 × the f32 bytes of the vision tower and projector (measured 2.14 GiB
                   at 4B, where the litert quantize fit said 0.93). The embedding's quantization
                   follows the litert fit (within 4 % at 4B).
    parity         base + factor × f32 bytes of the whole multimodal model. The check runs one
                   worker per phase (text reference, multimodal reference, LiteRT-LM runtime,
                   exported graphs; steps/parity_phases.py), so its peak is the largest phase: at 4B
                   the float32 multimodal reference for the image answers (measured 16.7 GiB).

The constants are least-squares fits over MEASUREMENTS: synthetic checkpoints with MedGemma 4B's
layer shapes and the real 262,208-token vocabulary at 1, 8 and 34 text layers (0.77, 1.43 and
3.88 B text parameters; bench/bench_scale.py and bench/bench_medgemma_4b.py) and the tiny fixture.
Packaging, metadata, .task writing and text-only extraction stream: they are not predicted.

Imports only `errors`: `plan` and a no-op `build` use it without torch.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

from modelforge.errors import PlanError

F32_BYTES = 4
GIB = 2**30
ENV_LIMIT = "MODELFORGE_MEMORY_LIMIT"

# --- measured ------------------------------------------------------------------------------------
MEASURED_ON = "2026-11-29"
MEASURED_MACHINE = "2 cores (AMD EPYC), 23.5 GiB RAM, Linux 6.18, Python 3.11.7, torch 2.13.0+cpu, litert-torch 0.10.0, transformers 5.23.0"
# (checkpoint, step kind, f32 bytes of what the step loads, KV-cache bytes, peak RssAnon bytes).
# tiny: fixtures/tiny-medgemma (cache 256); L1/L8/L34: modelforge.testing.gemma3_checkpoint /
# bench_medgemma_4b.py checkpoints with 1, 8 and 34 MedGemma decoder layers (cache 4096).
MEASUREMENTS: tuple[tuple[str, str, int, int, int], ...] = (
    ("tiny", "export_text", 559_872, 131_072, 619_642_880),
    ("L1", "export_text", 3_062_550_528, 33_554_432, 3_827_806_208),
    ("L8", "export_text", 5_705_263_104, 268_435_456, 6_980_448_256),
    ("L34", "export_text", 15_521_052_672, 1_140_850_688, 18_976_026_624),
    ("tiny", "export_vision", 120_192, 0, 589_946_880),
    ("L8", "export_vision", 1_679_265_216, 0, 6_325_727_232),
    ("L34", "export_vision", 1_679_265_216, 0, 6_363_979_776),
    # quantize: f32 bytes of the component quantized (text decoder; vision encoder; projector).
    # The tiny figures are the build's reported peaks, rounded to 0.1 MiB.
    ("tiny", "quantize", 559_872, 0, 58_720_000),
    ("tiny", "quantize", 111_872, 0, 52_610_000),
    ("tiny", "quantize", 8_320, 0, 52_180_000),
    ("L34", "quantize", 15_521_052_672, 0, 8_732_581_888),  # int8 dynamic, the bundle's text decoder
    ("L34", "quantize", 15_521_052_672, 0, 9_365_749_760),  # int4 blocks of 32, the web variant
    ("L34", "quantize", 1_667_464_128, 0, 942_182_400),
    ("L34", "quantize", 11_801_088, 0, 55_074_816),
    # parity: f32 bytes of the whole multimodal model (the image check's reference).
    ("tiny", "parity", 680_064, 0, 307_195_904),
    ("L34", "parity", 17_200_317_888, 0, 17_975_808_000),
    # onnx target (2026-11-30, onnxruntime-genai 0.18.0, torch 2.13.0): the builder on the text
    # decoder; the dynamo export of the vision tower, projector and the token embedding (120,192 +
    # 262,144 f32 bytes).
    ("tiny", "onnx_export_text", 559_872, 0, 340_017_152),
    ("tiny", "onnx_export_vision", 382_336, 0, 381_825_024),
    # MedGemma 4B's synthetic checkpoint (bench/out, 2026-11-30; bench/RESULTS.md "onnx export at
    # 4B"): int4 decoder, int8 vision. The text export as the worker measures it, with the int4
    # quantizer handed one float32 weight at a time (bench/bench_onnx_text.py; before, the builder
    # serialized every float32 weight at once: 22_759_546_880, sampled every 2 s by hand).
    ("L34", "onnx_export_text", 15_521_052_672, 0, 6_475_345_920),
    ("L34", "onnx_export_vision", 4_364_254_656, 0, 4_803_031_040),
    # gguf target (2026-12-05, llama-cpp-python 0.3.36's converter and quantizer). Both stream a
    # tensor at a time, so their peak follows the largest tensor's f32 bytes (the token embedding),
    # not the model: the same 2.77 GiB at 2 and 6 of MedGemma's 34 layers (bench/RESULTS.md "gguf at
    # MedGemma 4B's shapes", 2 significant digits there). The mmproj conversion follows the f32
    # bytes of the vision tower and projector.
    ("tiny", "gguf_convert_text", 262_144, 0, 260_411_392),
    ("L2", "gguf_convert_text", 2_685_009_920, 0, 2_974_264_115),
    ("tiny", "gguf_quantize", 262_144, 0, 48_062_464),
    ("L2", "gguf_quantize", 2_685_009_920, 0, 751_619_277),
    ("tiny", "gguf_convert_vision", 120_192, 0, 260_014_080),
    ("L34", "gguf_convert_vision", 1_679_265_216, 0, 300_647_711),
    # onnx vision quantization (2026-12-06, onnxruntime 1.31.1): the tiny fixture's int8 variant (the
    # worker's peak, tests/test_onnx.py's manifest) and MedGemma 4B's int8 vision (bench_medgemma_4b.py,
    # sampled RssAnon of the worker: 2_281_385_984 and 2_301_927_424 in two runs; the later one).
    ("tiny", "onnx_quantize_vision", 120_192, 0, 92_745_728),
    ("L34", "onnx_quantize_vision", 1_679_265_216, 0, 2_301_927_424),
)
# Peaks known only from below: a step killed at its cgroup's limit before it finished (none now; the
# 4B parity was, at 21.8 GiB, while its phases shared one process). Such a kind's factor must be set
# so that the prediction is at least the bound (tests/test_memory.py).
LOWER_BOUNDS: tuple[tuple[str, str, int, int, int], ...] = ()
# kind → (base bytes, factor on the f32 bytes); the KV cache of export_text counts once.
FIT: dict[str, tuple[int, float]] = {
    "export_text": (616_565_641, 1.072),
    "export_vision": (589_534_956, 3.427),
    "quantize": (52_671_934, 0.561),
    "parity": (306_497_297, 1.027),
    # onnx: fitted on the tiny fixture and MedGemma 4B. The builder maps the bfloat16 checkpoint
    # (file pages, not counted) and its quantizer holds the int4 weights written so far plus one
    # float32 weight, the largest being the output head (steps/onnx/genai_builder.py): 0.4 × the
    # decoder's float32 bytes at 4B; the dynamo export of the vision side (tower, projector, the
    # float32 token embedding) about once.
    "onnx_export_text": (339_795_832, 0.395),
    "onnx_export_vision": (381_437_665, 1.013),
    # gguf: on the f32 bytes of the largest text tensor (text conversion, quantization), of the
    # vision tower and projector (the mmproj).
    "gguf_convert_text": (260_146_406, 1.011),
    "gguf_quantize": (47_993_767, 0.262),
    "gguf_convert_vision": (260_011_171, 0.024),
    "onnx_quantize_vision": (92_587_596, 1.316),
}
# The largest |predicted / measured − 1| over MEASUREMENTS is below this (tests/test_memory.py).
STATED_ERROR = 0.15

KINDS = tuple(FIT)


def fit(measurements=MEASUREMENTS) -> dict[str, tuple[int, float]]:
    """Least squares, in relative error (so the tiny fixture counts as much as the 4B), of
    anonymous peak − KV cache = base + factor × f32 bytes, per kind measured at two sizes or more:
    what FIT holds, recomputed (a test checks they agree)."""
    result = {}
    for kind in sorted({row[1] for row in measurements}):
        if len({row[2] for row in measurements if row[1] == kind}) < 2:
            continue
        # Rows (1/m, x/m) · (base, factor) ≈ (m − kv)/m; the 2×2 normal equations, solved directly.
        rows = [(1 / peak, f32 / peak, (peak - kv) / peak) for _, row_kind, f32, kv, peak in measurements if row_kind == kind]
        saa = sum(a * a for a, _, _ in rows)
        sab = sum(a * b for a, b, _ in rows)
        sbb = sum(b * b for _, b, _ in rows)
        say = sum(a * y for a, _, y in rows)
        sby = sum(b * y for _, b, y in rows)
        determinant = saa * sbb - sab * sab
        base = (say * sbb - sab * sby) / determinant
        factor = (saa * sby - sab * say) / determinant
        result[kind] = (int(round(base)), round(factor, 3))
    return result


def predict(kind: str, f32_bytes: int, kv_cache_bytes: int = 0) -> int:
    """Predicted peak anonymous bytes of a step of `kind` that loads `f32_bytes` of float32 weights
    (and, for a text export, samples a KV cache of `kv_cache_bytes`). Monotonic in both."""
    if kind not in FIT:
        raise ValueError(f"unknown step kind {kind!r}; expected one of {', '.join(KINDS)}")
    if f32_bytes < 0 or kv_cache_bytes < 0:
        raise ValueError("byte counts cannot be negative")
    base, factor = FIT[kind]
    return int(round(base + factor * f32_bytes + kv_cache_bytes))


def kv_cache_bytes(tensors: Mapping[str, object], owner: Mapping[str, str], components: Iterable[str], cache_length: int) -> int:
    """K and V of every decoder layer at `cache_length` tokens, float32: the decode signature's
    sample cache. From the tensor headers (each k_proj's output width is kv_heads × head_dim), so
    no config key is trusted."""
    wanted = set(components)
    width = sum(info.shape[0] for name, info in tensors.items() if owner.get(name) in wanted and name.endswith("self_attn.k_proj.weight"))
    return 2 * cache_length * width * F32_BYTES


def constants() -> dict:
    return {kind: {"base_bytes": base, "factor": factor} for kind, (base, factor) in FIT.items()}


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
            f"step {name} would need about {_gib(peak)} of memory at its peak (predicted from the tensor sizes it loads), "
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
