#!/usr/bin/env python
"""Benchmark: a LiteRT.js web variant (images) of MedGemma 4B in the browser, at its real size.

The one combination `plan` lets through at 4B (docs/web-limits.md, "LiteRT.js variants (images) at
4B"): text decoder `dynamic_wi4b32_afp32`, vision encoder and projector `weight_only_wi8_afp32`.
Each phase is its own process, meant to run as one heavy run (flock + memory cap, see bench/README.md):

  build    a scratch project holding manifests/medgemma-1.5-litertlm.yaml with the bundle's text recipe
           set to the variant's (so the variant reuses the bundle's graphs: no second quantization),
           no parity section (the graphs' parity on random weights is bench_medgemma_4b's business), and
           the web target reduced to that one LiteRT.js variant; `modelforge plan --json` then
           `modelforge build --source-dir CKPT --store STORE --out OUT`; per step wall s and the peak RSS
           of the build's process tree
  browser  `modelforge serve OUT/web`, headless Debian Chromium (software WebGPU: SwiftShader) opens
           `?variant=NAME`: load time, the page's state, the backend of every graph, the Chromium process
           tree's RSS sampled throughout (peak per process kind), then one image question (the parity
           test card at the processor's size) and the answer's token count
  render   bench/RESULTS.md's section from the JSON

Results: --results JSON (both phases merge into it), a marked section of --markdown. Never raises on a
finding: an out-of-memory or a refused graph is recorded as what happened, with the page's own words.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from results_markdown import replace_section, verdict  # noqa: E402  (bench/ is the script's directory)

MANIFEST = ROOT / "manifests" / "medgemma-1.5-litertlm.yaml"
MARK = "bench:web_4b"
VARIANT = "medgemma-int4-images"
TEXT_RECIPE, VISION_RECIPE = "dynamic_wi4b32_afp32", "weight_only_wi8_afp32"
CHROMIUM = Path("/usr/bin/chromium")
GIB = 1 << 30
QUESTION = "Describe the chest X-ray findings."


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def modelforge(past_the_size_check: bool = False) -> list[str]:
    """The CLI; with past_the_size_check, as if LiteRT.js's heap were 4 GiB (the planner refuses this
    variant at 4B: that is the finding; the bench builds it anyway to show what the browser does)."""
    if not past_the_size_check:
        return [sys.executable, "-m", "modelforge.cli"]
    return [sys.executable, "-c", "import sys; from modelforge.web import limits; limits.MAX_LITERTJS_GRAPH_BYTES = 3 * 2**30; "
            "from modelforge.cli import main; sys.argv[0] = 'modelforge'; main()"]


def variant_name(stream_weights: bool) -> str:
    return VARIANT + "-streamed" if stream_weights else VARIANT


def scratch_project(base: Path, stream_weights: bool, cache_length: int | None = None, prefill_lengths: list[int] | None = None) -> Path:
    import yaml

    shutil.rmtree(base, ignore_errors=True)
    (base / "manifests").mkdir(parents=True)
    (base / "lock").mkdir()
    manifest = yaml.safe_load(MANIFEST.read_text())
    bundle = manifest["targets"]["bundle"]
    bundle["quantization"]["text_decoder"] = {"recipe": TEXT_RECIPE}
    bundle.pop("parity", None)
    manifest["targets"]["web"]["variants"] = [{
        "name": variant_name(stream_weights), "label": "MedGemma 1.5 4B · int4 text, int8 vision, reads images (LiteRT.js)", "from": "bundle",
        "runtime": "litertjs", "recipe": TEXT_RECIPE, "vision_recipe": VISION_RECIPE, "max_tokens": 600,
        **({"stream_weights": True} if stream_weights else {}),
    }]
    if cache_length:  # the `layers` phase: a shorter cache, fewer signatures
        bundle["cache_length"] = cache_length
        manifest["targets"]["web"]["variants"][0]["max_tokens"] = min(600, cache_length)
    if prefill_lengths:
        bundle["prefill_lengths"] = prefill_lengths
    target = base / "manifests" / MANIFEST.name
    target.write_text(yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True))
    return target


class TreeSampler:
    """RSS of a process and its descendants, sampled every `interval` s; peak of the sum, and per
    process (keyed by a label the caller derives from the command line)."""

    def __init__(self, root_pid: int, label=lambda process: process.name(), interval: float = 0.25):
        import psutil

        self.psutil, self.root, self.label, self.interval = psutil, root_pid, label, interval
        self.peak_total, self.peaks, self.phase_peaks, self.phase = 0, {}, {}, "(start)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def enter(self, phase: str) -> None:
        self.phase = phase

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = self.psutil.Process(self.root)
                processes = [root, *root.children(recursive=True)]
            except self.psutil.Error:
                processes = []
            total, kinds = 0, {}
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    kind = self.label(process)
                except self.psutil.Error:
                    continue
                total += rss
                kinds[kind] = kinds.get(kind, 0) + rss
            self.peak_total = max(self.peak_total, total)
            for kind, rss in kinds.items():
                self.peaks[kind] = max(self.peaks.get(kind, 0), rss)
            self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), total)
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_total_bytes": self.peak_total, "peak_by_kind_bytes": self.peaks, "peak_by_phase_bytes": self.phase_peaks}


def own_cgroup() -> dict:
    """The memory cgroup (v1) this process runs in: its limit and the usage peak so far."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        parts = line.split(":")
        if "memory" in parts[1].split(","):
            base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
            read = lambda name: int((base / name).read_text()) if (base / name).exists() else None  # noqa: E731
            return {"cgroup": str(base), "limit_bytes": read("memory.limit_in_bytes"),
                    "max_usage_bytes": read("memory.max_usage_in_bytes"), "failcnt": read("memory.failcnt")}
    return {}


