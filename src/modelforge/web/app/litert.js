// modelforge web app: LiteRT.js variants. Runs the litertlm target's own graphs (embedder,
// prefill/decode with the KV cache, vision encoder and adapter) with a greedy decoding loop — the
// loop of modelforge's TfliteDecoder (steps/parity_impl.py), which the build checks against PyTorch —
// and prepares the prompt as the source's processor does: the chat template (Jinja), the image's
// soft tokens in place of `<start_of_image>`, and tokenizer.json's ids.
//
// Imports nothing at load time: the vendored runtime modules (content-hashed URLs in bundle.json)
// are imported by loadLitertRuntime.

// np.finfo(np.float32).min / 2: what parity_impl.MASKED puts where attention is not allowed.
const MASKED = -3.4028234663852886e38 / 2;

let runtime = null; // {core, tokenizers, jinja, loader}

// Loads LiteRT.js, the tokenizer and the template renderer once. The wasm build is picked from the
// browser's features as loadLiteRt(dir) would (JSPI + relaxed SIMD, relaxed SIMD, neither), by URL:
// the file names carry content hashes, so the directory form cannot find them.
export async function loadLitertRuntime(litertjs) {
  if (runtime) return runtime;
  const url = (name) => new URL(litertjs.files[name].url, location.href).href;
  const core = await import(url("litertjs_core.mjs"));
  const [tokenizers, jinja] = await Promise.all([import(url("tokenizers.mjs")), import(url("jinja.mjs"))]);
  const relaxed = await core.supportsFeature("relaxedSimd").catch(() => false);
  const jspi = relaxed && (await core.supportsFeature("jspi").catch(() => false));
  const loader = jspi ? "litert_wasm_jspi_internal.js" : relaxed ? "litert_wasm_internal.js" : "litert_wasm_compat_internal.js";
  await core.loadLiteRt(url(loader));
  runtime = { core, tokenizers, jinja, loader };
  return runtime;
}

// Compiles one graph, on `backend` ("webgpu" or "wasm"). A graph the WebGPU delegate cannot compile
// (LiteRT.js 2.5.3: int8 weight-only vision graphs) runs on the wasm CPU backend instead; `notes`
// gets why.
async function compile(name, bytes, backend, notes) {
  const { core } = runtime;
  try {
    return { model: await core.loadAndCompile(bytes, { accelerator: backend }), backend };
  } catch (err) {
    if (backend !== "webgpu") throw new Error(`${name}: ${err?.message || err}`);
    notes.push(`${name} could not be compiled for WebGPU (${String(err?.message || err).split("\n")[0]}); it runs on the CPU`);
    return { model: await core.loadAndCompile(bytes, { accelerator: "wasm" }), backend: "wasm" };
  }
}

// Streamed weights (a `stream_weights` variant, docs/web-streamed-weights.md): `bytes` is the graph's
// flatbuffer, its quantized weights are `weights` ({size, reader()}: a reader of verified parts from the
// start, each call), which loadModelAndWeights writes straight into WebGPU buffers. WebGPU only.
//
// LiteRT.js 2.5.3 first maps every external weight on the CPU side from a file named `entry.group` in its
// Emscripten file system (and fails without one); a real file there would pass every weight through
// the 2 GiB heap. So the file is an entry of the weights' size with no contents whose every mapping is
// the one `scratch` region (as large as the largest weight): nothing is copied, and the weights reach
// the GPU only through the stream. This leans on Emscripten internals of the 2.5.3 build
// (FS_createLazyFile, a node's stream_ops.mmap); experiments/litertjs_streamed/driver.py re-checks them.
// The delegate asks for the stream once per partition it compiles: each getReader() starts over.
async function compileStreamed(name, bytes, weights, entry, scratch, stats) {
  const { core } = runtime;
  const wasm = core.getGlobalLiteRt().liteRtWasm;
  if (!wasm?.FS_createLazyFile || !wasm._malloc) {
    throw new Error(`${name}: this LiteRT.js build does not expose the file system that streamed weights need`);
  }
  try {
    wasm.FS_unlink(`/${entry.group}`); // left by an earlier start of the same variant
  } catch {
    /* none */
  }
  const hidden = globalThis.XMLHttpRequest;
  globalThis.XMLHttpRequest = undefined; // createLazyFile then makes a URL node instead of aborting on the main thread
  let node;
  try {
    node = wasm.FS_createLazyFile("/", entry.group, "unused", true, false);
  } finally {
    globalThis.XMLHttpRequest = hidden;
  }
  node.contents = { length: entry.size }; // the size fstat reports; nothing is stored
  node.stream_ops = {
    ...node.stream_ops,
    mmap: (stream, length) => {
      if (length > scratch.bytes) throw new Error(`${name}: a ${length}-byte weight mapping exceeds the ${scratch.bytes}-byte scratch region`);
      stats.mappings += 1;
      return { ptr: scratch.ptr, allocated: false };
    },
    read: () => {
      throw new Error(`${name}: the runtime read streamed weights from its file system`);
    },
  };
  const stream = {
    getReader() {
      stats.readers += 1;
      let reader = null;
      return new ReadableStream({
        async pull(controller) {
          reader ??= await weights.reader();
          const { value, done } = await reader.read();
          if (done) controller.close();
          else {
            stats.bytes += value.byteLength;
            controller.enqueue(value);
          }
        },
        async cancel() {
          await reader?.cancel();
        },
      }).getReader();
    },
  };
  try {
    return { model: await core.loadModelAndWeights(bytes, stream, { accelerator: "webgpu" }), backend: "webgpu" };
  } catch (err) {
    const heap = wasm.HEAPU8?.length;
    const used = heap ? `; LiteRT.js's memory had grown to ${(heap / 2 ** 30).toFixed(2)} of its 2 GiB` : "";
    throw new Error(`${name} (weights streamed to WebGPU${used}): ${err?.message || err}`);
  }
}

