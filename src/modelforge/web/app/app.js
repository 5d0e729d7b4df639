// modelforge web app: runs the model entirely in the browser — an onnxruntime-web variant (the onnx
// target's graphs, with images) or a LiteRT.js variant (the litertlm target's graphs, with images),
// each on WebGPU, else its wasm CPU backend, or a MediaPipe LLM (.task, text, WebGPU).
//
// Flow: read bundle.json → check WebGPU → for each model variant in priority order: load its runtime,
// get its files (Cache Storage, else download with progress), verify their size and SHA-256, start
// it; on failure say why and fall back to the next variant → answer questions (with an image, for a
// multimodal variant) with streamed output and a stop button. Every problem is reported in the page.
// Query: ?backend=wasm runs LiteRT.js and onnxruntime-web variants on the CPU; ?variant=NAME starts from that variant.

import { StreamAccumulator, formatBytes } from "./accumulator.js";
import { imagePixels, loadLitertRuntime, startLitertVariant } from "./litert.js";
import { loadOrtwebRuntime, startOrtwebVariant } from "./ortweb.js";

const CACHE_NAME = "modelforge-models-v1";

const $ = (id) => document.getElementById(id);

const state = {
  bundle: null,
  genai: null,
  fileset: null,
  llm: null,
  engine: null, // a started LiteRT.js (litert.js) or onnxruntime-web (ortweb.js) variant
  backend: null, // "webgpu" or "wasm": where LiteRT.js and onnxruntime-web variants run
  adapterLimits: null, // the WebGPU adapter's buffer limits (onnxruntime-web variants place their vision graph by them)
  variant: null,
  generating: false,
  stopRequested: false,
  imageFile: null,
  imageBitmap: null,
  previewUrl: null,
};

// ---------------------------------------------------------------------------------------------
// Reporting: everything the user needs to know ends up in the page.
// ---------------------------------------------------------------------------------------------

function setPhase(phase) {
  document.body.dataset.state = phase;
}

function setStatus(text) {
  $("status-text").textContent = text;
}

function showError(message) {
  const li = document.createElement("li");
  li.textContent = message;
  $("error-list").appendChild(li);
  $("errors").hidden = false;
}

function notice(message) {
  const li = document.createElement("li");
  li.textContent = message;
  $("notice-list").appendChild(li);
  $("notices").hidden = false;
}

function describe(err) {
  if (err instanceof Error) return err.message || err.name || String(err);
  if (typeof Event !== "undefined" && err instanceof Event) {
    const target = err.target;
    const where = target && (target.src || target.href);
    return where ? `could not load ${where}` : `${err.type} event`;
  }
  if (typeof err === "string") return err;
  try {
    return JSON.stringify(err);
  } catch {
    return String(err);
  }
}

window.addEventListener("error", (event) => {
  showError(`Unexpected error: ${event.message || describe(event.error || event)}`);
});
window.addEventListener("unhandledrejection", (event) => {
  showError(`Unexpected error: ${describe(event.reason)}`);
});
document.addEventListener("securitypolicyviolation", (event) => {
  showError(
    `The page's Content-Security-Policy blocked ${event.blockedURI || "something"} ` +
      `(${event.effectiveDirective || event.violatedDirective}). The bundle or its server configuration is inconsistent.`,
  );
});

// The runtime reports the real cause of a failure (e.g. an unsupported op before "Aborted()") only on
// the console. Keep its recent error lines so that a failure shown in the page can quote them.
const runtimeErrors = []; // {n, line}
let runtimeErrorCount = 0;
for (const level of ["error", "warn"]) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    const line = args.map((a) => (typeof a === "string" ? a : describe(a))).join(" ");
    // glog lines: "E1123 19:18:28.383000 ... file.cc:123] message" (E = error, F = fatal)
    if (/^[EF]\d{4} /.test(line)) {
      runtimeErrorCount += 1;
      runtimeErrors.push({ n: runtimeErrorCount, line: line.replace(/^[EF]\d{4} [\d:.]+ +\d+ /, "") });
      if (runtimeErrors.length > 20) runtimeErrors.shift();
    }
    original(...args);
  };
}

function withRuntimeLog(message, since) {
  const lines = runtimeErrors
    .filter((entry) => entry.n > since)
    .map((entry) => entry.line)
    .filter((l, i, all) => all.indexOf(l) === i);
  if (!lines.length || lines.some((l) => message.includes(l))) return message;
  return `${message}; runtime log: ${lines.slice(-3).join(" | ")}`;
}

function showProgress(received, total, verb) {
  const box = $("progress-box");
  box.hidden = false;
  const percent = total > 0 ? (100 * received) / total : 0;
  $("progress").value = percent;
  $("progress-text").textContent = `${verb}: ${formatBytes(received)} of ${formatBytes(total)} (${percent.toFixed(1)}%)`;
}

