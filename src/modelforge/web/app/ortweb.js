// modelforge web app: onnxruntime-web variants. Runs the onnx target's own graphs (vision.onnx →
// embedding.onnx → the decoder with its KV cache, onnxruntime-genai's layout; a text-only package's
// decoder alone), which its build checks against PyTorch (steps/onnx/parity.py), with a greedy loop, and prepares the prompt as litert.js does
// (the chat template, the image's soft tokens in place of `<start_of_image>`, tokenizer.json's ids).
// On WebGPU the weights go from the page's buffers straight into GPU buffers and the KV cache stays on
// the GPU between steps: how MedGemma 4B reads images in a tab (docs/web-routes.md).
//
// Imports litert.js's shared helpers only; the vendored runtime modules (content-hashed URLs in
// bundle.json) are imported by loadOrtwebRuntime.

import { argmax, promptIds, yieldToPage } from "./litert.js";

let runtime = null; // {ort, tokenizers, jinja}

// Loads onnxruntime-web (its WebGPU build, which also runs the wasm CPU provider), the tokenizer and
// the template renderer once. The module finds its Emscripten pair by the content-hashed URLs.
export async function loadOrtwebRuntime(section) {
  if (runtime) return runtime;
  const url = (name) => new URL(section.files[name].url, location.href).href;
  const [ort, tokenizers, jinja] = await Promise.all([
    import(url("ort.webgpu.min.mjs")), import(url("tokenizers.mjs")), import(url("jinja.mjs")),
  ]);
  ort.env.wasm.wasmPaths = { mjs: url("ort-wasm-simd-threaded.asyncify.mjs"), wasm: url("ort-wasm-simd-threaded.asyncify.wasm") };
  ort.env.wasm.numThreads = 1; // no worker threads: the page's CPU path stays one wasm instance
  ort.env.logLevel = "error";
  runtime = { ort, tokenizers, jinja, gpu: null };
  return runtime;
}

// onnxruntime-web 1.30's flash attention (GroupQueryAttention's prefill on a device with subgroups,
// up to MedGemma's sliding window) takes 8 or 16 keys a step, one per subgroup lane, and loads only a
// subgroup's width of them: on an adapter whose subgroups are narrower (SwiftShader's are 4 lanes) it
// reads stale keys, and every prompt of 32 tokens or more is attended wrongly — at MedGemma 4B the
// image prompt's answer departed from the first token (measured: experiments/ortweb_gqa). Such an
// adapter, or one that does not say its subgroup size, gets a device without subgroups, on which
// onnxruntime-web takes its plain attention kernels; other adapters keep onnxruntime-web's own device.
const FLASH_ATTENTION_MIN_SUBGROUP = 8;
// The features and limits onnxruntime-web asks of its own device (WebGpuContext), less subgroups.
const GPU_FEATURES = ["timestamp-query", "shader-f16"];
const GPU_LIMITS = [
  "maxBindGroups", "maxComputeWorkgroupStorageSize", "maxComputeWorkgroupsPerDimension", "maxStorageBuffersPerShaderStage",
  "maxStorageBufferBindingSize", "maxBufferSize", "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ",
];

// The WebGPU execution provider for this page's sessions, with a note where it withheld subgroups.
// One device for the page (onnxruntime-web keeps the first it is given), from an adapter of its own.
async function webgpuProvider() {
  if (runtime.gpu) return runtime.gpu;
  const adapter = await navigator.gpu?.requestAdapter();
  const width = adapter?.info?.subgroupMinSize;
  if (!adapter || !adapter.features.has("subgroups") || width >= FLASH_ATTENTION_MIN_SUBGROUP) {
    runtime.gpu = { provider: "webgpu", note: null };
    return runtime.gpu;
  }
  const device = await adapter.requestDevice({
    requiredFeatures: GPU_FEATURES.filter((feature) => adapter.features.has(feature)),
    requiredLimits: Object.fromEntries(GPU_LIMITS.map((name) => [name, adapter.limits[name]])),
  });
  const lanes = width ? `${width} lanes wide` : "of an unstated width";
  runtime.gpu = {
    provider: { name: "webgpu", device },
    note: `this GPU's subgroups are ${lanes}, narrower than onnxruntime-web's fast attention needs (${FLASH_ATTENTION_MIN_SUBGROUP}): it runs without them, exact but slower`,
  };
  return runtime.gpu;
}

