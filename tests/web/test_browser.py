"""The real thing: the bundle with the tiny model's .task, served by `serve`, in headless Debian
Chromium (software WebGPU: SwiftShader) driven by playwright.

Needs /usr/bin/chromium (apt-get install chromium), the playwright Python package (never its own
browser download) and web/node_modules (npm ci --prefix web). The tiny model is exported with
litert-torch once per session (conftest.tiny_task)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from modelforge.web.layout import Variant, write_bundle
from modelforge.web.serve import serve
from modelforge.web.taskfile import gemma_params, read_task, write_task

from .conftest import ROOT, TINY_CACHE_LENGTH, WEB_DIR, fake_tflite


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
    pytest.mark.skipif(not (WEB_DIR / "node_modules").is_dir(), reason="web runtime not vendored: npm ci --prefix web"),
]

BASE_FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
]
WEBGPU = ["--enable-unsafe-webgpu"]
# data-state values the app ends in (read with selectors: playwright's wait_for_function evaluates
# strings, which the page's CSP rightly forbids)
SETTLED = "body[data-state=ready], body[data-state=error], body[data-state=unsupported]"
ANSWERED = "body[data-state=ready], body[data-state=ready-with-error], body[data-state=error]"


@pytest.fixture(scope="module")
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def runtime():
    from modelforge.web.vendor import runtime_files

    return runtime_files(WEB_DIR)


@pytest.fixture(scope="module")
def tiny_bundle(tiny_web_bundle):
    """The web_bundle target as `modelforge build manifests/tiny-medgemma-litertlm.yaml` wrote it."""
    return tiny_web_bundle


class Session:
    """A fresh browser (fresh profile) with every request, console line and page error recorded."""

    def __init__(self, playwright, flags):
        self.browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=[*BASE_FLAGS, *flags]
        )
        self.context = self.browser.new_context()
        self.requests: list[str] = []
        self.console: list[str] = []
        self.page_errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def open(self, url: str, timeout_ms: int = 120_000) -> str:
        self.page.goto(url)
        self.page.locator(SETTLED).wait_for(timeout=timeout_ms)
        return self.state()

    def state(self) -> str:
        return self.page.get_attribute("body", "data-state")

    def text(self, selector: str) -> str:
        return self.page.inner_text(selector) if self.page.is_visible(selector) else ""

    def diagnostics(self) -> str:
        return (f"state={self.state()}\nstatus={self.text('#status')}\nerrors={self.text('#errors')}\n"
                f"notices={self.text('#notices')}\npage errors={self.page_errors}\n"
                f"console (last 30)=\n" + "\n".join(self.console[-30:]))

    def close(self):
        self.context.close()
        self.browser.close()


@pytest.fixture
def session_factory(playwright):
    sessions = []

    def make(flags):
        session = Session(playwright, flags)
        sessions.append(session)
        return session

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def gate_bundle(small_task, runtime, tmp_path):
    """The real runtime with a stand-in model: the WebGPU gate stops before any model is fetched."""
    out = tmp_path / "gate-bundle"
    write_bundle(out, variants=[Variant(name="stand-in", task=small_task, label="Stand-in", max_tokens=8)],
                 runtime=runtime, title="gate")
    return out


def _hosts(urls):
    return {urlsplit(u).netloc for u in urls if not u.startswith(("data:", "blob:"))}


def test_webgpu_gate_without_the_flag(gate_bundle, session_factory):
    """Headless Linux Chromium without --enable-unsafe-webgpu: no adapter → a plain message, no model download."""
    with serve(gate_bundle) as server:
        session = session_factory([])
        assert session.open(server.url) == "unsupported", session.diagnostics()
        errors = session.text("#errors")
        assert "WebGPU" in errors and "--enable-unsafe-webgpu" in errors and "Chrome" in errors
        assert not any("/models/" in u for u in session.requests)
        assert session.page.evaluate("crossOriginIsolated") is True


def test_webgpu_gate_without_navigator_gpu(gate_bundle, session_factory):
    with serve(gate_bundle) as server:
        session = session_factory(["--disable-webgpu", *WEBGPU])
        # init scripts run through the DevTools protocol, not subject to the page's CSP
        session.page.add_init_script("Object.defineProperty(Navigator.prototype, 'gpu', {get: () => undefined})")
        assert session.open(server.url) == "unsupported", session.diagnostics()
        assert "does not offer WebGPU" in session.text("#errors")


@pytest.mark.parametrize("variant", ["tiny-float", "tiny-int8"])  # LiteRT.js (first in the bundle), MediaPipe
def test_tiny_model_generates_on_webgpu(tiny_bundle, session_factory, variant):
    with serve(tiny_bundle) as server:
        session = session_factory(WEBGPU)
        started = time.monotonic()
        state = session.open(server.url + ("" if variant == "tiny-float" else f"?variant={variant}"))
        load_seconds = time.monotonic() - started
        assert state == "ready", session.diagnostics()
        assert session.page.get_attribute("body", "data-variant") == variant
        assert session.page.evaluate("crossOriginIsolated") is True
        assert session.page.evaluate("typeof navigator.gpu") == "object"
        assert "downloaded" in session.text("#model-info")
        assert "random weights" in session.text("#model-info")  # the tiny model's gibberish is expected, and said

        session.page.fill("#prompt", "What are common symptoms of anemia?")
        started = time.monotonic()
        session.page.click("#send")
        session.page.locator(ANSWERED).wait_for(timeout=240_000)
        generate_seconds = time.monotonic() - started
        answer = session.page.inner_text("#answer")
        ARTIFACTS.mkdir(exist_ok=True)
        session.page.screenshot(path=str(ARTIFACTS / f"web-{variant}.png"), full_page=True)
        assert session.state() == "ready", session.diagnostics()
        assert answer.strip(), session.diagnostics()
        assert not session.page.is_visible("#errors"), session.diagnostics()
        assert not session.page_errors
        mode = session.page.get_attribute("#answer", "data-stream-mode")
        chunks = int(session.page.get_attribute("#answer", "data-chunks"))
        assert chunks >= 2  # it streamed
        print(f"\nmodel ready in {load_seconds:.1f} s; answer ({len(answer)} chars, {chunks} {mode} chunks) "
              f"in {generate_seconds:.1f} s: {answer[:120]!r}")

        # Second visit: the model comes from Cache Storage, not the network.
        model_url = next(u for u in session.requests if "/models/" in u)
        before = len(session.requests)
        session.page.reload()
        session.page.locator(SETTLED).wait_for(timeout=120_000)
        assert session.page.get_attribute("body", "data-variant") == variant
        assert session.state() == "ready", session.diagnostics()
        assert "stored in this browser" in session.text("#model-info")
        assert model_url not in session.requests[before:]

        # Nothing ever left 127.0.0.1.
        assert _hosts(session.requests) == {f"127.0.0.1:{server.port}"}, session.requests


def test_image_needs_a_multimodal_variant(tiny_bundle, session_factory, tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db00000000049454e44ae426082"))
    with serve(tiny_bundle) as server:
        session = session_factory(WEBGPU)
        assert session.open(server.url + "?variant=tiny-int8") == "ready", session.diagnostics()  # MediaPipe: text only
        session.page.set_input_files("#image", str(png))
        note = session.page.locator("#image-note")
        note.wait_for(state="visible", timeout=10_000)
        assert "multimodal" in note.inner_text()
        session.page.fill("#prompt", "What is in this image?")
        session.page.click("#send")
        assert session.state() == "ready"  # refused before any generation
        assert not session.page.is_visible("#answer-box")
        session.page.click("#clear-image")
        assert not session.page.is_visible("#image-note")


def test_fallback_to_the_next_variant_and_stop(tiny_task, runtime, tmp_path, session_factory):
    """Variant 1 arrives damaged (SHA-256 mismatch), variant 2 is intact but the runtime cannot run it
    (a graph that is no real model), variant 3 works: the app says why for each and runs the third."""
    unrunnable = tmp_path / "unrunnable.task"
    entries = read_task(tiny_task)
    write_task(unrunnable, tflite=fake_tflite(tmp_path / "bogus.tflite", size=65_536),
               tokenizer=_write(tmp_path / "tok.model", entries["TOKENIZER_MODEL"]), params=gemma_params())
    out = tmp_path / "bundle"
    manifest = write_bundle(
        out,
        variants=[
            Variant(name="damaged", task=tiny_task, label="Damaged variant", max_tokens=TINY_CACHE_LENGTH),
            Variant(name="unrunnable", task=unrunnable, label="Unrunnable variant", max_tokens=TINY_CACHE_LENGTH),
            Variant(name="good", task=tiny_task, label="Good variant", max_tokens=TINY_CACHE_LENGTH),
        ],
        runtime=runtime,
        title="fallback",
    )
    damaged = out / manifest["variants"][0]["url"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.unlink()  # never write through a link
    damaged.write_bytes(bytes(data))
    with serve(out) as server:
        session = session_factory(WEBGPU)
        assert session.open(server.url) == "ready", session.diagnostics()
        notices = session.text("#notices")
        assert "Damaged variant" in notices and "SHA-256 mismatch" in notices
        assert "Unrunnable variant: the runtime could not start it" in notices and "Good variant" in notices
        assert "Good variant" in session.text("#model-info")

        session.page.fill("#prompt", "Explain the difference between type 1 and type 2 diabetes in detail.")
        session.page.click("#send")
        session.page.locator("#answer").filter(has_text=re.compile(r"\S")).wait_for(timeout=120_000)
        session.page.click("#stop")
        session.page.locator(ANSWERED).wait_for(timeout=120_000)
        assert session.state() == "ready", session.diagnostics()
        assert "stopped" in session.page.inner_text("#answer-state"), session.diagnostics()
        assert session.page.inner_text("#answer").strip()  # the partial answer stays
        assert not session.page.is_visible("#errors"), session.diagnostics()


def test_without_webgpu_litertjs_variants_run_on_the_cpu(tiny_bundle, tmp_path, session_factory):
    """No WebGPU adapter: LiteRT.js variants start on the wasm CPU backend and the page says so. The first
    variant's decoder is said (in bundle.json) to be 3 GiB, more than the CPU backend's 32-bit
    WebAssembly memory can take: the page refuses it before any download, says why, and starts the next."""
    import json
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    model = manifest["variants"][0]["files"]["model"]
    model["size"] = 3 * 1024**3
    model["chunk_sha256"] = model["chunk_sha256"] * -(-model["size"] // model["chunk_size"])
    (out / "bundle.json").unlink()  # never write through a link
    (out / "bundle.json").write_text(json.dumps(manifest))
    with serve(out) as server:
        session = session_factory([])
        assert session.open(server.url, timeout_ms=300_000) == "ready", session.diagnostics()
        assert session.page.get_attribute("body", "data-backend") == "wasm"
        notices = session.text("#notices")
        assert "runs on the CPU instead" in notices
        assert f"Could not use {manifest['variants'][0]['label']}: without WebGPU" in notices, notices
        assert "WebAssembly memory (4 GiB) cannot hold its 3.2 GB graph; use a browser with WebGPU" in notices, notices
        assert not any(model["url"] in url for url in session.requests)
        assert session.page.get_attribute("body", "data-variant") == manifest["variants"][1]["name"]
        assert "LiteRT.js" in session.text("#model-info") and "wasm" in session.text("#model-info")


def test_litertjs_fallback_on_a_damaged_graph(tiny_bundle, tmp_path, session_factory):
    """The float variant's decoder graph arrives damaged: its part's SHA-256 fails, the page says so,
    naming the file, and starts the next variant, whose files are intact."""
    import json
    import shutil

    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    damaged = out / manifest["variants"][0]["files"]["model"]["url"]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.unlink()
    damaged.write_bytes(bytes(data))
    with serve(out) as server:
        session = session_factory(WEBGPU)
        assert session.open(server.url, timeout_ms=300_000) == "ready", session.diagnostics()
        notices = session.text("#notices")
        assert manifest["variants"][0]["label"] in notices and "SHA-256 mismatch" in notices, notices
        assert f"file model ({manifest['variants'][0]['files']['model']['url']})" in notices, notices
        assert session.page.get_attribute("body", "data-variant") == manifest["variants"][1]["name"]