function hideProgress() {
  $("progress-box").hidden = true;
}

// ---------------------------------------------------------------------------------------------
// bundle.json
// ---------------------------------------------------------------------------------------------

async function loadBundle() {
  if (location.protocol === "file:") {
    throw new Error(
      "This page was opened as a file. Serve the bundle directory over HTTP(S) instead, " +
        "e.g. `modelforge serve <bundle-dir>`, and open the address it prints.",
    );
  }
  let response;
  try {
    response = await fetch("bundle.json", { cache: "no-cache" });
  } catch (err) {
    throw new Error(`Could not fetch bundle.json (${describe(err)}).`);
  }
  if (!response.ok) throw new Error(`Could not fetch bundle.json: HTTP ${response.status}.`);
  let bundle;
  try {
    bundle = await response.json();
  } catch (err) {
    throw new Error(`bundle.json is not valid JSON (${describe(err)}).`);
  }
  const problems = [];
  if (!bundle || typeof bundle !== "object") problems.push("not an object");
  const variants = Array.isArray(bundle?.variants) ? bundle.variants : [];
  if (variants.some((v) => v.runtime === "mediapipe" || v.runtime === undefined)) {
    const files = bundle?.runtime?.files;
    for (const name of ["genai_bundle.mjs", "genai_wasm_internal.js", "genai_wasm_internal.wasm"]) {
      if (typeof files?.[name]?.url !== "string") problems.push(`runtime file ${name} missing`);
    }
  }
  if (variants.some((v) => v.runtime === "litertjs")) {
    const files = bundle?.litertjs?.files;
    for (const name of ["litertjs_core.mjs", "litert_wasm_jspi_internal.js", "litert_wasm_internal.js", "litert_wasm_compat_internal.js", "tokenizers.mjs", "jinja.mjs"]) {
      if (typeof files?.[name]?.url !== "string") problems.push(`LiteRT.js runtime file ${name} missing`);
    }
  }
  if (variants.some((v) => v.runtime === "onnxruntime_web")) {
    const files = bundle?.onnxruntime_web?.files;
    for (const name of ["ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm", "tokenizers.mjs", "jinja.mjs"]) {
      if (typeof files?.[name]?.url !== "string") problems.push(`onnxruntime-web runtime file ${name} missing`);
    }
  }
  if (variants.length === 0) problems.push("no model variants");
  const checkFile = (where, v) => {
    if (typeof v?.url !== "string") problems.push(`${where}: no url`);
    if (!/^[0-9a-f]{64}$/.test(v?.sha256 || "")) problems.push(`${where}: no sha256`);
    if (!Number.isSafeInteger(v?.size) || v.size <= 0) problems.push(`${where}: no size`);
    if (!Number.isSafeInteger(v?.chunk_size) || v.chunk_size <= 0) problems.push(`${where}: no chunk_size`);
    if (!Array.isArray(v?.chunk_sha256) || v.chunk_sha256.length !== Math.ceil(v.size / v.chunk_size)) {
      problems.push(`${where}: chunk_sha256 does not cover the file`);
    }
  };
  for (const [i, v] of variants.entries()) {
    const where = `variant ${i + 1}`;
    if (v.runtime === "litertjs") {
      for (const name of ["model", "embedder", "tokenizer", "tokenizer_config", "chat_template"]) checkFile(`${where} ${name}`, v.files?.[name]);
      if (typeof v.generation !== "object" || !v.generation) problems.push(`${where}: no generation settings`);
    } else if (v.runtime === "onnxruntime_web") {
      // A text-only package has no embedding graph: its decoder takes the ids (ortweb.js).
      const graphs = v.files?.vision || v.files?.embedding ? ["embedding", "embedding_data"] : [];
      for (const name of ["decoder", "decoder_data", ...graphs, "tokenizer", "tokenizer_config", "chat_template"]) {
        checkFile(`${where} ${name}`, v.files?.[name]);
      }
      if (typeof v.generation !== "object" || !v.generation) problems.push(`${where}: no generation settings`);
      if (typeof v.external_data !== "object" || !v.external_data) problems.push(`${where}: no external data names`);
    } else {
      checkFile(where, v);
    }
  }
  if (bundle?.notice !== undefined && typeof bundle.notice !== "string") problems.push("notice is not text");
  if (problems.length) throw new Error(`bundle.json is malformed: ${problems.join("; ")}.`);
  return bundle;
}

// ---------------------------------------------------------------------------------------------
// WebGPU gate
// ---------------------------------------------------------------------------------------------