def run_build(args) -> dict:
    manifest = scratch_project(args.work / "project", args.stream_weights)
    # Loaded whole, the variant is refused by plan (the finding); streamed, it is planned as is.
    past = not args.stream_weights
    store, out = args.work / "store", args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    refused = subprocess.run([*modelforge(), "plan", str(manifest), "--source-dir", str(args.checkpoint), "--store", str(store)],
                             capture_output=True, text=True, env=env)
    plan = subprocess.run([*modelforge(past_the_size_check=past), "plan", str(manifest), "--source-dir", str(args.checkpoint), "--store", str(store), "--json"],
                          capture_output=True, text=True, env=env)
    result: dict = {"manifest_variant": {"recipe": TEXT_RECIPE, "vision_recipe": VISION_RECIPE}, "plan_rc": plan.returncode,
                    "plan_as_is": {"rc": refused.returncode, "said": refused.stderr.strip()[-1500:]}}
    if plan.returncode:
        result["plan_error"] = plan.stderr[-3000:]
        return result
    planned = json.loads(plan.stdout)
    result["planned_steps"] = [step.get("name") for step in planned.get("steps", [])]
    command = [*modelforge(past_the_size_check=past), "build", str(manifest), "--source-dir", str(args.checkpoint), "--store", str(store), "--out", str(out)]
    log("build: " + " ".join(command))
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=args.work / "project")
    sampler = TreeSampler(process.pid, label=lambda p: "build").start()
    steps: dict = {}
    lines = []
    for raw in process.stdout:
        line = raw.decode(errors="replace")
        lines.append(line)
        sys.stderr.write(line)
        text = line.strip()
        if match := re.match(r"run\s+(\S+) \((\S+)\)", text):
            steps[match.group(1)] = {"kind": match.group(2)}
            sampler.enter(match.group(1))
        elif match := re.match(r"done\s+(\S+) in ([0-9.]+)s", text):
            steps.setdefault(match.group(1), {})["wall_s"] = float(match.group(2))
            sampler.enter("(between steps)")
    rc = process.wait()
    memory = sampler.stop()
    for name, peak in memory["peak_by_phase_bytes"].items():
        if name in steps:
            steps[name]["peak_tree_rss_bytes"] = peak
    web = out / "web"
    bundle = json.loads((web / "bundle.json").read_text()) if (web / "bundle.json").exists() else {}
    variant = next((v for v in bundle.get("variants", []) if v.get("name") == variant_name(args.stream_weights)), {})
    result.update({
        "rc": rc, "wall_s": round(time.perf_counter() - started, 1), "steps": steps,
        "peak_tree_rss_bytes": memory["peak_total_bytes"], "cgroup": own_cgroup(),
        "tail": "".join(lines)[-3000 if rc else -600:],
        "graphs": {logical: entry.get("size") for logical, entry in (variant.get("files") or {}).items()},
        "graphs_total_bytes": sum(entry.get("size", 0) for logical, entry in (variant.get("files") or {}).items()
                                  if entry.get("path", entry.get("url", "")).endswith(".tflite")),
        "streamed": variant.get("streamed"),
        "store_bytes": _du(store), "out_bytes": _du(out),
    })
    return result