// A started onnxruntime-web variant. `files` maps each logical file of the variant (bundle.json) to
// its verified bytes (Uint8Array); each graph's data file is handed over under the name the graph
// gives it (variant.external_data), then let go.
// `adapterLimits` (WebGPU): the adapter's maxBufferSize and maxStorageBufferBindingSize. The vision
// graph runs on the CPU where one group of its attention heads' scores (generation.image.attention_bytes:
// 128 MiB at MedGemma's 896 px, 2 of 16 heads) fill the largest buffer the adapter offers (all 16 heads'
// 1 GiB failed with "Invalid Buffer" on SwiftShader's 1 GiB); on WebGPU otherwise, falling back to the
// CPU if its first run fails.
export async function startOrtwebVariant(variant, files, backend, adapterLimits = null) {
  const { tokenizers, jinja } = runtime;
  const text = (bytes) => new TextDecoder().decode(bytes);
  const tokenizer = new tokenizers.Tokenizer(JSON.parse(text(files.tokenizer)), JSON.parse(text(files.tokenizer_config)));
  const template = new jinja.Template(text(files.chat_template));
  const provider = backend === "webgpu" ? "webgpu" : "wasm";
  const notes = [];
  const gpu = provider === "webgpu" ? await webgpuProvider() : null;
  if (gpu?.note) notes.push(gpu.note);
  const providers = { vision: provider, embedding: provider, decoder: provider };
  const image = variant.generation.image;
  if (provider === "webgpu" && files.vision && image?.attention_bytes && adapterLimits) {
    const largest = Math.min(adapterLimits.maxBufferSize, adapterLimits.maxStorageBufferBindingSize);
    if (image.attention_bytes >= largest) {
      providers.vision = "wasm";
      notes.push(`the vision graph's attention needs ${image.attention_bytes} bytes in one buffer, and this GPU offers at most ${largest}: images are read on the CPU`);
    }
  }
  const sessions = {};
  let retry = null; // the vision graph's bytes, while a WebGPU vision session may still need a CPU stand-in
  for (const graph of ["vision", "embedding", "decoder"]) {
    if (!files[graph]) continue;
    const chosen = providers[graph] === "webgpu" ? gpu.provider : providers[graph];
    sessions[graph] = await createSession(variant, graph, files[graph], files[`${graph}_data`], chosen);
    if (graph === "vision" && providers.vision === "webgpu") retry = { model: files.vision, data: files.vision_data };
    files[graph] = files[`${graph}_data`] = null; // the runtime holds what it needs
  }
  const engine = new OrtwebEngine(variant, sessions, provider, tokenizer, template, notes);
  engine.visionRetry = retry;
  return engine;
}

// `provider`: "wasm", or the WebGPU provider of webgpuProvider ("webgpu" or {name: "webgpu", device}).
async function createSession(variant, graph, model, data, provider) {
  const options = {
    executionProviders: [provider],
    graphOptimizationLevel: "all",
    externalData: [{ path: variant.external_data[graph], data }],
  };
  // The KV cache and logits stay where the decoder computed them; the loop reads the logits back.
  if (graph === "decoder" && provider !== "wasm") options.preferredOutputLocation = "gpu-buffer";
  try {
    return await runtime.ort.InferenceSession.create(model, options);
  } catch (err) {
    throw new Error(`${graph}: ${String(err?.message || err).split("\n")[0]}`);
  }
}

class OrtwebEngine {
  constructor(variant, sessions, backend, tokenizer, template, notes) {
    this.variant = variant;
    this.generation = variant.generation;
    this.sessions = sessions;
    this.backend = backend;
    this.tokenizer = tokenizer;
    this.template = template;
    this.notes = notes;
    this.runtimeName = "onnxruntime-web";
    this.multimodal = Boolean(sessions.vision && this.generation.image);
    this.pastNames = sessions.decoder.inputNames.filter((name) => name.startsWith("past_key_values."));
    this.stopIds = new Set(this.generation.stop_tokens.map((t) => t.id));
  }

  // The processor's pixels for vision.onnx: the page's [0, 1] RGB (NHWC, litert.js imagePixels) →
  // normalized with the processor's mean and std, NCHW.
  normalized(pixels) {
    const { height, width, image_mean: mean, image_std: std } = this.generation.image;
    const plane = height * width;
    const out = new Float32Array(3 * plane);
    for (let i = 0; i < plane; i++) for (let c = 0; c < 3; c++) out[c * plane + i] = (pixels[i * 3 + c] - mean[c]) / std[c];
    return out;
  }