const WEBGPU_HELP =
  "Use one of:\n" +
  "• Chrome or Edge 113 or newer on Windows, macOS or ChromeOS; Chrome 121 or newer on Android 12+.\n" +
  "• Chrome or Chromium on Linux: turn on chrome://flags/#enable-unsafe-webgpu (and #enable-vulkan), " +
  "or start it with --enable-unsafe-webgpu.\n" +
  "• Safari 26 or newer on macOS, iOS and iPadOS (older Safari: Develop → Feature Flags → WebGPU).\n" +
  "• Firefox 141 or newer on Windows; elsewhere Firefox Nightly with dom.webgpu.enabled.\n" +
  "Also make sure hardware acceleration is on (chrome://settings/system) and that chrome://gpu does not " +
  "list WebGPU as disabled or blocklisted.";

async function checkWebGpu() {
  if (!window.isSecureContext) {
    return {
      ok: false,
      message:
        "WebGPU only works on secure pages: open this bundle over https://, or on http://localhost / 127.0.0.1 " +
        "of the machine serving it.",
    };
  }
  if (!("gpu" in navigator) || !navigator.gpu) {
    return { ok: false, message: `This browser does not offer WebGPU, which this page needs to run the model.\n${WEBGPU_HELP}` };
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter();
  } catch (err) {
    return { ok: false, message: `WebGPU is present but asking it for a GPU failed (${describe(err)}).\n${WEBGPU_HELP}` };
  }
  if (!adapter) {
    return {
      ok: false,
      message:
        "WebGPU is present but found no usable GPU adapter (the GPU may be blocklisted, or hardware " +
        `acceleration is off).\n${WEBGPU_HELP}`,
    };
  }
  return { ok: true, adapter };
}

// ---------------------------------------------------------------------------------------------
// Runtime (vendored @mediapipe/tasks-genai; the file names carry content hashes)
// ---------------------------------------------------------------------------------------------

async function loadRuntime(bundle) {
  const files = bundle.runtime.files;
  const abs = (name) => new URL(files[name].url, location.href).href;
  let genai;
  try {
    genai = await import(abs("genai_bundle.mjs"));
  } catch (err) {
    throw new Error(`Could not load the runtime module ${files["genai_bundle.mjs"].url} (${describe(err)}).`);
  }
  if (!(await genai.FilesetResolver.isSimdSupported())) {
    throw new Error("This browser's WebAssembly lacks SIMD, which the runtime needs: update the browser.");
  }
  state.genai = genai;
  state.fileset = {
    wasmLoaderPath: abs("genai_wasm_internal.js"),
    wasmBinaryPath: abs("genai_wasm_internal.wasm"),
  };
}

// ---------------------------------------------------------------------------------------------
// Model download, verification, caching
//
// A model is never held whole here: it flows in `chunk_size` parts (bundle.json; 64 MiB), and each
// part goes on only after its SHA-256 matched `chunk_sha256` — into Cache Storage, which writes the
// stream to disk as it arrives, and from there (or straight from the network when there is no
// cache) to the runtime as a stream of verified parts. Every byte is covered by the part hashes and
// the exact size, so the whole-file `sha256` (for `modelforge verify` and other tools) is not
// recomputed: WebCrypto cannot hash incrementally, and hashing it whole would mean one ArrayBuffer of
// the whole model. (The runtime itself then gathers a `.task` into its memory: docs/web-limits.md.)
// ---------------------------------------------------------------------------------------------

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
}

// The verified parts of a response body, in order, one at a time (at most one part is held). Throws
// on a SHA-256 mismatch, a short or long body; reports progress under `verb`.
async function* verifiedParts(response, variant, verb) {
  if (!crypto?.subtle) throw new Error("this page is not a secure context, so it cannot check the model's SHA-256");
  if (!response.body) throw new Error("the response has no body");
  const total = variant.size;
  const chunkSize = variant.chunk_size;
  const parts = variant.chunk_sha256.length;
  const reader = response.body.getReader();
  // Network chunks are copied into the part as they arrive (and dropped): one part-sized buffer.
  let pending = null;
  let pendingBytes = 0;
  let received = 0;
  let index = 0;

  async function finishPart() {
    const part = pending.subarray(0, pendingBytes);
    pending = null;
    pendingBytes = 0;
    const digest = hex(await crypto.subtle.digest("SHA-256", part));
    if (digest !== variant.chunk_sha256[index]) {
      throw new Error(
        `SHA-256 mismatch in part ${index + 1} of ${parts} ` +
          `(bytes ${index * chunkSize}–${index * chunkSize + part.byteLength - 1}): the file is damaged or not the one this bundle was built with`,
      );
    }
    index += 1;
    return part;
  }

  let finished = false;
  try {
    showProgress(0, total, verb);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      received += value.byteLength;
      if (received > total) throw new Error(`size mismatch: more than the expected ${total} bytes`);
      let offset = 0;
      while (offset < value.byteLength) {
        const take = Math.min(chunkSize - pendingBytes, value.byteLength - offset);
        pending ??= new Uint8Array(Math.min(chunkSize, total - index * chunkSize));
        pending.set(value.subarray(offset, offset + take), pendingBytes);
        pendingBytes += take;
        offset += take;
        if (pendingBytes === chunkSize) yield await finishPart();
      }
      showProgress(received, total, verb);
    }
    if (pendingBytes > 0) yield await finishPart();
    if (received !== total || index !== parts) throw new Error(`size mismatch: expected ${total} bytes, got ${received}`);
    finished = true;
    console.info(`modelforge: ${verb}: ${variant.name}: all ${parts} parts verified (${total} bytes)`);
  } finally {
    if (!finished) await reader.cancel().catch(() => {});
  }
}