// One region of the wasm heap, aligned to Emscripten's 64 KiB pages as its own mmap aligns (the runtime
// wraps each mapping in a host buffer that must be aligned; a mapping starts up to a page before its
// weight), kept for the page's life: the CPU-side tensors point into it.
function scratchRegion(bytes) {
  const wasm = runtime.core.getGlobalLiteRt().liteRtWasm;
  const page = 65536;
  const base = wasm._malloc(bytes + 2 * page);
  if (!base) throw new Error(`the runtime's memory has no room for the ${bytes}-byte region streamed weights are mapped onto`);
  return { ptr: Math.ceil(base / page) * page, bytes: bytes + page };
}

function inputDetails(runner) {
  return runner.getInputDetails().map((d) => ({ name: d.name, shape: Array.from(d.shape) }));
}

// A started LiteRT.js variant. `files` maps each logical file of the variant (bundle.json) to its
// bytes (Uint8Array), already verified; a streamed graph's weights (variant.streamed) to {size,
// reader()} instead.
export async function startLitertVariant(variant, files, backend) {
  const { tokenizers, jinja } = runtime;
  const text = (bytes) => new TextDecoder().decode(bytes);
  const tokenizer = new tokenizers.Tokenizer(JSON.parse(text(files.tokenizer)), JSON.parse(text(files.tokenizer_config)));
  const template = new jinja.Template(text(files.chat_template));
  const notes = [];
  const models = {};
  const backends = {};
  const streamed = variant.streamed || {};
  // What the streamed load did, for the page's body[data-streamed] (tests and bench/bench_web_4b.py): stream
  // readers asked for, bytes they delivered, CPU-side mappings onto the scratch region, and the wasm heap's
  // size (its high-water mark: it never shrinks) after each graph compiled.
  const stats = { readers: 0, bytes: 0, mappings: 0, heap: {} };
  let scratch = null;
  if (Object.keys(streamed).length) {
    if (backend !== "webgpu") throw new Error("its weights stream into WebGPU buffers, and WebGPU is not in use here");
    scratch = scratchRegion(Math.max(...Object.values(streamed).map((entry) => entry.largest)));
  }
  for (const name of ["model", "embedder", "vision_encoder", "vision_adapter"]) {
    if (!files[name]) continue;
    const entry = streamed[name];
    const { model, backend: used } = entry
      ? await compileStreamed(name, files[name], files[entry.weights], entry, scratch, stats)
      : await compile(name, files[name], backend, notes);
    models[name] = model;
    backends[name] = used;
    stats.heap[name] = runtime.core.getGlobalLiteRt().liteRtWasm?.HEAPU8?.length ?? null;
  }
  const engine = new LitertEngine(variant, models, backends, tokenizer, template, notes);
  if (scratch) engine.streamStats = stats;
  return engine;
}

