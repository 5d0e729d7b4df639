// Runs every case of /cases/index.json (a small ONNX graph and its inputs as raw little-endian
// files) in onnxruntime-web on the execution provider of the query (?ep=webgpu|wasm) and leaves
// each output's bytes (base64) in window.probeResult, for op_probe.py to compare with onnxruntime CPU.
const params = new URLSearchParams(location.search);
const ep = params.get('ep') || 'webgpu';
const subgroups = params.get('subgroups') !== 'off'; // off: give onnxruntime-web a device without the subgroups feature
const result = { ep, cases: {}, errors: [] };
window.probeResult = result;
const arrays = { float32: Float32Array, int32: Int32Array, int64: BigInt64Array, uint8: Uint8Array, float16: Uint16Array };
const base64 = (bytes) => { let s = ''; for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000)); return btoa(s); };

async function main() {
  const ort = await import(`/ort/${ep === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs'}`);
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = 1;
  let provider = ep;
  if (ep === 'webgpu') {
    const adapter = await navigator.gpu.requestAdapter();
    result.adapter = { ...Object.fromEntries(['vendor', 'architecture', 'subgroupMinSize', 'subgroupMaxSize'].map((k) => [k, adapter.info[k]])), features: [...adapter.features] };
    if (!subgroups) {
      const dropped = new Set(['subgroups', 'subgroup-size-control', 'chromium-experimental-subgroup-matrix']);
      const requiredLimits = {};
      for (const key in adapter.limits) if (typeof adapter.limits[key] === 'number') requiredLimits[key] = adapter.limits[key];
      const device = await adapter.requestDevice({ requiredFeatures: [...adapter.features].filter((f) => !dropped.has(f)), requiredLimits });
      provider = { name: 'webgpu', device };
    }
  }
  const index = await (await fetch('/cases/index.json')).json();
  for (const c of index) {
    const row = {};
    result.cases[c.name] = row;
    try {
      const session = await ort.InferenceSession.create(`/cases/${c.model}`, { executionProviders: [provider], graphOptimizationLevel: 'all' });
      const feeds = {};
      for (const input of c.inputs) {
        const buffer = await (await fetch(`/cases/${input.file}`)).arrayBuffer();
        feeds[input.name] = new ort.Tensor(input.dtype, new arrays[input.dtype](buffer), input.dims);
      }
      const started = performance.now();
      const out = await session.run(feeds);
      row.ms = performance.now() - started;
      for (const [name, tensor] of Object.entries(out)) {
        const data = await tensor.getData();
        row[name] = { dims: tensor.dims, type: tensor.type, b64: base64(new Uint8Array(data.buffer, data.byteOffset, data.byteLength)) };
      }
      await session.release();
    } catch (error) {
      row.error = String(error && error.stack || error);
    }
    document.getElementById('log').textContent += `${c.name} ${row.error || 'ok'}\n`;
  }
}
main().catch((error) => result.errors.push(String(error && error.stack || error)))
  .finally(() => { document.body.dataset.state = 'done'; });