// A stream reader over verified parts, pulled one part at a time (what `modelAssetBuffer` takes).
// Not a Blob's `stream()`: tasks-genai 0.10.29 fails on those ("Cannot close an errored readable
// stream"), while a plain pull stream of Uint8Array parts loads fine.
function partStream(parts) {
  return new ReadableStream({
    async pull(controller) {
      const { value, done } = await parts.next();
      if (done) controller.close();
      else controller.enqueue(value);
    },
    async cancel() {
      await parts.return();
    },
  });
}

// Reads every part of `response`, verifying it, holding none: the check of a stored copy.
async function verifyAll(response, variant, verb) {
  for await (const part of verifiedParts(response, variant, verb)) void part;
}

async function openCache() {
  if (!("caches" in window)) {
    notice("This browser has no Cache Storage here; the model will be downloaded again on every visit.");
    return null;
  }
  try {
    return await caches.open(CACHE_NAME);
  } catch (err) {
    notice(`Model caching is unavailable (${describe(err)}); the model will be downloaded again on every visit.`);
    return null;
  }
}

async function download(url, variant) {
  let response;
  try {
    // The HTTP cache is bypassed: Cache Storage keeps the one copy.
    response = await fetch(url, { cache: "no-store" });
  } catch (err) {
    throw new Error(`download of ${variant.url} failed (${describe(err)})`);
  }
  if (!response.ok) throw new Error(`download of ${variant.url} failed: HTTP ${response.status}`);
  return response;
}

// Where the runtime reads a verified model from: the stored copy, verified again as it is read.
function storedModel(cache, url, variant, source) {
  return {
    source,
    async reader() {
      const stored = await cache.match(url);
      if (!stored) throw new Error("the stored copy disappeared from Cache Storage");
      return partStream(verifiedParts(stored, variant, "Loading")).getReader();
    },
  };
}

// The model of `variant`, checked: {source, reader()} where reader() streams its verified parts.
async function getModel(variant) {
  const url = new URL(variant.url, location.href).href;
  const cache = await openCache();
  if (cache) {
    const cached = await cache.match(url);
    if (cached) {
      try {
        setStatus(`Checking the stored copy of ${variant.label}…`);
        await verifyAll(cached, variant, "Checking stored copy");
        return storedModel(cache, url, variant, "stored in this browser");
      } catch (err) {
        await cache.delete(url);
        notice(`The stored copy of ${variant.label} was damaged (${describe(err)}); downloading it again.`);
      }
    }
  }
  if (navigator.storage?.estimate) {
    try {
      const { quota, usage } = await navigator.storage.estimate();
      if (Number.isFinite(quota) && quota - (usage || 0) < variant.size) {
        notice(
          `This browser allows this site ${formatBytes(quota - (usage || 0))} of storage, less than the ` +
            `${formatBytes(variant.size)} model: it cannot be kept and will be downloaded again next time.`,
        );
      }
    } catch {
      /* estimate is advisory */
    }
  }
  setStatus(`Downloading ${variant.label} (${formatBytes(variant.size)}); it is kept in this browser for next time.`);
  if (cache) {
    // Verified parts stream into Cache Storage; a damaged download fails the put and is not kept.
    let damaged = null;
    const parts = (async function* () {
      try {
        yield* verifiedParts(await download(url, variant), variant, "Downloading");
      } catch (err) {
        damaged = err;
        throw err;
      }
    })();
    try {
      if (navigator.storage?.persist) await navigator.storage.persist().catch(() => false);
      await cache.put(
        url,
        new Response(partStream(parts), {
          headers: { "Content-Type": "application/octet-stream", "Content-Length": String(variant.size) },
        }),
      );
      return storedModel(cache, url, variant, "downloaded");
    } catch (err) {
      await cache.delete(url).catch(() => false);
      if (damaged) throw damaged;
      notice(`Could not keep ${variant.label} in this browser (${describe(err)}); it will be downloaded again next time.`);
    }
  }
  // No cache (or it refused the model): the runtime reads the download itself, part by verified part.
  return {
    source: "downloaded",
    async reader() {
      return partStream(verifiedParts(await download(url, variant), variant, "Downloading")).getReader();
    },
  };
}

