// Loads the three ONNX graphs (vision, embedding, decoder with KV cache) in onnxruntime-web on the
// execution provider named in the query (?ep=webgpu|wasm&graphs=DIR&bundle=FILE), runs a greedy
// loop for every case of /cases.json (token ids and pixel values from Python), and leaves the
// figures in window.probeResult for the driver. Nothing is fetched from outside this origin.
const params = new URLSearchParams(location.search);
const ep = params.get('ep') || 'webgpu';
const graphs = params.get('graphs') || 'graphs/webgpu';
const bundle = params.get('bundle') || (ep === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs');
const steps = Number(params.get('steps') || 24);
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
const result = { ep, graphs, bundle, errors: [], cases: {} };
window.probeResult = null;

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);
function toFloat16Bits(data) {  // round to nearest even, as numpy's astype(float16)
  const out = new Uint16Array(data.length);
  for (let i = 0; i < data.length; i++) {
    f32[0] = data[i]; const x = u32[0];
    const sign = (x >>> 16) & 0x8000, exp = (x >>> 23) & 0xff, mant = x & 0x7fffff;
    if (exp === 0xff) { out[i] = sign | 0x7c00 | (mant ? 0x200 : 0); continue; }
    let e = exp - 127 + 15;
    if (e >= 0x1f) { out[i] = sign | 0x7c00; continue; }
    if (e <= 0) {
      if (e < -10) { out[i] = sign; continue; }
      const m = mant | 0x800000, shift = 14 - e;
      let h = m >>> shift; const rem = m & ((1 << shift) - 1), halfway = 1 << (shift - 1);
      if (rem > halfway || (rem === halfway && (h & 1))) h++;
      out[i] = sign | h; continue;
    }
    let h = (e << 10) | (mant >>> 13); const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
    out[i] = sign | h;
  }
  return out;
}
function fromFloat16Bits(h) {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >>> 10) & 0x1f, mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

async function main() {
  const t0 = performance.now();
  const ort = await import(`/ort/${bundle}`);
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = Number(params.get('threads') || 1);
  result.ortVersion = ort.env.versions;
  result.crossOriginIsolated = self.crossOriginIsolated;
  if (ep === 'webgpu') {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter() : null;
    result.adapter = adapter ? (adapter.info ? { vendor: adapter.info.vendor, architecture: adapter.info.architecture, description: adapter.info.description } : 'no info') : null;
    if (!adapter) throw new Error('no WebGPU adapter');
  }
  const options = { executionProviders: [ep], graphOptimizationLevel: 'all' };
  const loaded = {};
  const timeLoad = async (name, url, extra = {}) => {
    const started = performance.now();
    const session = await ort.InferenceSession.create(url, { ...options, ...extra });
    loaded[name] = performance.now() - started;
    return session;
  };
  const vision = await timeLoad('vision', `/${graphs}/vision.onnx`);
  const embedding = await timeLoad('embedding', `/${graphs}/embedding.onnx`);
  const decoder = await timeLoad('decoder', `/${graphs}/decoder/model.onnx`,
    { externalData: [{ path: 'model.onnx.data', data: `/${graphs}/decoder/model.onnx.data` }] });
  result.loadMs = loaded;
  result.startupMs = performance.now() - t0;
  const pastNames = decoder.inputNames.filter((n) => n.startsWith('past_key_values'));
  // fp16 decoders (the builder's int4/int8/fp16 WebGPU graphs) take and give float16: convert at the boundary
  const half = params.get('half') === '1';
  result.half = half;
  const toHalf = (t) => new ort.Tensor('float16', toFloat16Bits(t.data), t.dims);
  const fromHalf = (data) => (data instanceof Float32Array ? data : Float32Array.from(data instanceof Uint16Array ? Array.from(data, fromFloat16Bits) : data));
  const hidden = 64, headDim = 32;
  const cases = await (await fetch('/cases.json')).json();
  for (const c of cases) {
    const row = { tokens: [], logits: [], stepMs: [] };
    try {
      let features;
      if (c.pixel_values) {
        const started = performance.now();
        const out = await vision.run({ pixel_values: new ort.Tensor('float32', Float32Array.from(c.pixel_values), c.pixel_shape) });
        row.visionMs = performance.now() - started;
        const f = out.image_features;
        row.features = Array.from(f.data);
        features = new ort.Tensor('float32', f.data, [f.dims[0] * f.dims[1], f.dims[2]]);
      } else {
        features = new ort.Tensor('float32', new Float32Array(hidden), [1, hidden]);
      }
      let past = Object.fromEntries(pastNames.map((n) => [n, new ort.Tensor(half ? 'float16' : 'float32', half ? new Uint16Array(0) : new Float32Array(0), [1, 1, 0, headDim])]));
      let current = c.input_ids, total = 0;
      for (let step = 0; step < steps; step++) {
        const started = performance.now();
        const ids = new ort.Tensor('int64', BigInt64Array.from(current.map(BigInt)), [1, current.length]);
        const { inputs_embeds } = await embedding.run({ input_ids: ids, image_features: features });
        total += current.length;
        const mask = new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]);
        const out = await decoder.run({ inputs_embeds: half ? toHalf(inputs_embeds) : inputs_embeds, attention_mask: mask, ...past });
        past = Object.fromEntries(pastNames.map((n) => [n, out[n.replace('past_key_values', 'present')]]));
        const logits = fromHalf(out.logits.data).slice((out.logits.dims[1] - 1) * out.logits.dims[2]);
        let best = 0;
        for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
        row.stepMs.push(performance.now() - started);
        row.tokens.push(best);
        row.logits.push(Array.from(logits));
        current = [best];
      }
    } catch (error) {
      row.error = String(error && error.stack || error);
    }
    result.cases[c.name] = row;
    log(`${c.name}: ${row.tokens.join(' ')} ${row.error || ''}`);
  }
}

main().catch((error) => { result.errors.push(String(error && error.stack || error)); log('ERROR ' + error); })
  .finally(() => { window.probeResult = result; document.body.dataset.state = 'done'; });