  async softTokens(pixels) {
    const { ort } = runtime;
    const image = this.generation.image;
    const input = new ort.Tensor("float32", this.normalized(pixels), [1, 3, image.height, image.width]);
    let outputs;
    try {
      outputs = await this.sessions.vision.run({ pixel_values: input });
    } catch (err) {
      if (!this.visionRetry) throw err;
      // The first image on WebGPU failed (e.g. a buffer larger than the GPU allows): read images on the CPU.
      const { model, data } = this.visionRetry;
      this.visionRetry = null;
      await this.sessions.vision.release();
      this.sessions.vision = await createSession(this.variant, "vision", model, data, "wasm");
      this.onNote?.(`the vision graph failed on WebGPU (${String(err?.message || err).split("\n")[0]}); images are read on the CPU`);
      outputs = await this.sessions.vision.run({ pixel_values: input });
    }
    this.visionRetry = null; // it ran: its bytes can go
    const output = Object.values(outputs)[0];
    const rows = output.dims[0];
    if (rows !== image.soft_tokens) throw new Error(`the vision graph gave ${rows} soft tokens, the prompt has ${image.soft_tokens}`);
    const data = await output.getData();
    output.dispose();
    return new ort.Tensor("float32", data, [rows, this.generation.decoder.hidden]);
  }

  // One decoder call on `ids` after the cache so far; returns the last position's logits.
  async step(ids) {
    const { ort } = runtime;
    const input = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
    // A multimodal package embeds the ids (and places the soft tokens) in embedding.onnx; a text-only
    // decoder takes the ids itself.
    const feeds = this.sessions.embedding
      ? { inputs_embeds: (await this.sessions.embedding.run({ input_ids: input, image_features: this.features })).inputs_embeds }
      : { input_ids: input };
    this.total += ids.length;
    const mask = new ort.Tensor("int64", new BigInt64Array(this.total).fill(1n), [1, this.total]);
    const outputs = await this.sessions.decoder.run({ ...feeds, attention_mask: mask, ...this.past });
    feeds.inputs_embeds?.dispose();
    this.release();
    this.past = Object.fromEntries(this.pastNames.map((name) => [name, outputs[name.replace("past_key_values.", "present.")]]));
    const logits = outputs.logits;
    const data = await logits.getData();
    logits.dispose();
    const vocabulary = logits.dims.at(-1);
    return data.subarray(data.length - vocabulary);
  }

  // A fresh, empty KV cache (past length 0).
  reset() {
    const { ort } = runtime;
    const { kv_heads: heads, head_dim: dim } = this.generation.decoder;
    this.release();
    this.past = Object.fromEntries(this.pastNames.map((name) => [name, new ort.Tensor("float32", new Float32Array(0), [1, heads, 0, dim])]));
    this.total = 0;
  }

  release() {
    for (const tensor of Object.values(this.past || {})) if (tensor.location === "gpu-buffer") tensor.dispose();
    this.past = {};
  }

  text(tokens) {
    return tokens.length ? this.tokenizer.decode(tokens, { skip_special_tokens: true }) : "";
  }

  // Greedy answer to `question` (with `pixels` when an image is attached), as litert.js's generate:
  // onText(text, tokens) after each token, shouldStop() before each, the page given a turn in between.
  async generate(question, pixels, { onText, shouldStop }) {
    const { ort } = runtime;
    const ids = promptIds(this.template, this.tokenizer, this.generation, question, Boolean(pixels));
    const limit = Math.min(this.variant.max_tokens, this.generation.cache_length);
    if (ids.length >= limit) throw new Error(`the question is ${ids.length} tokens long; this model takes at most ${limit - 1}`);
    const hidden = this.generation.decoder.hidden;
    this.features = pixels ? await this.softTokens(pixels) : new ort.Tensor("float32", new Float32Array(hidden), [1, hidden]); // unread without embedding.onnx
    if (pixels) {
      const slots = ids.filter((id) => id === this.generation.image.soft_token.id).length;
      if (slots !== this.generation.image.soft_tokens) {
        throw new Error(`the prompt has ${slots} image slots, the image ${this.generation.image.soft_tokens} soft tokens`);
      }
    }
    this.reset();
    const tokens = [];
    let stopped = false;
    let ended = "length";
    try {
      await yieldToPage();
      if (shouldStop()) return { text: "", tokens, promptTokens: ids, stopped: true, ended: "stopped" };
      let logits = await this.step(ids);
      let position = ids.length;
      for (;;) {
        const token = argmax(logits);
        if (this.stopIds.has(token)) {
          ended = "stop token";
          break;
        }
        tokens.push(token);
        onText(this.text(tokens), tokens);
        if (position + 1 >= limit) break;
        await yieldToPage();
        if (shouldStop()) {
          stopped = true;
          ended = "stopped";
          break;
        }
        logits = await this.step([token]);
        position += 1;
      }
    } finally {
      this.release();
    }
    return { text: this.text(tokens), tokens, promptTokens: ids, stopped, ended };
  }
}