// The MediaPipe runtime, imported the first time a MediaPipe variant is tried.
async function ensureMediaPipe(bundle) {
  if (!state.genai) await loadRuntime(bundle);
}

// A LiteRT.js variant's files, each fetched (or taken from Cache Storage) and verified part by part,
// then held whole: loadAndCompile takes a graph as one buffer (docs/web-limits.md).
// A failure names the file (its logical name and URL), e.g. which graph arrived damaged.
async function fetchVerified(variant, logical) {
  const entry = variant.files[logical];
  const file = { ...entry, name: `${variant.name}/${logical}`, label: `${variant.label} (${logical})` };
  try {
    const model = await getModel(file);
    const bytes = new Uint8Array(entry.size);
    const reader = await model.reader();
    let offset = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      bytes.set(value, offset);
      offset += value.byteLength;
    }
    return { bytes, source: model.source };
  } catch (err) {
    throw new Error(`its file ${logical} (${entry.url}) could not be used: ${describe(err)}`);
  }
}

// A streamed graph's weights file (variant.streamed), fetched (or taken from Cache Storage) and
// verified, but not held: {size, reader()}, where each reader() streams its verified parts from the
// start again (the runtime reads it once per GPU partition it compiles).
async function fetchStreamed(variant, logical) {
  const entry = variant.files[logical];
  const file = { ...entry, name: `${variant.name}/${logical}`, label: `${variant.label} (${logical})` };
  try {
    const model = await getModel(file);
    return { weights: { size: entry.size, reader: () => model.reader() }, source: model.source };
  } catch (err) {
    throw new Error(`its file ${logical} (${entry.url}) could not be used: ${describe(err)}`);
  }
}

// The wasm backend's memory is 32-bit: a graph is copied whole into a heap of at most 4 GiB.
const WASM_GRAPH_LIMIT = 2 * 1024 ** 3;

async function startLitert(variant) {
  const streamedWeights = new Set(Object.values(variant.streamed || {}).map((entry) => entry.weights));
  if (streamedWeights.size && state.backend !== "webgpu") {
    throw new Error(
      "its weights stream straight into the GPU's memory (they do not fit LiteRT.js's 2 GiB of WebAssembly memory), " +
        "so it needs WebGPU, which " + (state.gpuOk ? "was turned off for this page" : "this browser does not offer here"),
    );
  }
  if (state.backend === "wasm") {
    const largest = Math.max(...Object.values(variant.files).map((f) => f.size));
    if (largest > WASM_GRAPH_LIMIT) {
      throw new Error(
        `without WebGPU it would run on the CPU, whose WebAssembly memory (4 GiB) cannot hold its ${formatBytes(largest)} graph; ` +
          "use a browser with WebGPU",
      );
    }
  }
  return startEngine(variant, "the LiteRT.js runtime", () => loadLitertRuntime(state.bundle.litertjs),
    (files) => startLitertVariant(variant, files, state.backend), streamedWeights);
}

// Loads a page-driven runtime (LiteRT.js, onnxruntime-web), gets the variant's files (each verified
// and held whole; streamed weights as re-readable streams) and starts the variant with them.
async function startEngine(variant, runtimeName, loadRuntime, start, streamedWeights = new Set()) {
  setStatus(`Loading ${runtimeName}…`);
  const mark = runtimeErrorCount;
  try {
    await loadRuntime();
  } catch (err) {
    throw new Error(withRuntimeLog(`${runtimeName} could not load (${describe(err)})`, mark));
  }
  const files = {};
  const sources = new Set();
  for (const logical of Object.keys(variant.files).sort()) {
    setStatus(`Getting ${variant.label}: ${logical}…`);
    if (streamedWeights.has(logical)) {
      const { weights, source } = await fetchStreamed(variant, logical);
      files[logical] = weights;
      sources.add(source);
      continue;
    }
    const { bytes, source } = await fetchVerified(variant, logical);
    files[logical] = bytes;
    sources.add(source);
  }
  hideProgress();
  setStatus(`Starting ${variant.label} (${state.backend === "webgpu" ? "GPU" : "CPU"})…`);
  let engine;
  try {
    engine = await start(files);
  } catch (err) {
    if (err instanceof RangeError || /memory/i.test(describe(err))) {
      throw new Error(`the browser ran out of memory starting it (${describe(err)}); close other tabs or pick a smaller variant`);
    }
    throw new Error(withRuntimeLog(`the runtime could not start it (${describe(err)})`, mark));
  }
  for (const note of engine.notes) notice(`${variant.label}: ${note}.`);
  engine.onNote = (note) => notice(`${variant.label}: ${note}.`);
  return { engine, source: [...sources].join(", ") };
}