def run_layers(args) -> dict:
    """Where LiteRT.js's heap goes, on a decoder of MedGemma 4B's widths (and real vocabulary and tied
    head) with `--layers` layers (one vision layer; `modelforge.testing.gemma3_checkpoint`, the 4B
    checkpoint's tokenizer), `--cache-length` and `--prefill-lengths`: build the streamed variant, load
    it in Chromium, read the heap after each graph (body[data-streamed])."""
    from modelforge.steps.parity_phases import test_cards
    from modelforge.testing.gemma3_checkpoint import write_checkpoint

    prefill = [int(length) for length in args.prefill_lengths.split(",")]
    key = f"L{args.layers}-C{args.cache_length}-P{'_'.join(map(str, prefill))}"
    base = args.work / "layers" / key
    checkpoint = base / "checkpoint"
    if args.layers == 34:  # all of MedGemma 4B: the full checkpoint itself (its 27 vision layers too)
        checkpoint = args.checkpoint
    else:
        write_checkpoint(checkpoint, args.layers, 1)
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
            shutil.copyfile(args.checkpoint / name, checkpoint / name)
    manifest = scratch_project(base / "project", True, args.cache_length, prefill)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    build = subprocess.run([*modelforge(past_the_size_check=True), "build", str(manifest), "--source-dir", str(checkpoint), "--store", str(base / "store"),
                            "--out", str(base / "out")], capture_output=True, text=True, env=env, cwd=base / "project")
    result: dict = {"layers": args.layers, "cache_length": args.cache_length, "prefill_lengths": prefill,
                    "build": {"rc": build.returncode, "wall_s": round(time.perf_counter() - started, 1)}}
    if build.returncode:
        result["build"]["tail"] = (build.stdout + build.stderr)[-2000:]
        return {key: result}
    cards = base / "cards"
    cards.mkdir(exist_ok=True)
    run = drive(base / "out" / "web", variant_name(True), "webgpu", test_cards((896, 896), cards)[0], base / "profile", 900, 300, 1)
    result["browser"] = {name: run.get(name) for name in ("state", "load_s", "errors", "streamed", "heap_probe")}
    shutil.rmtree(base / "store", ignore_errors=True)  # ~2-6 GB each; the figures are what is kept
    shutil.rmtree(base / "out", ignore_errors=True)
    if checkpoint != args.checkpoint:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return {key: result}


TINY_MANIFEST = ROOT / "manifests" / "tiny-medgemma-litertlm.yaml"
TINY_VARIANT = "tiny-int4-images"


def tiny_project(base: Path) -> Path:
    """manifests/tiny-medgemma-litertlm.yaml with the web target reduced to tiny-float and the variant
    under test (int4 text, int8 weight-only vision), its source path made absolute."""
    import yaml

    (base / "manifests").mkdir(parents=True, exist_ok=True)
    (base / "lock").mkdir(exist_ok=True)
    manifest = yaml.safe_load(TINY_MANIFEST.read_text())
    manifest["source"]["path"] = str(ROOT / "fixtures" / "tiny-medgemma")
    # The variant's graphs get the bundle's parity check; int4 on the tiny model's random weights agrees
    # on ~0.23 of greedy tokens (the manifest's comment), below the int8 threshold: relaxed here so
    # the build records the figures instead of stopping.
    manifest["targets"]["bundle"]["parity"].update({"min_top1_agreement": 0.1, "max_kl": 5.0})
    manifest["targets"]["web"]["variants"] = [v for v in manifest["targets"]["web"]["variants"] if v["name"] == "tiny-float"] + [{
        "name": TINY_VARIANT, "label": "Tiny MedGemma · int4 text, int8 vision (LiteRT.js)", "from": "bundle", "runtime": "litertjs",
        "recipe": TEXT_RECIPE, "vision_recipe": VISION_RECIPE, "max_tokens": 64}]
    target = base / "manifests" / TINY_MANIFEST.name
    target.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return target


