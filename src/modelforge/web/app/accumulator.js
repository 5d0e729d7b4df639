// Streaming text accumulator: turns the runtime's progress callbacks into one text that only
// ever grows while streaming — it never flickers, repeats or vanishes, whether the runtime hands
// over cumulative text ("He", "Hello", "Hello!") or increments ("He", "llo", "!").
//
// mode: "auto" (default) decides from the data: a chunk that extends the text received so far
// (starts with it and is longer) means cumulative; anything else means incremental. The decision
// is made once, at the first chunk that tells them apart, and then kept. A chunk equal to the
// text so far is ambiguous while undecided and is treated as "no news" (never shown twice).
// "cumulative" and "incremental" force a mode.
//
// In cumulative mode a chunk that is a prefix of (or diverges from) what is shown is ignored
// during streaming: the text never shrinks or rewrites itself under the reader's eyes. The final
// text (the value generateResponse resolves to) is reconciled by finish(): it replaces the shown
// text only when it is non-empty, so an empty final result (e.g. after a stop) never wipes the answer.

export class StreamAccumulator {
  constructor({ mode = "auto", onUpdate = null } = {}) {
    if (!["auto", "cumulative", "incremental"].includes(mode)) {
      throw new Error(`unknown accumulator mode: ${mode}`);
    }
    this.requestedMode = mode;
    this.mode = mode;
    this.onUpdate = onUpdate;
    this.text = "";
    this.done = false;
    this.chunks = 0;
  }

  // Feed one progress callback. Returns true when the visible text changed.
  push(chunk, done = false) {
    if (this.done) return false;
    const before = this.text;
    if (typeof chunk === "string" && chunk.length > 0) {
      this.chunks += 1;
      this.text = this.#merge(chunk);
    }
    if (done) this.done = true;
    const changed = this.text !== before;
    if (changed && this.onUpdate) this.onUpdate(this.text);
    return changed;
  }

  // The generation finished (or was stopped); `finalText` is what the runtime returned, if anything.
  finish(finalText) {
    const before = this.text;
    if (typeof finalText === "string" && finalText.length > 0 && finalText !== this.text) {
      // Prefer the runtime's final text unless it is just a shorter piece of what was streamed
      // (some runtimes resolve with only the last increment).
      if (!(this.text.length > finalText.length && this.text.endsWith(finalText))) {
        this.text = finalText;
      }
    }
    this.done = true;
    const changed = this.text !== before;
    if (changed && this.onUpdate) this.onUpdate(this.text);
    return changed;
  }

  reset() {
    this.text = "";
    this.done = false;
    this.chunks = 0;
    this.mode = this.requestedMode;
  }

  #merge(chunk) {
    const text = this.text;
    if (this.mode === "incremental") return text + chunk;
    if (this.mode === "cumulative") {
      return chunk.length > text.length && chunk.startsWith(text) ? chunk : text;
    }
    // auto
    if (text.length === 0) return chunk;
    if (chunk === text) return text; // ambiguous: no news either way
    if (chunk.length > text.length && chunk.startsWith(text)) {
      this.mode = "cumulative";
      return chunk;
    }
    this.mode = "incremental";
    return text + chunk;
  }
}

// Formats a byte count for people: 1536 -> "1.5 KB" (decimal units, as download UIs do).
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}