// onnxruntime-web's wasm build is 32-bit: on the CPU every weight lives in its heap (at most 4 GiB,
// beside the runtime's own work); on WebGPU the weights go to GPU buffers instead.
const ORTWEB_WASM_LIMIT = 3 * 1024 ** 3;

async function startOrtweb(variant) {
  if (state.backend === "wasm" && variant.size > ORTWEB_WASM_LIMIT) {
    throw new Error(
      `without WebGPU it would run on the CPU, whose WebAssembly memory (4 GiB) cannot hold its ${formatBytes(variant.size)} of graphs; ` +
        "use a browser with WebGPU",
    );
  }
  return startEngine(variant, "onnxruntime-web", () => loadOrtwebRuntime(state.bundle.onnxruntime_web),
    (files) => startOrtwebVariant(variant, files, state.backend, state.adapterLimits));
}

async function startVariant(variant) {
  if (variant.runtime === "litertjs") return startLitert(variant);
  if (variant.runtime === "onnxruntime_web") return startOrtweb(variant);
  if (!state.gpuOk) throw new Error("it needs WebGPU, which this browser does not offer here");
  await ensureMediaPipe(state.bundle);
  const model = await getModel(variant);
  setStatus(`Starting ${variant.label} on the GPU…`);
  const options = {
    baseOptions: { modelAssetBuffer: await model.reader() },
    maxTokens: variant.max_tokens,
  };
  if (variant.top_k != null) options.topK = variant.top_k;
  if (variant.temperature != null) options.temperature = variant.temperature;
  if (variant.random_seed != null) options.randomSeed = variant.random_seed;
  if (variant.multimodal) options.maxNumImages = 1;
  let llm;
  const mark = runtimeErrorCount;
  try {
    llm = await state.genai.LlmInference.createFromOptions(state.fileset, options);
  } catch (err) {
    throw new Error(withRuntimeLog(`the runtime could not start it (${describe(err)})`, mark));
  }
  hideProgress();
  return { llm, source: model.source };
}

// ---------------------------------------------------------------------------------------------
// Asking
// ---------------------------------------------------------------------------------------------

function imageNote(text) {
  const note = $("image-note");
  note.textContent = text || "";
  note.hidden = !text;
}

function isMultimodal() {
  return state.engine ? state.engine.multimodal : Boolean(state.variant?.multimodal);
}

// An image from the file picker, a drop or a paste.
async function onImageChosen(chosen) {
  const input = $("image");
  const file = chosen || (input.files && input.files[0]);
  clearImage(Boolean(chosen));
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    imageNote(`${file.name || "That file"} is not an image.`);
    return;
  }
  if (!isMultimodal()) {
    state.imageFile = file;
    $("clear-image").hidden = false;
    imageNote(
      `Images need a multimodal model variant; ${state.variant ? state.variant.label : "this model"} reads text only. ` +
        "Remove the image to ask without it.",
    );
    return;
  }
  try {
    // No colour-space conversion: the processor reads the file's own RGB values.
    state.imageBitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (err) {
    imageNote(`That file could not be read as an image (${describe(err)}).`);
    input.value = "";
    return;
  }
  state.imageFile = file;
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("preview");
  preview.src = state.previewUrl;
  preview.hidden = false;
  $("clear-image").hidden = false;
}

function clearImage(resetInput = true) {
  if (resetInput) $("image").value = "";
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  if (state.imageBitmap?.close) state.imageBitmap.close();
  state.imageFile = null;
  state.imageBitmap = null;
  state.previewUrl = null;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("clear-image").hidden = true;
  imageNote("");
}

function makeRenderer(target) {
  // One text node that only ever grows: appending the new part never re-lays out (or blanks) the rest.
  target.textContent = "";
  const node = document.createTextNode("");
  target.appendChild(node);
  let latest = "";
  let scheduled = false;
  const flush = () => {
    scheduled = false;
    if (latest.startsWith(node.data)) node.appendData(latest.slice(node.data.length));
    else node.data = latest;
  };
  return {
    update(text) {
      latest = text;
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(flush);
      }
    },
    flush() {
      flush();
    },
  };
}