// The prompt's ids: the chat template rendered as transformers renders it, then (with an image)
// `<start_of_image>` replaced by the processor's sequence of soft tokens, then tokenizer.json.
// Shared with the onnxruntime-web loop (ortweb.js).
export function promptIds(template, tokenizer, generation, question, withImage) {
  const content = withImage ? [{ type: "image" }, { type: "text", text: question }] : question;
  let prompt = template.render({
    messages: [{ role: "user", content }],
    add_generation_prompt: true,
    ...generation.chat_template_variables,
  });
  if (withImage) {
    const image = generation.image;
    if (!prompt.includes(image.placeholder)) throw new Error(`the chat template put no ${image.placeholder} in the prompt`);
    prompt = prompt.split(image.placeholder).join(image.sequence);
  }
  return Array.from(tokenizer.encode(prompt, { add_special_tokens: false }).ids);
}

class LitertEngine {
  constructor(variant, models, backends, tokenizer, template, notes) {
    this.variant = variant;
    this.generation = variant.generation;
    this.models = models;
    this.backends = backends;
    this.tokenizer = tokenizer;
    this.template = template;
    this.notes = notes;
    this.multimodal = Boolean(models.vision_encoder && this.generation.image);
    const decode = models.model.signatures[this.generation.decode];
    if (!decode) throw new Error(`the model graph has no signature ${this.generation.decode}`);
    this.cacheDetails = inputDetails(decode).filter((d) => !["embeddings", "input_pos", "mask"].includes(d.name));
    this.embedRunner = Object.values(models.embedder.signatures)[0];
    this.hidden = inputDetails(decode).find((d) => d.name === "embeddings").shape.at(-1);
    this.prefillLengths = Object.keys(this.generation.prefill).map(Number).sort((a, b) => a - b);
    this.stopIds = new Set(this.generation.stop_tokens.map((t) => t.id));
    this.cache = null;
  }

  get backend() {
    return [...new Set(Object.values(this.backends))].join(" + ");
  }

  promptIds(question, withImage) {
    return promptIds(this.template, this.tokenizer, this.generation, question, withImage);
  }

  // The image's soft tokens: [0, 1] RGB pixels (NHWC) → vision encoder → adapter; the first
  // `soft_tokens` rows are the image's (the adapter may emit more).
  async softTokens(pixels) {
    const { core } = runtime;
    const image = this.generation.image;
    const encode = Object.values(this.models.vision_encoder.signatures)[0];
    const adapt = Object.values(this.models.vision_adapter.signatures)[0];
    const input = new core.Tensor(pixels, [1, image.height, image.width, 3]);
    const encoded = await encode.run({ [inputDetails(encode)[0].name]: input });
    const adapted = await adapt.run({ [inputDetails(adapt)[0].name]: Object.values(encoded)[0] });
    const rows = await Object.values(adapted)[0].data();
    input.delete();
    for (const tensor of [...Object.values(encoded), ...Object.values(adapted)]) tensor.delete();
    if (rows.length < image.soft_tokens * this.hidden) {
      throw new Error(`the vision graphs gave ${rows.length / this.hidden} soft tokens, the prompt has ${image.soft_tokens}`);
    }
    return rows.subarray(0, image.soft_tokens * this.hidden);
  }

  // A zero KV cache. With the decoder on WebGPU each cache tensor is made in the wasm heap and moved to
  // the GPU one at a time: MedGemma 4B's cache (34 layers, 4096 positions) is 1.1 GB, more than the
  // heap has left beside its graphs; one tensor of it is 17 MB.
  async resetCache() {
    const { core } = runtime;
    if (this.cache) for (const tensor of Object.values(this.cache)) tensor.delete();
    this.cache = {};
    const onGpu = this.backends.model === "webgpu";
    for (const d of this.cacheDetails) {
      const tensor = new core.Tensor(new Float32Array(d.shape.reduce((a, b) => a * b, 1)), d.shape);
      this.cache[d.name] = onGpu ? await tensor.moveTo("webgpu") : tensor;
    }
  }

  async embed(tokens) {
    const { core } = runtime;
    const rows = new Float32Array(tokens.length * this.hidden);
    const name = inputDetails(this.embedRunner)[0].name;
    for (let i = 0; i < tokens.length; i++) {
      const input = new core.Tensor(new Int32Array([tokens[i]]), [1, 1]);
      const outputs = await this.embedRunner.run({ [name]: input });
      rows.set(await Object.values(outputs)[0].data(), i * this.hidden);
      input.delete();
      for (const tensor of Object.values(outputs)) tensor.delete();
    }
    return rows;
  }

