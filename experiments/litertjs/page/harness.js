// LiteRT.js route (issue #12): runs the tiny MedGemma graphs modelforge exports in the page.
//   ?mode=graphs&backend=wasm|webgpu    each graph's signatures on fixed inputs (plan.json), outputs returned
//   ?mode=generate&backend=wasm|webgpu  greedy generation: embedder -> prefill -> decode with the KV cache,
//                                       exactly as modelforge's TfliteDecoder (parity_impl.py), text and image
// The result is JSON in #result; body[data-state] becomes "done" (or "error"). Everything is served
// from this origin: the LiteRT.js wasm files are vendored under runtime/, nothing comes from a CDN.
import {loadLiteRt, loadAndCompile, Tensor, getWebGpuDevice} from './runtime/core/index.js';

const params = new URLSearchParams(location.search);
const backend = params.get('backend') || 'wasm';
const mode = params.get('mode') || 'graphs';
const jspi = params.get('jspi') !== '0';
const planFile = params.get('plan') || 'plan.json';
// precision: the WebGPU delegate's (fp16 | fp32; unset: LiteRT.js's default). embed: where the embedder
// runs in generation (default: the same backend as the decoder; 'wasm': on the CPU beside a WebGPU decoder).
const precision = params.get('precision');
const embedBackend = params.get('embed') || backend;
// cpu: graphs forced onto the wasm CPU backend whatever `backend` says (e.g. cpu=vision_encoder,vision_adapter).
const onCpu = new Set((params.get('cpu') || '').split(',').filter(Boolean));
const acceleratorOf = (name) => (onCpu.has(name) ? 'wasm' : name === 'embedder' ? embedBackend : backend);
const MASKED = -3.4028234663852886e38 / 2;  // np.finfo(np.float32).min / 2, as parity_impl.MASKED
const log = [];

function status(text) {
  document.getElementById('status').textContent = text;
  log.push(`${performance.now().toFixed(0)} ms: ${text}`);
}

function finish(state, result) {
  document.getElementById('result').textContent = JSON.stringify({...result, log});
  document.body.dataset.state = state;
}