def tiny_reference(card: Path, max_tokens: int, stop_tokens: list[str]) -> dict:
    """PyTorch float32's greedy image answer on the processor's inputs, causal in the image block (as
    tests/web/test_fidelity.py computes it)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from modelforge.steps.parity_phases import reference_image_answers

    tiny = ROOT / "fixtures" / "tiny-medgemma"
    processor = AutoProcessor.from_pretrained(tiny)
    model = Gemma3ForConditionalGeneration.from_pretrained(tiny, dtype=torch.float32).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        prompt = processor(text=text, images=image.convert("RGB"), add_special_tokens=False)["input_ids"][0]
    answer = reference_image_answers(model, processor, QUESTION, max_tokens - len(prompt), stop_tokens, [card])["causal"][0]
    return {"prompt_ids": [int(t) for t in prompt], "ids": [int(t) for t in answer]}


def run_tiny(args) -> dict:
    """Step one, on the tiny model: build the variant, then drive the page on WebGPU and on wasm and
    compare its greedy image answer with PyTorch float32's (leading identical tokens)."""
    from modelforge.steps.parity_phases import test_cards

    base = args.work / "tiny"
    manifest = tiny_project(base)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    started = time.perf_counter()
    build = subprocess.run([*modelforge(), "build", str(manifest), "--store", str(base / "store"), "--out", str(base / "out")],
                           capture_output=True, text=True, env=env, cwd=base)
    result: dict = {"build": {"rc": build.returncode, "wall_s": round(time.perf_counter() - started, 1), "tail": (build.stdout + build.stderr)[-3000:]}}
    if build.returncode:
        return result
    lock = next((base / "lock").glob("*.lock"), None)
    if lock:
        import yaml

        checks = (yaml.safe_load(lock.read_text()) or {}).get("checks", {})
        result["build"]["parity"] = {name: check for name, check in checks.items() if TINY_VARIANT in name}
    web = base / "out" / "web"
    bundle = json.loads((web / "bundle.json").read_text())
    variant = next(v for v in bundle["variants"] if v["name"] == TINY_VARIANT)
    result["graphs"] = {logical: entry.get("size") for logical, entry in variant["files"].items()}
    size = variant["generation"]["image"]
    cards = base / "cards"
    cards.mkdir(exist_ok=True)
    card = test_cards((size["height"], size["width"]), cards)[0]
    import yaml

    stop_tokens = yaml.safe_load(TINY_MANIFEST.read_text())["targets"]["bundle"]["metadata"]["stop_tokens"]
    reference = tiny_reference(card, variant["max_tokens"], stop_tokens)
    result["reference"] = reference
    for backend in ("wasm", "webgpu"):
        # On WebGPU the int4 decoder's compile does not return (the float one takes seconds): bounded.
        run = drive(web, TINY_VARIANT, backend, card, base / "profile", 240 if backend == "webgpu" else 600, 600, None)
        answer = run.get("answer") or {}
        ids, expected = answer.get("ids") or [], reference["ids"]
        leading = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), min(len(ids), len(expected)))
        run["versus_pytorch"] = {"prompt_identical": answer.get("prompt_ids") == reference["prompt_ids"], "leading_identical": leading,
                                 "reference_tokens": len(expected), "agreement": round(leading / max(len(expected), 1), 3),
                                 "same_positions": sum(a == b for a, b in zip(ids, expected))}
        result[backend] = run
    return result


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def _chromium_kind(process) -> str:
    command = " ".join(process.cmdline())
    match = re.search(r"--type=([\w-]+)", command)
    if not match:
        return "browser" if "chrom" in process.name() else process.name()
    kind = match.group(1)
    if kind == "utility" and (service := re.search(r"--utility-sub-type=([\w.]+)", command)):
        kind += ":" + service.group(1).split(".")[-1]
    return kind


def run_browser(args) -> dict:
    from modelforge.steps.parity_phases import test_cards

    web = args.work / "out" / "web"
    bundle = json.loads((web / "bundle.json").read_text())
    name = variant_name(args.stream_weights)
    variant = next(v for v in bundle["variants"] if v["name"] == name)
    size = (variant.get("generation") or {}).get("image") or {"height": 896, "width": 896}
    cards = args.work / "cards"
    cards.mkdir(exist_ok=True)
    card = test_cards((size["height"], size["width"]), cards)[0]
    return drive(web, name, args.backend, card, args.work / "profile", args.load_timeout, args.answer_timeout, args.tokens)


