"""Does @litertjs/core 2.5.3's loadModelAndWeights load modelforge's graphs split by
modelforge.web.split_weights (flatbuffer with TFLite external buffers + weights file), on WebGPU
(SwiftShader) in headless Chromium, and does it keep the weights out of the wasm heap?

    driver.py BUNDLE_DIR GRAPH [GRAPH...]

BUNDLE_DIR: a web bundle with LiteRT.js variants, as `modelforge build` writes it (its
models/GRAPH.tflite are split here). Each (graph, mode) of page/probe.js runs in a fresh browser;
the outputs of every signature are compared with the `inline` (loadAndCompile) run, and the page's
console is searched for the stream callback's own log lines ("[StreamWeights] Starting loading
session", once a call; "[StreamWeights] Writing", once a tensor), which @litertjs/core prints when the
wasm side asks for streamed weights.
Writes results.json next to this file. Run from the project root (a memory cap of ~2.5 GiB suffices):
    PYTHONPATH=$PWD/src .venv/bin/python experiments/litertjs_streamed/driver.py BUNDLE_DIR model-HASH embedder-HASH
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--enable-unsafe-webgpu"]
MODES = ("inline", "wasm", "stream", "stream_fs", "stream_fs_zeros", "stream_fs_rereadable", "stream_fs_zeros_rereadable",
         "q_fs_rereadable", "scratch_rereadable")


def attempt(playwright, url: str) -> dict:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    console: list[str] = []
    try:
        page = browser.new_page()
        page.on("console", lambda message: console.append(message.text))
        page.on("pageerror", lambda error: console.append(f"pageerror: {error}"))
        page.goto(url)
        try:
            page.locator("body[data-state=done]").wait_for(state="attached", timeout=120_000)
            result = json.loads(page.get_attribute("body", "data-result", timeout=5_000))
        except Exception as error:  # an abort in the wasm module can hang or close the page
            result = {"error": f"page did not finish: {error.__class__.__name__}"}
    finally:
        browser.close()
    fatal = [line.strip() for line in console if line.startswith(("F1", "E1", "ERROR", "WARNING")) or "Aborted" in line]
    result["stream_sessions"] = sum("[StreamWeights] Starting loading session" in line for line in console)
    result["stream_errors"] = sorted({line[:300] for line in console if "streamWeightsOnWeb" in line})[:3]
    result["weights_written_by_stream"] = sum("[StreamWeights] Writing" in line for line in console)
    result["fatal_log"] = sorted(set(fatal))[:3]
    return result


def main(bundle: Path, graphs: list[str]) -> None:
    from playwright.sync_api import sync_playwright

    from modelforge.web.serve import serve
    from modelforge.web.split_weights import QUANTIZED_TYPES, external_extent, split_weights

    with tempfile.TemporaryDirectory(prefix="litertjs-streamed-") as temporary:
        site = Path(temporary) / "site"
        shutil.copytree(bundle, site)
        probe = site / "probe"
        shutil.copytree(HERE / "page", probe)
        split = {}
        for graph in graphs:
            shutil.copy(site / "models" / f"{graph}.tflite", probe / f"{graph}.tflite")
            result = split_weights(probe / f"{graph}.tflite", probe / f"{graph}.graph.tflite", probe / f"{graph}.weights")
            split[graph] = {"tflite_bytes": (probe / f"{graph}.tflite").stat().st_size, **result.__dict__}
            quantized = split_weights(probe / f"{graph}.tflite", probe / f"{graph}.q.graph.tflite", probe / f"{graph}.q.weights",
                                      element_types=QUANTIZED_TYPES)
            split[graph + " (quantized only)"] = quantized.__dict__
            (probe / f"{graph}.q.json").write_text(json.dumps(external_extent(probe / f"{graph}.q.graph.tflite")))
        server = serve(site)
        results = {"split": split, "runs": {}}
        try:
            with sync_playwright() as playwright:
                for graph in graphs:
                    runs = results["runs"][graph] = {}
                    for mode in MODES:
                        runs[mode] = attempt(playwright, f"{server.url}probe/index.html?graph={graph}&mode={mode}")
                        print(graph, mode, runs[mode].get("error", "ok"), flush=True)
        finally:
            server.close()
    for graph, runs in results["runs"].items():
        reference_mode = next((m for m in ("inline", "stream_fs_rereadable", "wasm") if "outputs" in runs[m]), None)
        reference = runs[reference_mode]["outputs"] if reference_mode else None
        results.setdefault("reference_mode", {})[graph] = reference_mode
        for mode, run in runs.items():
            outputs = run.get("outputs")
            if outputs is not None and reference is not None:
                run["max_abs_difference_to_reference"] = max(
                    max((abs(a - b) for a, b in zip(outputs[key], reference[key])), default=0.0) for key in reference
                )
        for run in runs.values():
            if "outputs" in run:
                run["outputs"] = len(run["outputs"])
    (HERE / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