function base64(typed) {
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function fetchTyped(url, dtype) {
  const buffer = await (await fetch(url)).arrayBuffer();
  return dtype === 'int32' ? new Int32Array(buffer) : new Float32Array(buffer);
}

async function load(file, accelerator = backend) {
  const t0 = performance.now();
  const bytes = new Uint8Array(await (await fetch(file)).arrayBuffer());
  const t1 = performance.now();
  const options = {accelerator};
  if (accelerator === 'webgpu' && precision) options.gpuOptions = {precision};
  const model = await loadAndCompile(bytes, options);
  const t2 = performance.now();
  return {model, fetch_ms: t1 - t0, compile_ms: t2 - t1, fully_accelerated: model.isFullyAccelerated};
}

function details(runner) {
  const describe = (d) => ({name: d.name, dtype: d.dtype, shape: Array.from(d.shape)});
  return {inputs: runner.getInputDetails().map(describe), outputs: runner.getOutputDetails().map(describe)};
}

async function graphs(plan) {
  const results = {};
  for (const graph of plan.graphs) {
    const entry = results[graph.name] = {};
    try {
      status(`loading ${graph.name}`);
      const {model, ...timing} = await load(graph.file);
      Object.assign(entry, timing);
      entry.signatures = Object.fromEntries(Object.entries(model.signatures).map(([key, runner]) => [key, details(runner)]));
      entry.checks = {};
      for (const check of graph.checks) {
        const record = entry.checks[check.signature] = {};
        try {
          status(`running ${graph.name}/${check.signature}`);
          const inputs = {};
          for (const [name, spec] of Object.entries(check.inputs)) {
            inputs[name] = new Tensor(await fetchTyped(spec.file, spec.dtype), spec.shape);
          }
          const runner = model.signatures[check.signature];
          const runs = [];
          let outputs;
          for (let repeat = 0; repeat < 3; repeat++) {
            if (outputs) for (const tensor of Object.values(outputs)) tensor.delete();
            const t0 = performance.now();
            outputs = await runner.run(inputs);
            // Reading the outputs back is part of a run: WebGPU work is asynchronous until then.
            const arrays = {};
            for (const [name, tensor] of Object.entries(outputs)) arrays[name] = await tensor.data();
            runs.push(performance.now() - t0);
            record.outputs = Object.fromEntries(Object.entries(arrays).map(([name, array]) => [name, {
              dtype: array instanceof Int32Array ? 'int32' : 'float32', base64: base64(array)}]));
          }
          record.run_ms = runs;
          for (const tensor of Object.values(outputs)) tensor.delete();
          for (const tensor of Object.values(inputs)) tensor.delete();
        } catch (error) {
          record.error = String(error && error.stack || error);
        }
      }
      model.delete();
    } catch (error) {
      entry.error = String(error && error.stack || error);
    }
  }
  return results;
}

// ---- generation: modelforge's TfliteDecoder, in the page ------------------------------------------

class Decoder {
  constructor(models, spec) {
    this.models = models;
    this.spec = spec;  // cache_length, prefill_lengths, cache_names, hidden
    this.cache = null;
    this.timing = {embed_ms: 0, prefill_ms: 0, decode_ms: [], vision_ms: 0};
  }

  reset() {
    if (this.cache) for (const tensor of Object.values(this.cache)) tensor.delete();
    const decode = this.models.model.signatures.decode;
    this.cache = {};
    for (const d of decode.getInputDetails()) {
      if (this.spec.cache_names.includes(d.name)) {
        const size = Array.from(d.shape).reduce((a, b) => a * b, 1);
        this.cache[d.name] = new Tensor(new Float32Array(size), Array.from(d.shape));
      }
    }
  }

  async embed(tokens) {
    const t0 = performance.now();
    const hidden = this.spec.hidden;
    const rows = new Float32Array(tokens.length * hidden);
    const runner = Object.values(this.models.embedder.signatures)[0];
    for (let i = 0; i < tokens.length; i++) {
      const input = new Tensor(new Int32Array([tokens[i]]), [1, 1]);
      const outputs = await runner.run({token_ids: input});
      rows.set(await outputs.embeddings.data(), i * hidden);
      input.delete();
      for (const tensor of Object.values(outputs)) tensor.delete();
    }
    this.timing.embed_ms += performance.now() - t0;
    return rows;
  }

  mask(positions) {
    const length = positions.length, cacheLength = this.spec.cache_length;
    const mask = new Float32Array(length * cacheLength).fill(MASKED);
    positions.forEach((position, row) => mask.fill(0, row * cacheLength, row * cacheLength + position + 1));
    return new Tensor(mask, [1, 1, length, cacheLength]);
  }

  async run(signature, embeddings, positions) {
    const length = positions.length;
    const inputs = {
      embeddings: new Tensor(embeddings, [1, length, this.spec.hidden]),
      input_pos: new Tensor(Int32Array.from(positions), [length]),
      mask: this.mask(positions),
    };
    const outputs = await this.models.model.signatures[signature].run({...inputs, ...this.cache});
    for (const tensor of Object.values(inputs)) tensor.delete();
    for (const tensor of Object.values(this.cache)) tensor.delete();
    this.cache = {};
    // The new cache stays where the accelerator put it (on WebGPU: GPU buffers), fed straight back.
    for (const name of this.spec.cache_names) this.cache[name] = outputs[name];
    let logits = null;
    if (outputs.logits) {
      logits = await outputs.logits.data();
      outputs.logits.delete();
    }
    return logits;
  }

  async prefill(tokens, replace) {
    if (!tokens.length) return;
    const length = this.spec.prefill_lengths.find((l) => l >= tokens.length);
    if (length === undefined) throw new Error(`prompt of ${tokens.length} tokens is longer than the largest prefill length`);
    const padded = tokens.concat(new Array(length - tokens.length).fill(0));
    const embeddings = await this.embed(padded);
    if (replace) replace(embeddings);
    const t0 = performance.now();
    await this.run(`prefill_${length}`, embeddings, [...Array(length).keys()]);
    this.timing.prefill_ms += performance.now() - t0;
    this.timing.prefill_length = length;
  }

  async step(token, position) {
    const embeddings = await this.embed([token]);
    const t0 = performance.now();
    const logits = await this.run('decode', embeddings, [position]);
    this.timing.decode_ms.push(performance.now() - t0);
    return logits;
  }
}

function argmax(array) {
  let best = 0;
  for (let i = 1; i < array.length; i++) if (array[i] > array[best]) best = i;
  return best;
}

// The runtime's pixels: decode the PNG to 8-bit RGB, / 255, NHWC (image_input.runtime_pixels). The test
// card already has the processor's size, so no resize happens (a real page resizes first).
async function runtimePixels(url, height, width) {
  const blob = await (await fetch(url)).blob();
  const bitmap = await createImageBitmap(blob, {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
  if (bitmap.width !== width || bitmap.height !== height) throw new Error(`test card is ${bitmap.width}x${bitmap.height}, expected ${width}x${height}`);
  const canvas = new OffscreenCanvas(width, height);
  const context = canvas.getContext('2d', {colorSpace: 'srgb'});
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, width, height).data;
  const pixels = new Float32Array(height * width * 3);
  for (let i = 0; i < height * width; i++) for (let c = 0; c < 3; c++) pixels[i * 3 + c] = rgba[i * 4 + c] / 255;
  return pixels;
}

async function generate(decoder, ids, steps, replace) {
  decoder.reset();
  await decoder.prefill(ids.slice(0, -1), replace);
  let token = ids[ids.length - 1], position = ids.length - 1;
  const tokens = [];
  for (let s = 0; s < steps && position < decoder.spec.cache_length; s++) {
    const logits = await decoder.step(token, position);
    token = argmax(logits);
    tokens.push(token);
    position += 1;
  }
  return tokens;
}

async function generation(plan) {
  const spec = plan.generation;
  const result = {load: {}};
  const models = {};
  for (const graph of plan.graphs) {
    status(`loading ${graph.name}`);
    const {model, ...timing} = await load(graph.file, acceleratorOf(graph.name));
    models[graph.name] = model;
    result.load[graph.name] = timing;
  }
  const decoder = new Decoder(models, spec);
  status('text generation');
  let t0 = performance.now();
  result.text_tokens = await generate(decoder, spec.text.ids, spec.text.steps);
  result.text_ms = performance.now() - t0;
  result.text_timing = {...decoder.timing};
  decoder.timing = {embed_ms: 0, prefill_ms: 0, decode_ms: [], vision_ms: 0};

  status('image generation');
  t0 = performance.now();
  const image = spec.image;
  const pixels = await runtimePixels(image.card, image.height, image.width);
  result.pixels_base64 = base64(pixels);
  const tv = performance.now();
  const encode = Object.values(models.vision_encoder.signatures)[0];
  const adapt = Object.values(models.vision_adapter.signatures)[0];
  const pixelTensor = new Tensor(pixels, [1, image.height, image.width, 3]);
  const encoded = await encode.run({images: pixelTensor});
  const adapted = await adapt.run({soft_tokens: Object.values(encoded)[0]});
  const soft = await Object.values(adapted)[0].data();
  decoder.timing.vision_ms = performance.now() - tv;
  pixelTensor.delete();
  for (const tensor of [...Object.values(encoded), ...Object.values(adapted)]) tensor.delete();
  result.soft_tokens_base64 = base64(soft);
  // Soft tokens take the places of the image placeholder tokens, in order (the processor's layout).
  const slots = image.ids.slice(0, -1).flatMap((id, index) => (id === image.image_token ? [index] : []));
  // The adapter emits one row more than the image has slots (5 for 4 here); parity_impl.vision_parity
  // compares its first rows with PyTorch's image features, and so does this splice.
  if (slots.length * spec.hidden > soft.length) throw new Error(`${slots.length} image slots but ${soft.length / spec.hidden} soft tokens`);
  const replace = (embeddings) => slots.forEach((slot, k) => embeddings.set(soft.subarray(k * spec.hidden, (k + 1) * spec.hidden), slot * spec.hidden));
  result.image_tokens = await generate(decoder, image.ids, image.steps, replace);
  result.image_ms = performance.now() - t0;
  result.image_timing = {...decoder.timing};
  return result;
}

async function main() {
  const plan = await (await fetch(planFile)).json();
  const result = {backend, mode, jspi, plan: planFile, precision, embed_backend: embedBackend, cpu: [...onCpu], user_agent: navigator.userAgent, cross_origin_isolated: self.crossOriginIsolated};
  try {
    status('loading LiteRT.js wasm');
    const t0 = performance.now();
    await loadLiteRt('./runtime/wasm/', {jspi});
    result.wasm_load_ms = performance.now() - t0;
    if (backend === 'webgpu') {
      const device = getWebGpuDevice();
      result.webgpu_device = device ? String(device.adapterInfo && (device.adapterInfo.vendor + ' ' + device.adapterInfo.architecture + ' ' + device.adapterInfo.description)) : null;
    }
    result.wasm_file = performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.includes('litert_wasm'));
    if (mode === 'graphs') result.graphs = await graphs(plan);
    else result.generation = await generation(plan);
    status('done');
    finish('done', result);
  } catch (error) {
    result.error = String(error && error.stack || error);
    finish('error', result);
  }
}

main();