# In the page, after it settled: LiteRT.js's own wasm instance (the module the page imported): its heap now,
# and the largest block its malloc still gives (halving from 2 GiB to 1 MiB precision), freed at once.
HEAP_PROBE = """async (url) => {
  const core = await import(new URL(url, location.href).href);
  let wasm;
  try { wasm = core.getGlobalLiteRt().liteRtWasm; } catch (err) { return {error: String(err)}; }
  const heap = wasm.HEAPU8.length;
  let low = 0, high = 2 ** 31;
  while (high - low > 2 ** 20) {
    const size = Math.floor((low + high) / 2);
    let ptr = 0;
    try { ptr = wasm._malloc(size); } catch (err) { ptr = 0; }
    if (ptr) { wasm._free(ptr); low = size; } else { high = size; }
  }
  return {heap_bytes_before: heap, heap_bytes_after: wasm.HEAPU8.length, largest_malloc_bytes: low};
}"""


def drive(web: Path, variant: str, backend: str, card: Path, profile: Path, load_timeout: float, answer_timeout: float,
          stop_after: int | None) -> dict:
    """Serve `web`, open `?variant=` in headless Chromium (on-disk profile), wait until the page settles,
    then (when ready) ask QUESTION about `card` and read the prompt and answer ids the page used."""
    from playwright.sync_api import sync_playwright

    from modelforge.web.serve import serve

    result: dict = {"variant": variant, "backend_requested": backend,
                    "chromium": subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip()}
    console: list[str] = []
    errors: list[str] = []
    flags = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--disable-default-apps", "--disable-extensions", "--enable-unsafe-webgpu"]
    with serve(web) as server, sync_playwright() as playwright:
        shutil.rmtree(profile, ignore_errors=True)
        context = playwright.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True, args=flags)
        browser_pid = _browser_pid()
        sampler = TreeSampler(browser_pid, label=_chromium_kind).start() if browser_pid else None
        page = context.new_page()
        # The renderer's main thread is busy for minutes at a time while a graph compiles (software WebGPU,
        # a shared 2-core machine): every read of the page waits that long.
        page.set_default_timeout(load_timeout * 1000)
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:500]))
        page.on("pageerror", lambda e: errors.append(str(e)[:2000]))
        page.on("crash", lambda _: errors.append("page crashed (renderer process gone)"))
        url = server.url + f"?variant={variant}" + ("&backend=wasm" if backend == "wasm" else "")
        # A renderer whose main thread never comes back (a graph whose compile does not return) blocks every
        # read of the page: past the load timeout, the browser is killed and that is recorded.
        watchdog = threading.Timer(load_timeout + 15, _kill_tree, [browser_pid, result])
        watchdog.daemon = True
        watchdog.start()
        started = time.perf_counter()
        if sampler:
            sampler.enter("load")
        statuses: list = []
        try:
            page.goto(url)
            deadline = time.monotonic() + load_timeout
            while time.monotonic() < deadline:
                state = page.get_attribute("body", "data-state")
                status = page.inner_text("#status") if page.is_visible("#status") else ""
                if not statuses or statuses[-1][1] != status:
                    statuses.append((round(time.perf_counter() - started, 1), status))
                    log(f"  {statuses[-1][0]:7.1f} s  {state}  {status}")
                if state in ("ready", "error", "unsupported"):
                    break
                time.sleep(0.5)
            result["state"] = page.get_attribute("body", "data-state")
            watchdog.cancel()
            result["load_s"] = round(time.perf_counter() - started, 1)
            result["variant_started"] = page.get_attribute("body", "data-variant")
            result["backend"] = page.get_attribute("body", "data-backend")
            result["streamed"] = json.loads(page.get_attribute("body", "data-streamed") or "null")
            for name in ("errors", "notices", "model-info"):
                result[name.replace("-", "_")] = page.inner_text(f"#{name}") if page.is_visible(f"#{name}") else ""
            # the page names each graph that fell back to the CPU in a notice; the others run on the backend asked
            result["graph_backends"] = {graph: ("wasm" if f"{graph} could not be compiled for WebGPU" in result["notices"] else backend)
                                        for graph in ("model", "embedder", "vision_encoder", "vision_adapter")} if result["state"] == "ready" else None
            if result["state"] == "ready" and result["variant_started"] == variant:
                if sampler:
                    sampler.enter("answer")
                page.set_input_files("#image", str(card))
                page.locator("#preview").wait_for(state="visible", timeout=60_000)
                page.fill("#prompt", QUESTION)
                asked = time.perf_counter()
                page.click("#send")
                first_token = None
                deadline = time.monotonic() + answer_timeout
                while time.monotonic() < deadline:
                    tokens = [t for t in (page.get_attribute("#answer", "data-tokens") or "").split(",") if t]
                    if tokens and first_token is None:
                        first_token = round(time.perf_counter() - asked, 1)
                        log(f"  first token after {first_token} s")
                    if page.get_attribute("body", "data-state") in ("ready", "ready-with-error", "error") and time.perf_counter() - asked > 1:
                        break
                    if stop_after and len(tokens) >= stop_after and page.is_visible("#stop"):
                        page.click("#stop")
                    time.sleep(0.5)
                answer_ids = [int(t) for t in (page.get_attribute("#answer", "data-tokens") or "").split(",") if t]
                prompt_ids = [int(t) for t in (page.get_attribute("#answer", "data-prompt-tokens") or "").split(",") if t]
                result["answer"] = {"s": round(time.perf_counter() - asked, 1), "first_token_s": first_token,
                                    "prompt_ids": prompt_ids, "prompt_tokens": len(prompt_ids), "ids": answer_ids, "tokens": len(answer_ids),
                                    "text_head": page.inner_text("#answer")[:200], "state": page.get_attribute("body", "data-state"),
                                    "state_line": page.inner_text("#answer-state") if page.is_visible("#answer-state") else ""}
                result["errors"] = page.inner_text("#errors") if page.is_visible("#errors") else ""
        except Exception as err:  # a crashed renderer or a closed browser is a finding, not a harness failure
            result["exception"] = f"{type(err).__name__}: {str(err)[:2000]}"
            result.setdefault("load_s", round(time.perf_counter() - started, 1))
            if "Timeout" in type(err).__name__:  # closing a browser whose renderer is stuck would wait forever
                _kill_tree(browser_pid, result)
        watchdog.cancel()
        core_url = json.loads((web / "bundle.json").read_text())["litertjs"]["files"]["litertjs_core.mjs"]["url"]
        try:
            result["heap_probe"] = None if result.get("killed_after_s") else page.evaluate(HEAP_PROBE, core_url)
        except Exception as err:  # noqa: BLE001  (recorded: the page may be gone)
            result["heap_probe"] = {"error": f"{type(err).__name__}: {str(err)[:500]}"}
        result["statuses"] = statuses
        result["memory"] = sampler.stop() if sampler else None
        result["console_tail"] = console[-40:]
        result["page_errors"] = errors
        result["cgroup"] = own_cgroup()
        try:
            context.close()
        except Exception:  # noqa: BLE001  (the browser may already be gone)
            pass
    return result


