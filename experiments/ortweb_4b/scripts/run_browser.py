"""Drives headless Debian Chromium (playwright; software WebGPU: SwiftShader) through
page/harness.mjs over SITE (index.html, harness.mjs, ort/, graphs/, cases.json, served with
COOP/COEP by serve.py), samples the RSS of every Chromium process each second, and compares the
page's answer with the reference in cases.json (onnxruntime CPU on the same graphs).

usage: python run_browser.py SITE OUT_JSON QUERY [TIMEOUT_S]   (QUERY e.g. "ep=webgpu&steps=4")"""

import json
import sys
import threading
import time
from pathlib import Path

import psutil
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).parents[2] / "ortweb" / "scripts"))
from serve import server  # noqa: E402  (experiments/ortweb's: COOP/COEP, no caching)

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-extensions", "--enable-unsafe-webgpu"]


def chromium_rss() -> dict:
    rows = {}
    for p in psutil.process_iter(["name", "cmdline", "memory_info"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "chromium" not in cmd or p.info["memory_info"] is None:
            continue
        kind = next((part.split("=", 1)[1] for part in (p.info["cmdline"] or []) if part.startswith("--type=")), "browser")
        rows[kind] = rows.get(kind, 0) + p.info["memory_info"].rss
    return rows


def main(site: str, out: str, query: str, timeout: str = "1500") -> None:
    reference = {c["name"]: c for c in json.loads((Path(site) / "cases.json").read_text())["cases"]}
    httpd = server(site, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append((time.time(), chromium_rss()))
            time.sleep(1)

    threading.Thread(target=sample, daemon=True).start()
    console = []
    started = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
        page = browser.new_page()
        page.on("console", lambda m: (console.append(f"{m.type}: {m.text}"), print("console", m.type, m.text[:300], flush=True)))
        page.on("crash", lambda: print("PAGE CRASHED", flush=True))
        page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html?{query}")
        try:
            page.locator("body[data-state=done]").wait_for(timeout=float(timeout) * 1000)
            probe = page.evaluate("window.probeResult")
        except Exception as error:  # a crash or a timeout: keep what the log says
            probe = {"driver_error": str(error)[:500]}
        browser.close()
    stop.set()
    wall = time.perf_counter() - started
    peak_total = max((sum(s.values()) for _, s in samples), default=0)
    peak_by_kind = {}
    for _, s in samples:
        for kind, rss in s.items():
            peak_by_kind[kind] = max(peak_by_kind.get(kind, 0), rss)
    probe["page_wall_s"] = wall
    probe["peak_rss_total_gib"] = peak_total / 2**30
    probe["peak_rss_by_kind_gib"] = {k: v / 2**30 for k, v in peak_by_kind.items()}
    probe["console_tail"] = console[-30:]
    for name, got in (probe.get("cases") or {}).items():
        ref = reference[name]["reference"]
        same = 0
        for a, b in zip(ref["tokens"], got["tokens"]):
            if a != b:
                break
            same += 1
        got["identical_leading_tokens"] = f"{same}/{len(ref['tokens'])}"
        deltas = [max(abs(x - y) for x, y in zip(r["logits"], g)) for r, g in zip(ref["top"], got["top"]) if g]
        got["max_abs_top20_logit_delta"] = max(deltas) if deltas else None
        got["reference_tokens"] = ref["tokens"]
        if "reference_features_norm" in reference[name]:
            got["reference_features_norm"] = reference[name]["reference_features_norm"]
        got.pop("top", None)
    Path(out).write_text(json.dumps(probe, indent=1))
    print(json.dumps({k: v for k, v in probe.items() if k != "console_tail"}, indent=1)[:6000])


if __name__ == "__main__":
    main(*sys.argv[1:])
