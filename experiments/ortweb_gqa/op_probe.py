"""Single-operator probe of onnxruntime-web's WebGPU kernels against onnxruntime CPU (issue #12):
builds one small ONNX graph per case (GroupQueryAttention, MatMulNBits, ... at the tiny model's
and MedGemma 4B's shapes), runs it in headless Chromium (software WebGPU: SwiftShader) through
page/probe.mjs and in onnxruntime (Python, CPU) on the same inputs, and prints the largest absolute
difference of each output, relative to the output's largest magnitude.

usage: python op_probe.py OUT_DIR [CASE_PREFIX ...]   (QUERY=subgroups=off: a device without subgroups)   (onnxruntime-web from ../ortweb_4b/node_modules)"""

import base64
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from playwright.sync_api import sync_playwright

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "ortweb" / "scripts"))
sys.path.insert(0, str(HERE.parent / "ortweb_4b" / "scripts"))
from run_browser import FLAGS  # noqa: E402  (the 4B harness's Chromium flags)
from serve import server  # noqa: E402  (COOP/COEP, no caching)

DTYPES = {np.float32: ("float32", TensorProto.FLOAT), np.int32: ("int32", TensorProto.INT32),
          np.int64: ("int64", TensorProto.INT64), np.uint8: ("uint8", TensorProto.UINT8)}


def rope(max_len: int, head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(max_len), inv)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def graph(op: str, inputs: dict, outputs: list[str], attrs: dict, domain="com.microsoft") -> onnx.ModelProto:
    """One node over graph inputs named as the op's inputs ('' for an absent optional one)."""
    order = list(inputs)
    node = helper.make_node(op, [n if inputs[n] is not None else "" for n in order], outputs, domain=domain, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, DTYPES[inputs[n].dtype.type][1], None)
                    for n in order if inputs[n] is not None]
    graph_outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    model = helper.make_model(helper.make_graph([node], op, graph_inputs, graph_outputs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def gqa(seq: int, past: int, heads: int, kv_heads: int, head_dim: int, window: int, seed=0, scale_x=1.0):
    rng = np.random.default_rng(seed)
    total = past + seq
    cos, sin = rope(max(total, 64), head_dim, 10000.0)
    inputs = {
        "query": (rng.standard_normal((1, seq, heads * head_dim)) * scale_x).astype(np.float32),
        "key": (rng.standard_normal((1, seq, kv_heads * head_dim)) * scale_x).astype(np.float32),
        "value": rng.standard_normal((1, seq, kv_heads * head_dim)).astype(np.float32),
        "past_key": (rng.standard_normal((1, kv_heads, past, head_dim)) * scale_x).astype(np.float32),
        "past_value": rng.standard_normal((1, kv_heads, past, head_dim)).astype(np.float32),
        "seqlens_k": np.array([total - 1], np.int32),
        "total_sequence_length": np.array(total, np.int32),
        "cos_cache": cos, "sin_cache": sin,
    }
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, scale=head_dim ** -0.5, local_window_size=window,
                 softcap=0.0, do_rotary=1, rotary_interleaved=0)
    return graph("GroupQueryAttention", inputs, ["output", "present_key", "present_value"], attrs), inputs


def matmulnbits(m: int, k: int, n: int, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"A": rng.standard_normal((m, k)).astype(np.float32),
              "B": rng.integers(0, 256, (n, k // 32, 16), dtype=np.uint8),
              "scales": (rng.random(n * k // 32) * 0.02).astype(np.float32)}
    return graph("MatMulNBits", inputs, ["Y"], dict(K=k, N=n, bits=4, block_size=32, accuracy_level=1)), inputs


def cases() -> dict:
    out = {}
    for seq in (23, 31, 32, 33, 64, 276, 608):  # the tiny decoder: 2 heads over 1 kv head of 32, window 32
        out[f"tiny_gqa_local_s{seq}"] = gqa(seq, 0, 2, 1, 32, 32)
        out[f"tiny_gqa_global_s{seq}"] = gqa(seq, 0, 2, 1, 32, -1)
    for seq, past in ((32, 32), (64, 64), (1, 608)):
        out[f"tiny_gqa_local_s{seq}_p{past}"] = gqa(seq, past, 2, 1, 32, 32)
        out[f"tiny_gqa_global_s{seq}_p{past}"] = gqa(seq, past, 2, 1, 32, -1)
    for seq in (23, 276):  # MedGemma 4B: 8 heads over 4 kv heads of 256, window 1024
        out[f"4b_gqa_local_s{seq}"] = gqa(seq, 0, 8, 4, 256, 1024)
        out[f"4b_gqa_global_s{seq}"] = gqa(seq, 0, 8, 4, 256, -1)
    for m in (1, 23, 276):
        out[f"4b_mmnbits_m{m}_2560x10240"] = matmulnbits(m, 2560, 10240)
        out[f"4b_mmnbits_m{m}_10240x2560"] = matmulnbits(m, 10240, 2560)
    return out


def main(out_dir: str, *prefixes: str) -> None:
    site = Path(out_dir)
    (site / "cases").mkdir(parents=True, exist_ok=True)
    for name in ("index.html", "probe.mjs"):
        (site / name).unlink(missing_ok=True)
        (site / name).symlink_to((HERE / "page" / name).resolve())
    (site / "ort").unlink(missing_ok=True)
    (site / "ort").symlink_to((HERE.parent / "ortweb_4b" / "node_modules" / "onnxruntime-web" / "dist").resolve())
    chosen = {k: v for k, v in cases().items() if not prefixes or k.startswith(prefixes)}
    index, reference = [], {}
    for name, (model, inputs) in chosen.items():
        onnx.save(model, site / "cases" / f"{name}.onnx")
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {k: v for k, v in inputs.items() if v is not None}
        reference[name] = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        entry = {"name": name, "model": f"{name}.onnx", "inputs": []}
        for k, v in feeds.items():
            (site / "cases" / f"{name}.{k}.bin").write_bytes(np.ascontiguousarray(v).tobytes())
            entry["inputs"].append({"name": k, "dtype": DTYPES[v.dtype.type][0], "dims": list(v.shape), "file": f"{name}.{k}.bin"})
        index.append(entry)
    (site / "cases" / "index.json").write_text(json.dumps(index))
    httpd = server(str(site), 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    results, raw = {}, {}
    for ep in ("webgpu",):
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=FLAGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html?ep={ep}&{os.environ.get('QUERY', '')}")
            page.locator("body[data-state=done]").wait_for(timeout=1800_000)
            probe = page.evaluate("window.probeResult")
            print("adapter", probe.get("adapter"), probe.get("errors"), flush=True)
            browser.close()
        for name, row in probe["cases"].items():
            if "error" in row:
                print(f"{ep:7} {name:34} ERROR {row['error'][:200]}", flush=True)
                continue
            figures = {}
            for out_name, ref in reference[name].items():
                got = np.frombuffer(base64.b64decode(row[out_name]["b64"]), np.float32).reshape(row[out_name]["dims"])
                figures[out_name] = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30)) if got.shape == ref.shape else f"shape {got.shape} vs {ref.shape}"
            results[f"{ep}/{name}"] = figures
            raw.update({f"{name}/{k}": np.frombuffer(base64.b64decode(row[k]["b64"]), np.float32).reshape(row[k]["dims"]) for k in reference[name]})
            print(f"{ep:7} {name:34} " + "  ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()), flush=True)
    (site / "results.json").write_text(json.dumps(results, indent=1))
    np.savez(site / "outputs.npz", **raw)  # the page's outputs, for a closer look


if __name__ == "__main__":
    main(*sys.argv[1:])
