#!/usr/bin/env python
"""Benchmark: what each LiteRT quantization recipe does to a *trained* Gemma 3 (the 270M fixture,
modelforge.testing.trained_gemma3), through our own export.

1. Builds (or reuses) the trained text fixture.
2. Tokenizes the committed evaluation text (modelforge.quality.load_eval_text): each ICD-10
   description as `<bos>` + text, each clinical prompt through Gemma 3's chat template.
3. PyTorch float32 reference: next-token logits at every position, saved under --work.
4. Exports the text decoder once to float .tflite with the litert steps' own worker
   (modelforge.steps.litert.worker through steps.workers.launch: export, then quantize per recipe), as `modelforge build` does.
5. Runs each graph in the LiteRT interpreter (parity_phases.TfliteDecoder), teacher-forced along the
   evaluation tokens one decode step per position, and compares with the float reference
   (modelforge.quality: mean / p99 KL, top-1 agreement, perplexity ratio, max |Δlogit|).
6. Gates each recipe on the shipped MedGemma thresholds (top-1 >= 0.9, mean KL <= 0.05); the int2
   recipe is the deliberately broken quantization that must fail.

Writes bench/results/trained_quality.json and .md after every recipe (a long run keeps what it
measured). Usage: python bench/bench_trained_quality.py [--recipes none,dynamic_wi8_afp32,...] [--limit N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from modelforge import quality
from modelforge.testing import trained_gemma3

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DEFAULT_RECIPES = ("none", "dynamic_wi8_afp32", "dynamic_wi4b32_afp32", "weight_only_wi8_afp32", "dynamic_wi2b32_afp32")
BROKEN = {"dynamic_wi2b32_afp32": "int2 block-32 weights: deliberately broken, must fail the gate"}
BROKEN_STRIDE = 5  # every fifth sequence: the built-in kernels take about 0.2 s a step
# The thresholds shipped in manifests/medgemma-1.5-litertlm.yaml's parity (top-1 >= 0.9, KL <= 0.05).
SHIPPED_GATE = quality.QualityGate(min_top1_agreement=0.9, max_mean_kl=0.05)
CACHE_LENGTH = 256
GREEDY_STEPS = 24
PREFILL_LENGTHS = [32]


def _log(message: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def sequences(tokenizer, limit: int | None) -> list[dict]:
    text = quality.load_eval_text()
    items = []
    for line in text["clinical_prompts"]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": line}], add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        items.append({"kind": "clinical_prompt", "ids": ids})
        # The same prompt, then PyTorch's own greedy answer (GREEDY_STEPS tokens, filled in by
        # reference_logits): compared on the answer's positions only, as the build's parity step does.
        items.append({"kind": "chat_greedy", "ids": ids, "start": len(ids) - 1})
    for line in text["icd10"]:
        items.append({"kind": "icd10", "ids": tokenizer(line)["input_ids"]})
    if limit:  # an even slice of every kind
        kinds = sorted({item["kind"] for item in items})
        items = [item for kind in kinds for item in [i for i in items if i["kind"] == kind][: max(1, limit // len(kinds))]]
    return [{**item, "index": index} for index, item in enumerate(items)]


def reference_logits(checkpoint: Path, items: list[dict], path: Path) -> float:
    """Float32 PyTorch logits at positions 0..n-2 of each sequence (each predicts the next token)."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    arrays = {}
    with torch.no_grad():
        for index, item in enumerate(items):
            if item["kind"] == "chat_greedy":
                generated = model.generate(torch.tensor([item["ids"]]), max_new_tokens=GREEDY_STEPS, min_new_tokens=GREEDY_STEPS,
                                           do_sample=False, pad_token_id=0)
                item["ids"] = generated[0].tolist()
            logits = model(torch.tensor([item["ids"]])).logits[0, item.get("start", 0) : -1].float().numpy()
            arrays[f"logits_{index}"] = logits
    np.savez(path, **arrays)
    del model
    return time.monotonic() - started


