#!/usr/bin/env python
"""Benchmark: the gguf target's steps at MedGemma 4B's shapes (issue 25, item 4). On a synthetic
checkpoint (modelforge.testing.gemma3_checkpoint: 4B widths, the real 262,208-token vocabulary, the
full 27-layer SigLIP tower at 896 px, N decoder layers, bf16) it runs the pinned converter for the
mmproj (F16) and the text decoder (F32, or --intermediate BF16), then llama.cpp's Q4_K_M quantizer,
each as the steps run them (steps/gguf/: the worker, its peak anonymous memory), and prints seconds,
peak anonymous / RSS GiB and file sizes as JSON.

    PYTHONPATH=src .venv/bin/python bench/bench_gguf.py --layers 6 --work /tmp/bench-gguf
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path


def measured(result: dict, path: Path) -> dict:
    return {"seconds": result["seconds"], "peak_anonymous_GiB": round(result["peak_anonymous_bytes"] / 2**30, 3),
            "peak_rss_GiB": round(result["peak_rss_bytes"] / 2**30, 3), "file_MB": round(path.stat().st_size / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    from modelforge.steps.gguf.convert import convert
    from modelforge.steps.gguf.quantize import quantize
    from modelforge.testing.gemma3_checkpoint import write_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="decoder layers of the synthetic checkpoint (MedGemma: 34)")
    parser.add_argument("--intermediate", choices=["F32", "BF16"], default="F32", help="the float GGUF the quantizer reads")
    parser.add_argument("--work", type=Path, default=Path("bench/out/gguf"))
    args = parser.parse_args(argv)
    checkpoint = args.work / f"checkpoint-{args.layers}"
    stamp = write_checkpoint(checkpoint, text_layers=args.layers)
    results: dict = {"checkpoint": stamp}
    vision = args.work / "mmproj.gguf"
    results["convert_vision_F16"] = measured(convert(checkpoint, vision, part="vision", type="F16", name="synthetic-4b", work=args.work / "w-vision"), vision)
    text = args.work / f"text-{args.intermediate}.gguf"
    results[f"convert_text_{args.intermediate}"] = measured(convert(checkpoint, text, part="text", type=args.intermediate, name="synthetic-4b", work=args.work / "w-text"), text)
    quantized = args.work / "text-Q4_K_M.gguf"
    result = quantize(text, quantized, type="Q4_K_M", work=args.work / "w-quantize")
    results["quantize_Q4_K_M"] = measured(result, quantized) | {"tensor_types": result["tensor_types"]}
    print(json.dumps(results, indent=1, sort_keys=True))
    for directory in ("w-vision", "w-text", "w-quantize"):
        shutil.rmtree(args.work / directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
