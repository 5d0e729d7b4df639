// Loads the onnx target's three graphs (vision.onnx, embedding.onnx, model.onnx, each with its
// external .data) in onnxruntime-web on the execution provider of the query
// (?ep=webgpu|wasm&vision_ep=wasm&kv=gpu|cpu&steps=N&chunk=N&only=chat,image&subgroups=off), runs a greedy loop for every case of
// /cases.json and leaves per step the argmax and the logits at the reference's top-20 ids in
// window.probeResult. Each phase is logged as it ends, so a crash says how far it got.
const params = new URLSearchParams(location.search);
const ep = params.get('ep') || 'webgpu';
const bundle = ep === 'webgpu' ? 'ort.webgpu.min.mjs' : 'ort.wasm.min.mjs';
const steps = Number(params.get('steps') || 4);
const only = params.get('only') ? params.get('only').split(',') : null;
const kvOnGpu = ep === 'webgpu' && params.get('kv') !== 'cpu';
const result = { ep, visionEp: params.get('vision_ep') || ep, kvOnGpu, errors: [], phases: [], cases: {} };
window.probeResult = result;
const t0 = performance.now();
const log = (line) => {
  const entry = `${((performance.now() - t0) / 1000).toFixed(1)}s ${line}`;
  result.phases.push(entry);
  document.getElementById('log').textContent += entry + '\n';
  console.log(entry);
};

async function main() {
  let gpuProvider = 'webgpu';
  const ort = await import(`/ort/${bundle}`);
  ort.env.wasm.wasmPaths = '/ort/';
  ort.env.wasm.numThreads = 1;
  result.crossOriginIsolated = self.crossOriginIsolated;
  if (ep === 'webgpu') {
    const adapter = await navigator.gpu?.requestAdapter();
    if (!adapter) throw new Error('no WebGPU adapter');
    result.adapter = { vendor: adapter.info.vendor, architecture: adapter.info.architecture };
    result.adapterLimits = { maxBufferSize: adapter.limits.maxBufferSize, maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize };
    result.subgroupSizes = [adapter.info.subgroupMinSize, adapter.info.subgroupMaxSize];
    if (params.get('subgroups') === 'off') {
      // A device without subgroups, as the product page gives onnxruntime-web on an adapter whose
      // subgroups are narrower than its flash attention assumes (experiments/ortweb_gqa).
      const limits = ['maxBindGroups', 'maxComputeWorkgroupStorageSize', 'maxComputeWorkgroupsPerDimension', 'maxStorageBuffersPerShaderStage',
        'maxStorageBufferBindingSize', 'maxBufferSize', 'maxComputeInvocationsPerWorkgroup', 'maxComputeWorkgroupSizeX', 'maxComputeWorkgroupSizeY', 'maxComputeWorkgroupSizeZ'];
      const device = await adapter.requestDevice({
        requiredFeatures: ['timestamp-query', 'shader-f16'].filter((f) => adapter.features.has(f)),
        requiredLimits: Object.fromEntries(limits.map((k) => [k, adapter.limits[k]])),
      });
      gpuProvider = { name: 'webgpu', device };
      result.subgroups = 'off';
    }
  }
  const { hidden, kv_heads: kvHeads, head_dim: headDim, cases } = await (await fetch('/cases.json')).json();
  const create = async (name, file, extra = {}) => {
    const started = performance.now();
    let provider = name === 'vision' ? (params.get('vision_ep') || ep) : ep;
    if (provider === 'webgpu') provider = gpuProvider;
    const session = await ort.InferenceSession.create(`/graphs/${file}`, {
      executionProviders: [provider], graphOptimizationLevel: 'all',
      externalData: [{ path: `${file}.data`, data: `/graphs/${file}.data` }], ...extra,
    });
    log(`${name} session ${(performance.now() - started).toFixed(0)} ms`);
    return session;
  };
  const wanted = cases.filter((c) => !only || only.includes(c.name));
  const vision = wanted.some((c) => c.pixel_values) ? await create('vision', 'vision.onnx') : null;
  const embedding = await create('embedding', 'embedding.onnx');
  const decoderProbe = await create('decoder', 'model.onnx', kvOnGpu ? { preferredOutputLocation: 'gpu-buffer' } : {});
  const decoder = decoderProbe;
  const pastNames = decoder.inputNames.filter((n) => n.startsWith('past_key_values'));
  result.startupMs = performance.now() - t0;
  for (const c of wanted) {
    const row = { tokens: [], top: [], stepMs: [] };
    result.cases[c.name] = row;
    try {
      let features = new ort.Tensor('float32', new Float32Array(hidden), [1, hidden]);
      if (c.pixel_values) {
        const started = performance.now();
        const out = await vision.run({ pixel_values: new ort.Tensor('float32', Float32Array.from(c.pixel_values), c.pixel_shape) });
        row.visionMs = performance.now() - started;
        const f = out.image_features;
        const data = await f.getData();
        row.featuresHead = Array.from(data.slice(0, 64));
        let norm = 0; for (const v of data) norm += v * v; row.featuresNorm = Math.sqrt(norm);
        features = new ort.Tensor('float32', data, f.dims.length === 3 ? [f.dims[0] * f.dims[1], f.dims[2]] : f.dims);
        log(`${c.name}: vision ${row.visionMs.toFixed(0)} ms`);
      }
      let past = Object.fromEntries(pastNames.map((n) => [n, new ort.Tensor('float32', new Float32Array(0), [1, kvHeads, 0, headDim])]));
      let current = c.input_ids, total = 0;
      const chunk = Number(params.get('chunk') || 0); // prefill in pieces of this many tokens (0: whole)
      for (let step = 0; step < steps; step++) {
        const started = performance.now();
        let out;
        for (let at = 0; at < current.length; at += chunk || current.length) {
          const piece = current.slice(at, chunk ? at + chunk : current.length);
          const ids = new ort.Tensor('int64', BigInt64Array.from(piece.map(BigInt)), [1, piece.length]);
          const { inputs_embeds: embeds } = await embedding.run({ input_ids: ids, image_features: features });
          total += piece.length;
          const mask = new ort.Tensor('int64', new BigInt64Array(total).fill(1n), [1, total]);
          out = await decoder.run({ inputs_embeds: embeds, attention_mask: mask, ...past });
          for (const t of Object.values(past)) if (t.location === 'gpu-buffer') t.dispose();
          past = Object.fromEntries(pastNames.map((n) => [n, out[n.replace('past_key_values', 'present')]]));
        }
        const logitsTensor = out.logits;
        const all = await logitsTensor.getData();
        const vocab = logitsTensor.dims[2];
        const last = all.subarray((logitsTensor.dims[1] - 1) * vocab);
        let best = 0;
        for (let i = 1; i < last.length; i++) if (last[i] > last[best]) best = i;
        const ref = c.reference.top[step];
        row.top.push(ref ? ref.ids.map((id) => last[id]) : []);
        row.tokens.push(best);
        row.stepMs.push(performance.now() - started);
        log(`${c.name}: step ${step} token ${best} ${row.stepMs.at(-1).toFixed(0)} ms`);
        current = [best];
      }
      for (const t of Object.values(past)) if (t.location === 'gpu-buffer') t.dispose();
    } catch (error) {
      row.error = String(error && error.stack || error);
      log(`${c.name}: ERROR ${row.error}`);
    }
  }
}

main().catch((error) => { result.errors.push(String(error && error.stack || error)); log('ERROR ' + error); })
  .finally(() => { document.body.dataset.state = 'done'; });