def _job(request: dict, scratch: Path, label: str) -> dict:
    from modelforge.steps.workers import launch

    last = [0]

    def progress(done, total, message):
        if done - last[0] >= 60:
            last[0] = done
            _log(message)

    return launch(request, scratch, progress, label, "modelforge.steps.litert.worker")


def export_float(checkpoint: Path, work: Path) -> tuple[Path, dict]:
    directory = work / "export"
    if (directory / "model.tflite").exists():
        return directory, json.loads((directory / "measurements.json").read_text())
    shutil.rmtree(work / "export-scratch", ignore_errors=True)
    (work / "export-scratch" / "out").mkdir(parents=True)
    request = {"action": "export", "checkpoint": str(checkpoint), "work_dir": str(work / "export-scratch" / "out"),
               "part": "text", "task": "text_generation", "prefill_lengths": PREFILL_LENGTHS, "cache_length": CACHE_LENGTH,
               "hoists": [], "image_input": None}
    result = _job(request, work / "export-scratch", "export text")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.move(result["files"]["model.tflite"], directory / "model.tflite")
    measurements = {key: result[key] for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")}
    (directory / "measurements.json").write_text(json.dumps(measurements))
    return directory, measurements


def quantize(float_dir: Path, recipe: str, work: Path) -> tuple[Path, dict]:
    if recipe == "none":
        return float_dir, {}
    directory = work / recipe
    if (directory / "model.tflite").exists():
        return directory, json.loads((directory / "measurements.json").read_text())
    scratch = work / f"{recipe}-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "out").mkdir(parents=True)
    request = {"action": "quantize", "input_dir": str(float_dir), "work_dir": str(scratch / "out"), "recipe": recipe,
               "overrides": [], "files": ["model.tflite"]}
    result = _job(request, scratch, f"quantize ({recipe})")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.move(result["files"]["model.tflite"], directory / "model.tflite")
    measurements = {key: result[key] for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")}
    (directory / "measurements.json").write_text(json.dumps(measurements))
    return directory, measurements


def _decoder(models_dir: Path, default_delegates: bool):
    """parity_phases.TfliteDecoder; without default delegates for graphs XNNPACK cannot prepare (its
    int2 blockwise weights): the interpreter's built-in kernels run them, slower."""
    from modelforge.steps import parity_phases

    if default_delegates:
        return parity_phases.TfliteDecoder(models_dir)
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    decoder = parity_phases.TfliteDecoder.__new__(parity_phases.TfliteDecoder)
    decoder.interpreter = Interpreter(model_path=str(models_dir / "model.tflite"),
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    decoder.signatures = decoder.interpreter.get_signature_list()
    decoder.embedder = None
    decoder.decode = decoder.interpreter.get_signature_runner("decode")
    details = decoder.decode.get_input_details()
    decoder.cache_names = sorted(name for name in details if name.startswith("kv_cache"))
    decoder._cache_details = {name: (details[name]["shape"], details[name]["dtype"]) for name in decoder.cache_names}
    decoder.reset()
    decoder.cache_length = int(details["mask"]["shape"][-1])
    return decoder


def evaluate(models_dir: Path, items: list[dict], reference: Path, default_delegates: bool = True) -> tuple[dict, float]:
    started = time.monotonic()
    saved = np.load(reference)
    decoder = _decoder(models_dir, default_delegates)
    overall, by_kind = quality.QualityAccumulator(), {}
    for item in items:
        ids, index = item["ids"], item["index"]
        decoder.reset()
        start = item.get("start", 0)
        rows = np.stack([decoder.step(token, position) for position, token in enumerate(ids[:-1])])[start:]
        float_rows = saved[f"logits_{index}"]
        accumulators = [by_kind.setdefault(item["kind"], quality.QualityAccumulator())]
        if item["kind"] != "chat_greedy":  # the overall figures are over the evaluation text itself
            accumulators.append(overall)
        for accumulator in accumulators:
            accumulator.add(float_rows, rows, np.array(ids[start + 1 :]))
    report = overall.report()
    report["by_kind"] = {kind: accumulator.report() for kind, accumulator in sorted(by_kind.items())}
    del decoder
    return report, time.monotonic() - started


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_results(results: dict, json_path: Path, markdown_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True, default=_finite) + "\n")
    lines = [
        "# What LiteRT quantization does to a trained Gemma 3 (270M), through our export",
        "",
        f"Generated by `bench/bench_trained_quality.py` on {results['date']} ({results['machine']}). Fixture: "
        f"`{trained_gemma3.GGUF_NAME}` (sha256 `{trained_gemma3.GGUF_SHA256[:12]}…`) dequantized to float32 = the float "
        "reference. Evaluation text: `src/modelforge/data/eval/` "
        f"({results['sequences']} sequences, {results['positions']} positions; clinical prompts through the chat template, "
        "ICD-10 descriptions raw). Each graph runs in the LiteRT interpreter, teacher-forced one decode step per position, "
        f"against PyTorch float32. Gate: the shipped MedGemma thresholds, top-1 >= {SHIPPED_GATE.min_top1_agreement}, "
        f"mean KL <= {SHIPPED_GATE.max_mean_kl}.",
        "",
        "| recipe | model.tflite | top-1 | mean KL | p99 KL | PPL ratio | max abs dlogit | gate | quantize s | eval s |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for recipe, row in results["recipes"].items():
        if "error" in row:
            lines.append(f"| `{recipe}` | — | error: {row['error'][:80]} | | | | | | | |")
            continue
        report = row["report"]
        gate = "PASS" if not row["gate_failures"] else "FAIL (" + "; ".join(row["gate_failures"]) + ")"
        lines.append(
            f"| `{recipe}`{' (broken)' if recipe in BROKEN else ''} | {row['bytes'] / 1e6:.0f} MB | {report['top1_agreement']:.4f} | "
            f"{report['mean_kl']:.5f} | {report['p99_kl']:.4f} | {report['perplexity_ratio']:.4f} | {report['max_abs_logit']:.2f} | "
            f"{gate} | {row.get('quantize', {}).get('seconds', 0):.0f} | {row['eval_seconds']:.0f} |")
    lines += ["", f"Float perplexity of the fixture on this text: {results.get('float_perplexity', float('nan')):.2f}. "
              f"Export (float, text decoder, cache {CACHE_LENGTH}): {results.get('export', {}).get('seconds', float('nan')):.0f} s; "
              f"PyTorch reference: {results.get('reference_seconds', float('nan')):.0f} s.", ""]
    lines += ["Per kind of text (top-1 / mean KL / PPL ratio). `chat_greedy`: each clinical prompt followed by PyTorch's own "
              f"{GREEDY_STEPS} greedy tokens, compared on those tokens only (what the build's parity step measures; not in "
              "the overall figures). `clinical_prompt`: the prompts through the chat template. `icd10`: the descriptions.", "",
              "| recipe | chat_greedy | clinical_prompt | icd10 |", "|---|---|---|---|"]
    for recipe, row in results["recipes"].items():
        if "report" in row:
            cells = [f"{k['top1_agreement']:.4f} / {k['mean_kl']:.5f} / {k['perplexity_ratio']:.4f}" for k in row["report"]["by_kind"].values()]
            lines.append(f"| `{recipe}` | " + " | ".join(cells) + " |")
    lines += ["", "Reading it:", "",
              "- The gate's figure depends on the text it is measured on. Along the model's own greedy answers "
              "(`chat_greedy`, what the build's parity step measures) int8 dynamic keeps top-1 0.96 and KL 0.03; "
              "teacher-forced over real text, where the pretrained 270M is itself unsure (perplexity ~990: chat markers, "
              "ICD-10 jargon), near-ties flip and the same graph lands just outside 0.9 / 0.05.",
              "- The fixture's weights are Q4_K_M dequantized: already on a 4-bit grid (asymmetric, 6-bit scales per 32). "
              "Re-quantizing them to symmetric int4 blocks of 32 does not land on that grid; a bf16 original may fare "
              "differently.",
              "- `none` is the float export: max |dlogit| about 2e-4 against PyTorch, so every other row measures the "
              "quantization, not the export.",
              f"- The broken int2 recipe runs on the interpreter's built-in kernels (XNNPACK cannot prepare int2 blocks), on "
              f"every {BROKEN_STRIDE}th sequence; its .tflite is larger than the float one (the quantizer's int2 tensors "
              "as written by ai-edge-quantizer 0.10.0)."]
    markdown_path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    parser.add_argument("--limit", type=int, default=None, help="evaluate only this many sequences (a quick run)")
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "trained_quality")
    parser.add_argument("--results", type=Path, default=RESULTS / "trained_quality.json")
    arguments = parser.parse_args()
    markdown = arguments.results.with_suffix(".md")
    arguments.work.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    started = time.monotonic()
    checkpoint = trained_gemma3.text_checkpoint()
    _log(f"fixture {checkpoint} ({time.monotonic() - started:.0f} s)")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    items = sequences(tokenizer, arguments.limit)
    results = {
        "date": dt.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "gguf_sha256": trained_gemma3.GGUF_SHA256, "gate": SHIPPED_GATE.__dict__, "sequences": len(items),
        "positions": sum(len(item["ids"]) - 1 for item in items), "cache_length": CACHE_LENGTH, "recipes": {},
    }
    reference = arguments.work / f"reference-{len(items)}.npz"
    saved_items = reference.with_suffix(".items.json")
    if reference.exists() and saved_items.exists():
        items = json.loads(saved_items.read_text())
    else:
        results["reference_seconds"] = reference_logits(checkpoint, items, reference)
        saved_items.write_text(json.dumps(items))
        _log(f"reference logits ({results['reference_seconds']:.0f} s)")
    results["positions"] = sum(len(item["ids"]) - 1 for item in items if item["kind"] != "chat_greedy")
    float_dir, results["export"] = export_float(checkpoint, arguments.work)
    _log(f"float export ({results['export'].get('seconds', 0):.0f} s)")
    for recipe in arguments.recipes.split(","):
        row = {"broken": BROKEN.get(recipe)}
        try:
            models_dir, row["quantize"] = quantize(float_dir, recipe, arguments.work)
            row["bytes"] = (models_dir / "model.tflite").stat().st_size
            _log(f"{recipe}: quantized ({row['quantize'].get('seconds', 0):.0f} s), evaluating {results['positions']} positions")
            evaluated = items
            if recipe in BROKEN:  # XNNPACK cannot run int2: the built-in kernels, on a slice of the text
                evaluated = items[::BROKEN_STRIDE] if len(items) >= 10 * BROKEN_STRIDE else items
                row["evaluated_sequences"] = len(evaluated)
            row["report"], row["eval_seconds"] = evaluate(models_dir, evaluated, reference, default_delegates=recipe not in BROKEN)
            row["gate_failures"] = SHIPPED_GATE.failures(row["report"])
            if recipe not in BROKEN:  # the broken recipe sees a slice of the text
                results["float_perplexity"] = row["report"]["float_perplexity"]
            _log(f"{recipe}: top-1 {row['report']['top1_agreement']:.4f}, mean KL {row['report']['mean_kl']:.5f}, "
                 f"PPL ratio {row['report']['perplexity_ratio']:.4f}, gate {row['gate_failures'] or 'PASS'}")
        except Exception as error:  # a recipe the quantizer rejects is a result, not the end of the run
            row["error"] = f"{type(error).__name__}: {error}"
            _log(f"{recipe}: {row['error']}")
        results["recipes"][recipe] = row
        write_results(results, arguments.results, markdown)
    broken_failed = all(results["recipes"].get(recipe, {}).get("gate_failures") for recipe in BROKEN if recipe in results["recipes"])
    _log(f"done in {time.monotonic() - started:.0f} s; broken recipes fail the gate: {broken_failed}")
    return 0 if broken_failed else 1


if __name__ == "__main__":
    sys.exit(main())