  // One call of prefill_N or decode at `positions`, the KV cache fed back where the accelerator left it.
  async run(signature, embeddings, positions) {
    const { core } = runtime;
    const length = positions.length;
    const cacheLength = this.generation.cache_length;
    const mask = new Float32Array(length * cacheLength).fill(MASKED);
    positions.forEach((position, row) => mask.fill(0, row * cacheLength, row * cacheLength + position + 1));
    const inputs = {
      embeddings: new core.Tensor(embeddings, [1, length, this.hidden]),
      input_pos: new core.Tensor(Int32Array.from(positions), [length]),
      mask: new core.Tensor(mask, [1, 1, length, cacheLength]),
    };
    const outputs = await this.models.model.signatures[signature].run({ ...inputs, ...this.cache });
    for (const tensor of Object.values(inputs)) tensor.delete();
    for (const tensor of Object.values(this.cache)) tensor.delete();
    this.cache = {};
    for (const d of this.cacheDetails) this.cache[d.name] = outputs[d.name];
    let logits = null;
    if (outputs.logits) {
      logits = await outputs.logits.data();
      outputs.logits.delete();
    }
    return logits;
  }

  // Prefill ids[0..n) in chunks of the largest prefill length, each padded to the smallest length
  // that holds it; `soft` replaces the embeddings at the image's slots. Before each chunk the page
  // gets a turn and shouldStop() is asked: false when it said stop.
  async prefill(ids, slots, soft, shouldStop) {
    const largest = this.prefillLengths.at(-1);
    for (let start = 0; start < ids.length; start += largest) {
      await yieldToPage();
      if (shouldStop()) return false;
      const chunk = ids.slice(start, start + largest);
      const length = this.prefillLengths.find((l) => l >= chunk.length);
      const embeddings = await this.embed(chunk.concat(new Array(length - chunk.length).fill(0)));
      slots.forEach((slot, k) => {
        if (slot >= start && slot < start + chunk.length) {
          embeddings.set(soft.subarray(k * this.hidden, (k + 1) * this.hidden), (slot - start) * this.hidden);
        }
      });
      await this.run(this.generation.prefill[String(length)], embeddings, Array.from({ length }, (_, i) => start + i));
    }
    return true;
  }

  // The text of `tokens` (the tokenizer refuses an empty list: an answer stopped, or ended by a stop
  // token, before its first token is "").
  text(tokens) {
    return tokens.length ? this.tokenizer.decode(tokens, { skip_special_tokens: true }) : "";
  }

  // Greedy answer to `question` (with `pixels` when an image is attached). onText(text, tokens) gets
  // the answer so far (text and ids) after each token; shouldStop() is asked before each, after the
  // page had a turn (yieldToPage) to paint the answer and handle a press of Stop. Returns {text,
  // tokens, promptTokens, stopped, ended}.
  async generate(question, pixels, { onText, shouldStop }) {
    const ids = this.promptIds(question, Boolean(pixels));
    const limit = Math.min(this.variant.max_tokens, this.generation.cache_length);
    if (ids.length >= limit) throw new Error(`the question is ${ids.length} tokens long; this model takes at most ${limit - 1}`);
    let slots = [];
    let soft = null;
    if (pixels) {
      soft = await this.softTokens(pixels);
      const soft_id = this.generation.image.soft_token.id;
      slots = ids.flatMap((id, index) => (id === soft_id ? [index] : []));
      if (slots.length !== this.generation.image.soft_tokens) {
        throw new Error(`the prompt has ${slots.length} image slots, the image ${this.generation.image.soft_tokens} soft tokens`);
      }
    }
    await this.resetCache();
    let stopped = !(await this.prefill(ids.slice(0, -1), slots, soft, shouldStop));
    let ended = stopped ? "stopped" : "length";
    let token = ids.at(-1);
    let position = ids.length - 1;
    const tokens = [];
    while (!stopped && position < limit - 1) {
      await yieldToPage();
      if (shouldStop()) {
        stopped = true;
        ended = "stopped";
        break;
      }
      const logits = await this.run(this.generation.decode, await this.embed([token]), [position]);
      token = argmax(logits);
      position += 1;
      if (this.stopIds.has(token)) {
        ended = "stop token";
        break;
      }
      tokens.push(token);
      onText(this.text(tokens), tokens);
    }
    return { text: this.text(tokens), tokens, promptTokens: ids, stopped, ended };
  }
}

