// One attempt per page load (an abort inside the wasm module ends the page's LiteRT.js):
//   ?graph=NAME&mode=MODE
// NAME.tflite (inline weights, from the bundle's models/) and NAME.graph.tflite + NAME.weights
// (modelforge.web.split_weights) sit next to this page. Modes:
//   inline     loadAndCompile(NAME.tflite) on WebGPU: the reference outputs
//   stream     loadModelAndWeights(NAME.graph.tflite, fetch(NAME.weights).body) on WebGPU
//   stream_fs  the same, with NAME.weights also written into the Emscripten file system under the
//              external buffer group's name (where LiteRT's CPU-side weight loader looks)
//   stream_fs_zeros  the same, the file system copy all zeros (the stream still carries the real weights)
//   *_rereadable     the same, the stream replaced by an object whose getReader() starts the weights
//                    from byte 0 each time (the wasm side asks once per delegated partition)
//   wasm       loadAndCompile(NAME.tflite) on the wasm CPU backend
//   q_fs_rereadable  NAME.q.graph.tflite + NAME.q.weights (only quantized weights external), the
//              weights also in the file system, the stream re-readable
//   scratch_rereadable  NAME.q.graph.tflite + NAME.q.weights (only quantized weights external) with a
//              file-system entry that has the weights file's size but no contents: mapping it returns
//              one shared scratch allocation (the largest tensor's size) instead of a copy per tensor
// Every signature runs on the same fixed inputs; body[data-result] gets the outputs' summary.
const out = document.getElementById("out");
const log = (line) => { out.textContent += line + "\n"; };
const params = new URLSearchParams(location.search);
const graph = params.get("graph");
const mode = params.get("mode");

async function bytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

function generator(seed) {
  let state = seed >>> 0;
  return () => { state = (state * 1664525 + 1013904223) >>> 0; return state / 2 ** 32 - 0.5; };
}

async function runAll(core, model) {
  const outputs = {};
  for (const [signature, runner] of Object.entries(model.signatures)) {
    const next = generator(7);
    const inputs = {};
    for (const detail of runner.getInputDetails()) {
      const count = detail.shape.reduce((a, b) => a * b, 1);
      const data = String(detail.dtype).includes("int")
        ? Int32Array.from({ length: count }, (_, i) => (i % 5) + 1)
        : Float32Array.from({ length: count }, next);
      inputs[detail.name] = new core.Tensor(data, Array.from(detail.shape));
    }
    const results = await runner.run(inputs);
    for (const [name, tensor] of Object.entries(results)) {
      outputs[`${signature}.${name}`] = Array.from(await tensor.data());
      tensor.delete();
    }
    for (const tensor of Object.values(inputs)) tensor.delete();
  }
  return outputs;
}

async function main() {
  const bundle = await (await fetch("../bundle.json")).json();
  const url = (name) => new URL("../" + bundle.litertjs.files[name].url, location.href).href;
  const core = await import(url("litertjs_core.mjs"));
  const relaxed = await core.supportsFeature("relaxedSimd").catch(() => false);
  const jspi = relaxed && (await core.supportsFeature("jspi").catch(() => false));
  const loader = jspi ? "litert_wasm_jspi_internal.js" : relaxed ? "litert_wasm_internal.js" : "litert_wasm_compat_internal.js";
  await core.loadLiteRt(url(loader));
  const wasm = core.getGlobalLiteRt().liteRtWasm;
  let model;
  let mapped = null;
  if (mode === "q_fs_rereadable") {
    const weights = await bytes(`${graph}.q.weights`);
    wasm.FS_createDataFile("/", `${graph}.q.weights`, weights, true, false);
    const blob = new Blob([weights]);
    model = await core.loadModelAndWeights(await bytes(`${graph}.q.graph.tflite`), { getReader: () => blob.stream().getReader() },
      { accelerator: "webgpu" });
  } else if (mode === "scratch_rereadable") {
    const extent = await (await fetch(`${graph}.q.json`)).json();
    // Aligned as Emscripten's own mmap aligns (64 KiB pages): the runtime wraps the mapping in a host
    // tensor buffer, which must be aligned; a mapping starts up to a page before its tensor.
    const page = 65536;
    const scratch = Math.ceil(wasm._malloc(extent.largest + 2 * page) / page) * page;
    const hidden = globalThis.XMLHttpRequest;
    globalThis.XMLHttpRequest = undefined; // createLazyFile then makes a URL node instead of aborting
    const node = wasm.FS_createLazyFile("/", `${graph}.q.weights`, "unused", true, false);
    globalThis.XMLHttpRequest = hidden;
    node.contents = { length: extent.size }; // the size fstat reports; nothing is stored
    mapped = globalThis.mapped = { calls: 0, bytes: 0 };
    node.stream_ops = {
      ...node.stream_ops,
      mmap: (stream, length) => {
        mapped.calls += 1;
        mapped.bytes += length;
        return { ptr: scratch, allocated: false };
      },
    };
    const blob = await (await fetch(`${graph}.q.weights`)).blob();
    model = await core.loadModelAndWeights(await bytes(`${graph}.q.graph.tflite`), { getReader: () => blob.stream().getReader() },
      { accelerator: "webgpu" });
  } else if (mode === "inline" || mode === "wasm") {
    model = await core.loadAndCompile(await bytes(`${graph}.tflite`), { accelerator: mode === "wasm" ? "wasm" : "webgpu" });
  } else {
    if (mode.startsWith("stream_fs")) {
      const weights = await bytes(`${graph}.weights`);
      wasm.FS_createDataFile("/", `${graph}.weights`, mode.startsWith("stream_fs_zeros") ? new Uint8Array(weights.length) : weights, true, false);
    }
    const blob = await (await fetch(`${graph}.weights`)).blob();
    const stream = mode.endsWith("_rereadable") ? { getReader: () => blob.stream().getReader() } : blob.stream();
    model = await core.loadModelAndWeights(await bytes(`${graph}.graph.tflite`), stream, { accelerator: "webgpu" });
  }
  const outputs = await runAll(core, model);
  globalThis.mapped = mapped;
  document.body.dataset.result = JSON.stringify({ loader, outputs, mapped, fully_accelerated: model.isFullyAccelerated ?? null });
  log(`${graph} ${mode}: ok`);
}

main()
  .catch((error) => {
    document.body.dataset.result = JSON.stringify({ error: String(error?.message || error), mapped: globalThis.mapped ?? null });
    log(`${graph} ${mode}: ${error?.message || error}`);
  })
  .finally(() => { document.body.dataset.state = "done"; });
