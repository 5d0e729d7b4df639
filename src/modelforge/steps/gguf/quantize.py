"""Step `gguf_quantize`: llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python
compiled from the pinned sdist) from a float GGUF to a K-quant mix: Q4_K_M, Q5_K_M, Q6_K and the rest
of llama.cpp's ftypes. Its per-tensor choices are llama.cpp's (Q4_K_M keeps some attn_v/ffn_down at
Q6_K; a tensor whose rows are not a multiple of 256 falls back to a legacy type), so the step records
the type of every tensor it wrote. No importance matrix: that is a later step. Imports only
steps.base, errors and the stdlib at module level; llama_cpp loads in the worker only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "gguf_quantize"
VERSION = 1
TOOLS = ("llama-cpp-python",)
# llama.cpp's enum llama_ftype (include/llama.h), the names `llama-quantize` prints.
FTYPES = {
    "Q8_0": 7, "Q4_0": 2, "Q5_0": 8, "Q2_K": 10, "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14,
    "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18,
}
# Row-parallel: each row's blocks depend on that row alone, so the bytes do not depend on the thread count.
THREADS = 2


def quantize(source: Path, out: Path, *, type: str, work: Path, progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """Quantize `source` (an F32/F16/BF16 GGUF) to `out`; returns the tensor types written, seconds and peak RSS."""
    from modelforge.steps.gguf.worker import MODULE
    from modelforge.steps.workers import launch

    if type not in FTYPES:
        raise StepFailed(f"gguf quantization type {type!r} is not one of llama.cpp's ({', '.join(FTYPES)})")
    out.parent.mkdir(parents=True, exist_ok=True)
    request = {"action": "quantize", "source": str(source), "out": str(out), "ftype": FTYPES[type], "type": type, "threads": THREADS}
    return launch(request, work, progress, f"gguf quantize {type}", MODULE)


def quantize_in_child(request: dict) -> dict:
    """In the worker: llama_model_quantize, then the type of each tensor of the result (read with the
    converter's gguf-py, the same llama.cpp commit)."""
    import ctypes
    import sys

    import llama_cpp

    from modelforge.steps.gguf import converter

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = request["ftype"]
    params.nthread = request["threads"]
    code = llama_cpp.llama_model_quantize(request["source"].encode(), request["out"].encode(), ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize returned {code} for {request['source']} → {request['type']}")
    sys.path.insert(0, str(converter.converter_dir() / "gguf-py"))
    import gguf

    reader = gguf.GGUFReader(request["out"])
    counts: dict[str, int] = {}
    for tensor in reader.tensors:
        name = tensor.tensor_type.name
        counts[name] = counts.get(name, 0) + 1
    return {"tensor_types": dict(sorted(counts.items())), "file_type": int(reader.fields["general.file_type"].contents())}


def run(context: StepContext) -> None:
    """params: {type}; input `gguf` with model.gguf (a float GGUF); output model.gguf and quantize_report.json."""
    import json

    result = quantize(context.input_path("gguf", "model.gguf"), context.output("model.gguf"), type=context.params["type"],
                      work=context.scratch_dir, progress=context.progress)
    context.measurements.update({key: result[key] for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")})
    report = {"type": context.params["type"], "tensor_types": result["tensor_types"], "file_type": result["file_type"]}
    context.output("quantize_report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