// Ends the current task and resumes in a new one, so that the browser can paint and dispatch input
// (the Stop button) in between. Needed on the wasm backend, where every `await` of the loop settles
// at once (microtasks only): without it the page froze until the answer was complete, showing no
// token before the last and ignoring Stop. A MessageChannel task, not setTimeout, which nested
// timers clamp to 4 ms.
export function yieldToPage() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => {
      channel.port1.close();
      resolve();
    };
    channel.port2.postMessage(null);
  });
}

export function argmax(array) {
  let best = 0;
  for (let i = 1; i < array.length; i++) if (array[i] > array[best]) best = i;
  return best;
}

// The vision graph's input from a decoded image: RGB (alpha dropped, as PIL's convert("RGB")),
// resized to the processor's size with PIL's bilinear filter (resample=2: a triangle filter
// widened by the scale when shrinking, rounded to 8 bits), then / 255, NHWC. The graph rescales
// and normalizes itself. An image already at the size is taken pixel for pixel.
export function imagePixels(bitmap, height, width) {
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { colorSpace: "srgb", willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const rgba = context.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Float32Array(bitmap.width * bitmap.height * 3);
  for (let i = 0; i < bitmap.width * bitmap.height; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = rgba[i * 4 + c];
  return rgbPixels(rgb, bitmap.width, bitmap.height, height, width);
}

// 8-bit RGB values (NHWC, as floats) of an inWidth × inHeight image → the graph's [0, 1] pixels at
// height × width. Pure, so that tests/web/test_image_resize.py checks it against the processor in node.
export function rgbPixels(rgb, inWidth, inHeight, height, width) {
  if (inWidth !== width || inHeight !== height) {
    // PIL resizes horizontally first, rounding to 8 bits after each pass.
    rgb = resample(rgb, inWidth, inHeight, width, "x");
    rgb = resample(rgb, width, inHeight, height, "y");
  }
  const pixels = new Float32Array(height * width * 3);
  for (let i = 0; i < pixels.length; i++) pixels[i] = rgb[i] / 255;
  return pixels;
}

// One pass of PIL's ImagingResample (Pillow's Resample.c) with the bilinear filter along `axis`:
// the same coefficients, normalized and turned into 22-bit fixed point, and the same rounding.
const PRECISION_BITS = 32 - 8 - 2;
function resample(input, inWidth, inHeight, outSize, axis) {
  const inSize = axis === "x" ? inWidth : inHeight;
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 1 * filterScale;
  const outWidth = axis === "x" ? outSize : inWidth;
  const outHeight = axis === "x" ? inHeight : outSize;
  const output = new Float32Array(outWidth * outHeight * 3);
  const other = axis === "x" ? outHeight : outWidth;
  for (let o = 0; o < outSize; o++) {
    const center = (o + 0.5) * scale;
    const lo = Math.max(Math.trunc(center - support + 0.5), 0);
    const hi = Math.min(Math.trunc(center + support + 0.5), inSize);
    const weights = [];
    let total = 0;
    for (let i = lo; i < hi; i++) {
      const w = Math.max(0, 1 - Math.abs((i - center + 0.5) / filterScale));
      weights.push(w);
      total += w;
    }
    const fixed = weights.map((w) => {
      const k = total ? w / total : 0;
      return Math.trunc(k < 0 ? -0.5 + k * 2 ** PRECISION_BITS : 0.5 + k * 2 ** PRECISION_BITS);
    });
    for (let j = 0; j < other; j++) {
      for (let c = 0; c < 3; c++) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let k = 0; k < fixed.length; k++) {
          const i = lo + k;
          sum += input[axis === "x" ? (j * inWidth + i) * 3 + c : (i * inWidth + j) * 3 + c] * fixed[k];
        }
        const out = axis === "x" ? (j * outWidth + o) * 3 + c : (o * outWidth + j) * 3 + c;
        output[out] = Math.min(255, Math.max(0, Math.floor(sum / 2 ** PRECISION_BITS)));
      }
    }
  }
  return output;
}
