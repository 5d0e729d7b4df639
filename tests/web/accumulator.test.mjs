// node --test tests/web/
import { test } from "node:test";
import assert from "node:assert/strict";

import { StreamAccumulator, formatBytes } from "../../src/modelforge/web/app/accumulator.js";

// Every text the reader sees, in order (what onUpdate was called with).
function run(chunks, options = {}, finalText = undefined) {
  const seen = [];
  const acc = new StreamAccumulator({ ...options, onUpdate: (t) => seen.push(t) });
  chunks.forEach((c, i) => acc.push(c, i === chunks.length - 1));
  if (finalText !== undefined) acc.finish(finalText);
  return { acc, seen };
}

// "Never flickers or vanishes": each shown text extends the previous one.
function assertMonotonic(seen) {
  for (let i = 1; i < seen.length; i++) {
    assert.ok(seen[i].startsWith(seen[i - 1]) && seen[i].length > seen[i - 1].length,
      `update ${i} (${JSON.stringify(seen[i])}) does not extend ${JSON.stringify(seen[i - 1])}`);
  }
}

test("incremental chunks are appended once", () => {
  const { acc, seen } = run(["He", "llo", ", ", "world", "!"]);
  assert.equal(acc.text, "Hello, world!");
  assert.equal(acc.mode, "incremental");
  assertMonotonic(seen);
});

test("cumulative chunks are not repeated", () => {
  const { acc, seen } = run(["He", "Hello", "Hello, ", "Hello, world", "Hello, world!"]);
  assert.equal(acc.text, "Hello, world!");
  assert.equal(acc.mode, "cumulative");
  assertMonotonic(seen);
});

test("cumulative repeats of the same text change nothing", () => {
  const { acc, seen } = run(["Hi", "Hi", "Hi there", "Hi there", "Hi there."]);
  assert.equal(acc.text, "Hi there.");
  assert.deepEqual(seen, ["Hi", "Hi there", "Hi there."]);
});

test("empty chunks and a bare done signal never blank the text", () => {
  const acc = new StreamAccumulator();
  acc.push("Answer");
  acc.push("");
  acc.push(undefined);
  acc.push("", true);
  assert.equal(acc.text, "Answer");
  assert.equal(acc.done, true);
});

test("an empty final result (after stop) keeps the streamed text", () => {
  const { acc } = run(["Partial ", "answer"], {}, "");
  assert.equal(acc.text, "Partial answer");
});

test("the final result is adopted when it completes the text", () => {
  const { acc, seen } = run(["Partial "], {}, "Partial answer");
  assert.equal(acc.text, "Partial answer");
  assertMonotonic(seen);
});

test("a final result that is only the last increment does not replace the text", () => {
  const { acc } = run(["Hello", ", world"], {}, ", world");
  assert.equal(acc.text, "Hello, world");
});

test("cumulative mode never shrinks or rewrites during streaming", () => {
  const { acc, seen } = run(["Hello wor", "Hello", "Help!", "Hello world"], { mode: "cumulative" });
  assert.equal(acc.text, "Hello world");
  assertMonotonic(seen);
});

test("forced incremental mode appends even text that looks cumulative", () => {
  const { acc } = run(["ab", "abc"], { mode: "incremental" });
  assert.equal(acc.text, "ababc");
});

test("nothing is accepted after done", () => {
  const acc = new StreamAccumulator();
  acc.push("x", true);
  assert.equal(acc.push("y"), false);
  assert.equal(acc.text, "x");
});

test("unicode increments (emoji, CJK, combining marks) are joined exactly", () => {
  const parts = ["Blood ", "pressure ", "→ ", "血压 ", "🩺", "e\u0301"];
  const { acc, seen } = run(parts);
  assert.equal(acc.text, parts.join(""));
  assertMonotonic(seen);
});

test("reset starts a new answer and re-detects the mode", () => {
  const acc = new StreamAccumulator();
  acc.push("a");
  acc.push("ab");
  assert.equal(acc.mode, "cumulative");
  acc.reset();
  assert.equal(acc.text, "");
  assert.equal(acc.mode, "auto");
  acc.push("x");
  acc.push("y");
  assert.equal(acc.text, "xy");
});

test("unknown mode is rejected", () => {
  assert.throws(() => new StreamAccumulator({ mode: "sometimes" }));
});

test("formatBytes", () => {
  assert.equal(formatBytes(0), "0 B");
  assert.equal(formatBytes(999), "999 B");
  assert.equal(formatBytes(1500), "1.5 KB");
  assert.equal(formatBytes(2_500_000_000), "2.5 GB");
  assert.equal(formatBytes(-1), "?");
});
