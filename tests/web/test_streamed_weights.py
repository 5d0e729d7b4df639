"""LiteRT.js 2.5.3 streams a split graph's quantized weights to WebGPU with none of them copied into
its wasm heap (docs/web-streamed-weights.md): the tiny bundle's int8 decoder, split by
split_weights(QUANTIZED_TYPES) and loaded by tests/web/pages/litertjs_streamed/probe.js's
`scratch_rereadable` mode, gives the outputs `loadAndCompile` gives (to float rounding), on
SwiftShader WebGPU.
Guards the workaround against a LiteRT.js update."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from modelforge.web.split_weights import QUANTIZED_TYPES, external_extent, split_weights

from .test_browser import BASE_FLAGS, CHROMIUM, WEBGPU, playwright  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
PAGE = Path(__file__).resolve().parent / "pages" / "litertjs_streamed"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def probe_site(tiny_web_bundle, tmp_path_factory):
    """The tiny bundle plus probe/: the int8 variant's decoder as NAME.tflite and its split pair."""
    site = tmp_path_factory.mktemp("streamed") / "site"
    shutil.copytree(tiny_web_bundle, site)
    shutil.copytree(PAGE, site / "probe")
    bundle = json.loads((tiny_web_bundle / "bundle.json").read_text())
    (variant,) = [v for v in bundle["variants"] if v["name"] == "tiny-int8-images"]
    source = tiny_web_bundle / variant["files"]["model"]["url"]
    name = "decoder"
    shutil.copy(source, site / "probe" / f"{name}.tflite")
    result = split_weights(source, site / "probe" / f"{name}.q.graph.tflite", site / "probe" / f"{name}.q.weights",
                           element_types=QUANTIZED_TYPES)
    assert result.external_buffers > 0
    extent = external_extent(site / "probe" / f"{name}.q.graph.tflite")
    (site / "probe" / f"{name}.q.json").write_text(json.dumps(extent))
    return site, name


def _run(playwright, url: str) -> tuple[dict, list[str]]:  # noqa: F811
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=[*BASE_FLAGS, *WEBGPU])
    console: list[str] = []
    try:
        page = browser.new_page()
        page.on("console", lambda message: console.append(message.text))
        page.goto(url)
        page.locator("body[data-state=done]").wait_for(state="attached", timeout=120_000)
        return json.loads(page.get_attribute("body", "data-result")), console
    finally:
        browser.close()


def test_int8_decoder_streams_past_the_heap(probe_site, playwright):  # noqa: F811
    from modelforge.web.serve import serve

    site, name = probe_site
    server = serve(site)
    try:
        inline, _ = _run(playwright, f"{server.url}probe/index.html?graph={name}&mode=inline")
        streamed, console = _run(playwright, f"{server.url}probe/index.html?graph={name}&mode=scratch_rereadable")
    finally:
        server.close()
    assert "error" not in inline, inline
    assert "error" not in streamed, (streamed, console[-20:])
    assert streamed["fully_accelerated"] is True
    assert any("[StreamWeights] Starting loading session" in line for line in console)
    assert streamed["mapped"]["calls"] > 0  # every quantized weight was mapped onto the one scratch region
    assert streamed["outputs"].keys() == inline["outputs"].keys()
    for key, expected in inline["outputs"].items():
        difference = max(abs(a - b) for a, b in zip(streamed["outputs"][key], expected))
        # 2.1e-5 measured (the streamed weights go through the delegate's GPU-side conversion, the
        # inline ones through its CPU-side one); the int8 graph on WebGPU is 0.35-1.1 from the interpreter
        assert difference <= 1e-4, f"{key}: {difference}"