def _kill_tree(pid: int | None, result: dict) -> None:
    import psutil

    if pid is None:
        return
    result["killed_after_s"] = "load timeout: the page never settled; browser killed"
    try:
        root = psutil.Process(pid)
        for process in [*root.children(recursive=True), root]:
            process.kill()
    except psutil.Error:
        pass


def _browser_pid() -> int | None:
    import psutil

    me = psutil.Process()
    for child in me.children(recursive=True):
        try:
            if child.name().startswith("chrom") and "--type=" not in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def render_markdown(result: dict, mark: str = MARK) -> str:
    build, browser = result.get("build") or {}, result.get("browser") or {}
    gb = lambda b: f"{b / 1e9:.2f} GB" if isinstance(b, (int, float)) else "—"  # noqa: E731
    gib = lambda b: f"{b / GIB:.2f}" if isinstance(b, (int, float)) else "—"  # noqa: E731
    streamed = mark != MARK
    lines = [f"<!-- {mark} begin -->", "## LiteRT.js variant (images) of MedGemma 4B in the browser"
             + (", weights streamed to WebGPU (`bench/bench_web_4b.py --stream-weights`)" if streamed else " (`bench/bench_web_4b.py`)"), "",
             f"Run {result.get('date', '?')}; text `{TEXT_RECIPE}`, vision `{VISION_RECIPE}`, the synthetic 4B checkpoint "
             "(random weights). Memory: RSS of the process tree, sampled every 0.25 s.", ""]
    if tiny := result.get("tiny"):
        parity = next(iter(((tiny.get("build") or {}).get("parity") or {}).values()), {})
        lines += ["### Step one: the tiny model (`bench_web_4b.py tiny`)", "",
                  f"Build rc {(tiny.get('build') or {}).get('rc')}; the variant's graph parity in the interpreter (int4 on random weights): "
                  f"top-1 agreement {parity.get('top1_agreement', '—')}, mean KL {parity.get('mean_kl', '—')}, vision cosine {parity.get('vision_cosine', '—')}.", "",
                  "| backend asked | state | load s | graphs | prompt = processor's | leading tokens = PyTorch | answer tokens | notices / errors |",
                  "|---|---|---:|---|---|---:|---:|---|"]
        for backend in ("wasm", "webgpu"):
            run = tiny.get(backend) or {}
            versus = run.get("versus_pytorch") or {}
            graphs = ", ".join(f"{k} {v}" for k, v in (run.get("graph_backends") or {}).items()) or "—"
            stuck = f"did not settle in {run.get('load_s')} s; last console line: {(run.get('console_tail') or [''])[-1]}" if run.get("exception") else ""
            said = " ".join(filter(None, [run.get("notices"), run.get("errors"), stuck])).replace("\n", " ").replace("|", "/")[:300]
            lines.append(f"| {backend} | {run.get('state')} | {run.get('load_s')} | {graphs} | {versus.get('prompt_identical')} | "
                         f"{versus.get('leading_identical')} of {versus.get('reference_tokens')} | {(run.get('answer') or {}).get('tokens')} | {said or '—'} |")
        lines.append("")
    if build:
        said = (build.get("plan_as_is") or {}).get("said", "")
        lines += ["### Build", "", f"`modelforge plan` as is: rc {(build.get('plan_as_is') or {}).get('rc')}"
                  + (f" — {said[said.find('cannot run'):][:420]}…" if "cannot run" in said else "")
                  + (" (when this run was made; the planner has counted the KV cache buffers since and refuses this variant: "
                     "see the layers table below)" if streamed and not said else ""),
                  "", ("Built as planned: " if streamed else "Built with the planner's LiteRT.js size check switched off (bench only): ")
                  + f"rc {build.get('rc')}, {build.get('wall_s')} s, peak RSS summed over the build's processes {gib(build.get('peak_tree_rss_bytes'))} GiB "
                  "(file-backed pages included), under a 19 GiB memory cgroup on a shared 2-core machine.", "",
                  "| step | kind | wall s | peak RSS GiB |", "|---|---|---:|---:|"]
        for name, step in (build.get("steps") or {}).items():
            lines.append(f"| {name} | {step.get('kind', '')} | {step.get('wall_s', '—')} | {gib(step.get('peak_tree_rss_bytes'))} |")
        lines += ["", "| graph | bytes |", "|---|---:|"]
        for name, size in (build.get("graphs") or {}).items():
            lines.append(f"| {name} | {size:,} ({gb(size)}) |")
        lines.append("")
    if browser:
        memory = browser.get("memory") or {}
        lines += ["### Browser", "", f"{browser.get('chromium', '')}, backend asked: {browser.get('backend_requested')}.", "",
                  f"- state after loading: **{browser.get('state')}** in {browser.get('load_s')} s; backend {browser.get('backend')}; "
                  f"graphs {json.dumps(browser.get('graph_backends'))}"
                  + (f"; streamed weights (readers, bytes read, CPU mappings onto the scratch region): {json.dumps(browser.get('streamed'))}"
                     if browser.get("streamed") else ""),
                  f"- Chromium peak RSS (all processes) {gib(memory.get('peak_total_bytes'))} GiB; by kind "
                  + ", ".join(f"{k} {gib(v)}" for k, v in sorted((memory.get("peak_by_kind_bytes") or {}).items(), key=lambda kv: -kv[1])[:4]),
                  f"- errors: {(browser.get('errors') or browser.get('exception') or 'none')[:600]!r}",
                  f"- notices: {(browser.get('notices') or 'none')[:600]!r}",
                  f"- LiteRT.js's wasm heap afterwards (probe): {json.dumps(browser.get('heap_probe'))}"]
        if answer := browser.get("answer"):
            lines.append(f"- image question: {answer.get('prompt_tokens')} prompt tokens, {answer.get('tokens')} answer tokens in "
                         f"{answer.get('s')} s (first after {answer.get('first_token_s')} s), state {answer.get('state')}")
        lines += ["", f"Verdict: loads and answers at 4B: **{verdict(browser.get('state') == 'ready' and bool((browser.get('answer') or {}).get('tokens')))}**", ""]
    if layers := result.get("layers"):
        lines += ["### Where the heap goes: 4B-wide decoders with fewer layers (`bench_web_4b.py layers`)", "",
                  "Same widths, vocabulary and tied head as MedGemma 4B, one vision layer, weights streamed; heap: LiteRT.js's wasm "
                  "heap after each graph compiled (its high-water mark), or where the page says it failed.", "",
                  "| decoder layers | cache length | prefill lengths | state | heap after the decoder | heap after every graph | said |",
                  "|---:|---:|---|---|---:|---:|---|"]
        for run in sorted(layers.values(), key=lambda r: (r["layers"], -r["cache_length"])):
            browser = run.get("browser") or {}
            heap = (browser.get("streamed") or {}).get("heap") or {}
            said = browser.get("errors") or run["build"].get("tail") or ""
            grown = re.search(r"memory had grown to [\d.]+ of its 2 GiB", said)
            said = (grown.group(0) if grown else said[-220:]).replace("\n", " ").replace("|", "/")
            lines.append(f"| {run['layers']} | {run['cache_length']} | {', '.join(map(str, run['prefill_lengths']))} | {browser.get('state', 'build failed')} | "
                         f"{gb(heap.get('model'))} | {gb(max(heap.values()) if heap else None)} | {said if browser.get('state') != 'ready' else '—'} |")
        lines.append("")
    lines.append(f"<!-- {mark} end -->")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("phase", choices=["tiny", "build", "browser", "layers", "render"])
    parser.add_argument("--layers", type=int, default=8, help="layers: decoder layers at 4B widths")
    parser.add_argument("--cache-length", type=int, default=4096, help="layers: the KV cache length")
    parser.add_argument("--prefill-lengths", default="128,1024", help="layers: prefill lengths, comma-separated")
    parser.add_argument("--checkpoint", type=Path, default=BENCH / "out" / "medgemma_4b" / "checkpoint-full",
                        help="the synthetic 4B checkpoint (bench_medgemma_4b.py writes it)")
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "web_4b", help="scratch project, store, output, browser profile")
    parser.add_argument("--stream-weights", action="store_true",
                        help="the variant as it ships: decoder and embedder weights streamed to WebGPU (stream_weights: true)")
    parser.add_argument("--results", type=Path, default=None, help="default: bench/results/web_4b[_streamed].json")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--backend", choices=["webgpu", "wasm"], default="webgpu")
    parser.add_argument("--load-timeout", type=float, default=2400)
    parser.add_argument("--answer-timeout", type=float, default=900)
    parser.add_argument("--tokens", type=int, default=8, help="stop the answer after this many tokens")
    args = parser.parse_args(argv)
    args.results = args.results or BENCH / "results" / ("web_4b_streamed.json" if args.stream_weights else "web_4b.json")
    mark = MARK + "_streamed" if args.stream_weights else MARK
    args.work.mkdir(parents=True, exist_ok=True)
    result = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.phase == "build":
        result["build"] = run_build(args)
    elif args.phase == "tiny":
        result["tiny"] = run_tiny(args)
    elif args.phase == "layers":
        result.setdefault("layers", {}).update(run_layers(args))
    elif args.phase == "browser":
        result["browser"] = run_browser(args)
    result["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2, default=str) + "\n")
    replace_section(args.markdown, mark, render_markdown(result, mark))
    log(json.dumps({k: v for k, v in result.get(args.phase, {}).items() if k not in ("tail", "console_tail", "statuses")}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