async function ask(event) {
  event.preventDefault();
  if (state.generating || !(state.llm || state.engine)) return;
  const text = $("prompt").value.trim();
  if (!text) {
    $("prompt").focus();
    return;
  }
  if (state.imageFile && !isMultimodal()) {
    imageNote(
      `Images need a multimodal model variant; ${state.variant.label} reads text only. Remove the image to ask without it.`,
    );
    return;
  }
  if (state.engine) return askEngine(text);
  const query = state.imageBitmap ? [text, { imageSource: state.imageBitmap }] : text;

  startAnswer();
  const renderer = makeRenderer($("answer"));
  const acc = new StreamAccumulator({ onUpdate: (t) => renderer.update(t) });
  const started = performance.now();
  let failed = false;
  try {
    if (typeof state.llm.clearCancelSignals === "function") state.llm.clearCancelSignals();
    const finalText = await state.llm.generateResponse(query, (partial, done) => acc.push(partial, done));
    acc.finish(finalText);
  } catch (err) {
    if (state.stopRequested) {
      acc.finish();
    } else {
      failed = true;
      showError(`Generating the answer failed: ${describe(err)}`);
    }
  } finally {
    renderer.update(acc.text);
    renderer.flush();
    $("answer").dataset.streamMode = acc.mode; // how the runtime handed over text (diagnostics)
    $("answer").dataset.chunks = String(acc.chunks);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    let label = state.stopRequested ? `(stopped after ${seconds} s)` : `(${seconds} s)`;
    if (failed) label = "(failed)";
    else if (!acc.text) label += " — the model returned no text";
    endAnswer(label, failed);
  }
}

// The LiteRT.js and onnxruntime-web path: the page's own greedy loop (litert.js, ortweb.js), streaming the answer.
async function askEngine(text) {
  startAnswer();
  const renderer = makeRenderer($("answer"));
  const answer = $("answer");
  delete answer.dataset.tokens;
  const started = performance.now();
  let failed = false;
  let chunks = 0;
  let result = null;
  try {
    let pixels = null;
    if (state.imageBitmap) {
      const image = state.variant.generation.image;
      pixels = imagePixels(state.imageBitmap, image.height, image.width);
    }
    result = await state.engine.generate(text, pixels, {
      onText: (partial, tokens) => {
        chunks += 1;
        answer.dataset.tokens = tokens.join(","); // the ids so far (kept when stopped or failed)
        renderer.update(partial);
      },
      shouldStop: () => state.stopRequested,
    });
    renderer.update(result.text);
  } catch (err) {
    failed = true;
    showError(`Generating the answer failed: ${describe(err)}`);
  } finally {
    renderer.flush();
    answer.dataset.streamMode = "cumulative";
    answer.dataset.chunks = String(chunks);
    if (result) {
      // For tests and diagnostics: the ids the model read and wrote.
      answer.dataset.tokens = result.tokens.join(",");
      answer.dataset.promptTokens = result.promptTokens.join(",");
      answer.dataset.ended = result.ended;
    }
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    let label = result?.stopped ? `(stopped after ${seconds} s)` : `(${seconds} s)`;
    if (failed) label = "(failed)";
    else if (result && !result.text) label += result.stopped ? " — before any text" : " — the model returned no text";
    endAnswer(label, failed);
  }
}

// The page while a variant answers (Ask off, Stop on) and after (`label`: the answer's time, or why it failed).
function startAnswer() {
  state.generating = true;
  state.stopRequested = false;
  setPhase("generating");
  $("send").disabled = true;
  $("stop").disabled = false;
  $("answer-box").hidden = false;
  $("answer-state").textContent = "(writing…)";
  setStatus(`${state.variant.label} is answering…`);
}

function endAnswer(label, failed) {
  $("answer-state").textContent = label;
  state.generating = false;
  $("send").disabled = false;
  $("stop").disabled = true;
  setStatus(`Ready: ${state.variant.label}.`);
  setPhase(failed ? "ready-with-error" : "ready");
}

