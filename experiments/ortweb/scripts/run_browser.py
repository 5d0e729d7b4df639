"""Drives headless Debian Chromium (playwright, no browser download; software WebGPU: SwiftShader)
through page/harness.mjs for each (execution provider, graph set, ORT bundle) configuration and
compares the greedy answers with PyTorch's from cases.json. Writes browser_results.json.

usage: python run_browser.py SITE_DIR OUT_JSON [CONFIG ...] (CONFIG: ep:graphs:bundle[:query=value...], e.g. webgpu:graphs/int4:ort.webgpu.min.mjs:half=1)"""

import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parent))
from serve import server  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-extensions", "--enable-unsafe-webgpu"]
DEFAULT = ["webgpu:graphs/webgpu:ort.webgpu.min.mjs", "wasm:graphs/cpu:ort.wasm.min.mjs",
           "webgpu:graphs/cpu:ort.webgpu.min.mjs", "wasm:graphs/webgpu:ort.wasm.min.mjs"]


def compare(reference, tokens, logits):
    identical = 0
    for a, b in zip(reference["tokens"], tokens):
        if a != b:
            break
        identical += 1
    upto = min(identical + 1, len(tokens))
    delta = float(np.abs(np.array(logits[:upto]) - np.array(reference["logits"][:upto])).max()) if upto else None
    return {"identical_leading_tokens": identical, "of": len(reference["tokens"]), "max_abs_logit": delta}


def main(site: str, out: str, *configs: str) -> None:
    cases = {c["name"]: c for c in json.loads((Path(site) / "cases.json").read_text())}
    httpd = server(site, 0)
    port = httpd.server_address[1]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    results = {}
    with sync_playwright() as p:
        for config in configs or DEFAULT:
            ep, graphs, bundle, *flags = config.split(":")
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            page = browser.new_page()
            served, console = [], []
            page.on("requestfinished", lambda r: served.append((r.url.split(str(port), 1)[1], r.sizes()["responseBodySize"])))
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            started = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/index.html?ep={ep}&graphs={graphs}&bundle={bundle}{''.join('&' + f for f in flags)}")
            page.locator("body[data-state=done]").wait_for(timeout=300_000)
            wall = time.perf_counter() - started
            probe = page.evaluate("window.probeResult")
            browser.close()
            row = {k: probe.get(k) for k in ("half", "ortVersion", "crossOriginIsolated", "adapter", "loadMs", "startupMs", "errors")}
            row["page_wall_s"] = wall
            row["served"] = served
            row["runtime_bytes"] = sum(size for path, size in served if path.startswith("/ort/"))
            row["graph_bytes"] = sum(size for path, size in served if path.startswith("/graphs/"))
            row["console_tail"] = console[-15:]
            row["cases"] = {}
            for name, got in probe["cases"].items():
                case = cases[name]
                entry = {"error": got.get("error"), "tokens": got["tokens"]}
                if got["tokens"]:
                    entry["prefill_ms"] = got["stepMs"][0]
                    entry["per_token_ms_median"] = statistics.median(got["stepMs"][1:]) if len(got["stepMs"]) > 1 else None
                    for attention, reference in case["reference"].items():
                        entry[f"vs_pytorch_{attention}"] = compare(reference, got["tokens"], got["logits"])
                if got.get("features"):
                    a, b = np.array(got["features"]), np.array(case["reference_features"])
                    entry["vision_max_abs"] = float(np.abs(a - b).max())
                    entry["vision_cosine"] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                    entry["vision_ms"] = got.get("visionMs")
                row["cases"][name] = entry
            results[config] = row
            print(config, json.dumps({k: v for k, v in row.items() if k not in ("served", "cases", "console_tail")}))
            for name, entry in row["cases"].items():
                print("  ", name, json.dumps({k: v for k, v in entry.items() if k != "tokens"})[:600])
    httpd.shutdown()
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