function stop() {
  if (!state.generating) return;
  state.stopRequested = true;
  $("answer-state").textContent = "(stopping…)";
  if (state.engine) return; // the loop sees stopRequested before its next token
  try {
    state.llm.cancelProcessing();
  } catch (err) {
    showError(`Could not stop the generation: ${describe(err)}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------------------

// The signed provenance beside the bundle's files (docs/provenance.md): where the model was built
// from and whose key signed it. Shown, not checked: a page cannot vouch for the server that sends
// it, so the signature is checked with `modelforge verify --provenance` before the bundle is served.
async function showProvenance() {
  const response = await fetch("provenance.intoto.jsonl", { cache: "no-cache" });
  if (!response.ok) return;
  const envelope = JSON.parse((await response.text()).split("\n")[0]);
  const payload = Uint8Array.from(atob(envelope.payload), (c) => c.charCodeAt(0));
  const statement = JSON.parse(new TextDecoder().decode(payload));
  const origin = statement.predicate?.buildDefinition?.resolvedDependencies?.[0]?.annotations || {};
  const source = origin.kind === "hub" ? `${origin.repo}@${String(origin.revision).slice(0, 7)}` : `${origin.path} (local)`;
  const keyid = envelope.signatures?.[0]?.keyid;
  const signer = keyid ? `key ${keyid.slice(0, 19)}…` : "nobody (unsigned)";
  $("provenance").textContent = `Built from ${source} by ${signer}; this page does not check the signature: ` +
    "check the files with `modelforge verify --provenance`.";
  $("provenance").hidden = false;
}

async function main() {
  setPhase("loading");
  setStatus("Reading the bundle description…");
  const bundle = await loadBundle();
  state.bundle = bundle;
  showProvenance().catch(() => {});  // a bundle without provenance (or a damaged one) still runs
  if (bundle.title) {
    document.title = bundle.title;
    $("title").textContent = bundle.title;
  }

  const params = new URLSearchParams(location.search);
  setStatus("Checking for WebGPU…");
  const gpu = await checkWebGpu();
  state.gpuOk = gpu.ok;
  if (gpu.adapter) {
    state.adapterLimits = { maxBufferSize: gpu.adapter.limits.maxBufferSize, maxStorageBufferBindingSize: gpu.adapter.limits.maxStorageBufferBindingSize };
  }
  const canUseCpu = bundle.variants.some((v) => v.runtime === "litertjs" || v.runtime === "onnxruntime_web");
  if (!gpu.ok && !canUseCpu) {
    setPhase("unsupported");
    setStatus("This browser cannot run the model.");
    showError(gpu.message);
    return;
  }
  state.backend = gpu.ok && params.get("backend") !== "wasm" ? "webgpu" : "wasm";
  if (!gpu.ok) {
    notice(`${gpu.message.split("\n")[0]} The model runs on the CPU instead (WebAssembly), more slowly.`);
  }

  const reasons = [];
  let variants = bundle.variants;
  const wanted = params.get("variant");
  if (wanted) {
    const index = variants.findIndex((v) => v.name === wanted);
    if (index < 0) notice(`This bundle has no variant named ${wanted}; starting from the first.`);
    else variants = variants.slice(index);
  }
  for (const [i, variant] of variants.entries()) {
    try {
      const started = await startVariant(variant);
      state.llm = started.llm || null;
      state.engine = started.engine || null;
      state.variant = variant;
      const engineName = variant.runtime === "onnxruntime_web"
        ? `onnxruntime-web ${bundle.onnxruntime_web?.packages?.["onnxruntime-web"]}`
        : `LiteRT.js ${bundle.litertjs?.packages?.["@litertjs/core"]}`;
      const runtimeName = state.engine
        ? `${engineName} on ${state.engine.backend === "webgpu" ? "WebGPU" : state.engine.backend}`
        : `runtime ${bundle.runtime.package}@${bundle.runtime.version}`;
      $("model-info").textContent =
        `Model: ${variant.label} (${formatBytes(variant.size)}, ${started.source}) · ${runtimeName}` +
        (bundle.notice ? ` · Note: ${bundle.notice}` : "");
      document.body.dataset.variant = variant.name;
      document.body.dataset.backend = state.engine ? state.engine.backend : "webgpu";
      if (state.engine?.streamStats) document.body.dataset.streamed = JSON.stringify(state.engine.streamStats);
      break;
    } catch (err) {
      hideProgress();
      const reason = `${variant.label}: ${describe(err)}`;
      reasons.push(reason);
      const next = variants[i + 1];
      if (next) notice(`Could not use ${reason}. Trying ${next.label} instead.`);
    }
  }
  if (!state.llm && !state.engine) {
    setPhase("error");
    setStatus("No model could be started.");
    showError(`No model variant could be started:\n${reasons.map((r) => `• ${r}`).join("\n")}`);
    return;
  }

  $("chat").hidden = false;
  $("chat").addEventListener("submit", ask);
  $("stop").addEventListener("click", stop);
  const useImage = (file) => onImageChosen(file).catch((err) => imageNote(`Could not use that image (${describe(err)}).`));
  $("image").addEventListener("change", () => useImage(null));
  $("clear-image").addEventListener("click", () => clearImage(true));
  // Drag and drop anywhere on the form, and paste (e.g. a screenshot) into the page.
  const chat = $("chat");
  chat.addEventListener("dragover", (event) => {
    event.preventDefault();
    chat.classList.add("dropping");
  });
  chat.addEventListener("dragleave", () => chat.classList.remove("dropping"));
  chat.addEventListener("drop", (event) => {
    event.preventDefault();
    chat.classList.remove("dropping");
    const file = [...(event.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) useImage(file);
    else imageNote("Drop an image file (PNG, JPEG, WebP, BMP or GIF).");
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      event.preventDefault();
      useImage(file);
    }
  });
  if (!isMultimodal()) {
    $("image").title = "Images need a multimodal model variant";
  }
  setStatus(`Ready: ${state.variant.label}.`);
  setPhase("ready");
  $("prompt").focus();
}

main().catch((err) => {
  hideProgress();
  setPhase("error");
  setStatus("Stopped because of the problem below.");
  showError(describe(err));
});
