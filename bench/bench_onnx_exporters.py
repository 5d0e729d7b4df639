#!/usr/bin/env python
"""Benchmark: the Gemma 3 text decoder as ONNX through onnxruntime-genai's model builder (what the
`onnx` target runs, steps/onnx/genai_builder.py) against torch.onnx.export (dynamo) + onnxruntime's own
quantizers, measured in the same run on three questions (issue #14): faithful, deterministic,
frugal in memory.

The two paths, each job its own child process (`python bench_onnx_exporters.py --job REQUEST.json`):

  builder   genai_builder.build(checkpoint, precision, block_size 32, context_length 1024,
            exclude_embeds=False): model.onnx + model.onnx.data + genai_config.json (+ tokenizer)
  torch     torch.onnx.export(dynamo=True) of transformers' Gemma3ForCausalLM (eager attention)
            wrapped so that the graph takes input_ids [1, S], attention_mask [1, P+S] and
            past_key_values.{i}.{key,value} [1, kv, P, head_dim] and returns logits [1, S, V] and
            present.{i}.{key,value} [1, kv, P+S, head_dim]: prefill (P = 0) and decode in one graph,
            genai's input/output names and its full (not windowed) KV layout; the sliding window
            lives in the attention mask, as in the builder's graph built with windowed_kv_cache=false.
            Then int4: MatMulNBitsQuantizer (block 32, symmetric, accuracy level 1: onnx_worker.quantize,
            the target's own vision quantization); int8: quantize_dynamic (QInt8 weights, defaults).

Sections:
  tiny   fixtures/tiny-medgemma: every variant exported twice in fresh directories (sha256 of graph
         and external data), parity in onnxruntime (CPU, 1 thread) against PyTorch float32 for a fixed
         24-token prompt and 24 greedy steps, teacher-forced (parity_phases.LogitComparison: max
         |Δlogit|, top-1 agreement, mean KL, leading greedy-identical steps), peak RssAnon per job.
  mid    a synthetic Gemma 3 1B text checkpoint (Gemma3ForCausalLM, the Hub's 1B shapes: hidden 1152,
         26 layers, 4 heads / 1 KV head of 256, vocabulary 262,144; bf16 values N(0, 0.02) from
         gemma3_checkpoint's pool; tokenizer from the fixture) written on the spot; builder fp32 and
         int4, torch fp32 and its int4 quantization; peak RssAnon per job (the torch int4 path's peak
         is the larger of its export and its quantization). These are heavy jobs: --heavy-wrapper.

Peak memory: workers.AnonymousPeak inside each job (RssAnon of the job's process, sampled every
50 ms) and ru_maxrss. A job killed by the cap (SIGKILL, no result) is recorded as such: that is the figure.
Ratios: torch over builder (the target's path, the baseline), and peak anon over the decoder's
float32 weight bytes. Results: --results JSON and the `bench:onnx_exporters` section of --markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from results_markdown import replace_section, verdict  # noqa: E402  (bench/ is the script's directory)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TINY = ROOT / "fixtures" / "tiny-medgemma"
CHILD_ENV = {"PYTHONHASHSEED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CONTEXT_LENGTH = 1024  # the tiny manifest's; rows of the builder's RoPE caches
BLOCK_SIZE = 32
PROMPT = ("Chest radiograph of a 54 year old patient with a persistent cough, fever and shortness of breath "
          "for two weeks; describe the findings and the most likely diagnosis.")
PROMPT_TOKENS = 24
STEPS = 24
# Gemma 3 1B (google/gemma-3-1b-it config.json as the Hub ships it, 4.x form).
GEMMA3_1B = {
    "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": [1, 106], "pad_token_id": 0, "final_logit_softcapping": None,
    "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152, "initializer_range": 0.02,
    "intermediate_size": 6912, "max_position_embeddings": 32768, "num_attention_heads": 4, "num_hidden_layers": 26,
    "num_key_value_heads": 1, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0,
    "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": 512, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 262144,
    "layer_types": ["full_attention" if (index + 1) % 6 == 0 else "sliding_attention" for index in range(26)],
}


# --------------------------------------------------------------------------- jobs (child processes)
def _causal_lm(checkpoint: Path):
    """transformers' Gemma3ForCausalLM in float32, eager attention: the Hub's 1B layout directly, or
    the text decoder of a Gemma3ForConditionalGeneration checkpoint (its language model and head)."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    if config.model_type == "gemma3_text":
        model = transformers.Gemma3ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
        return model.eval(), config
    full = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, attn_implementation="eager")
    text = full.config.text_config
    with torch.device("meta"):
        model = transformers.Gemma3ForCausalLM(text)
    model.model, model.lm_head = full.model.language_model, full.lm_head
    model.config._attn_implementation = "eager"
    return model.eval(), text


def job_builder(request: dict) -> dict:
    from modelforge.steps.onnx import genai_builder

    out = Path(request["out"])
    report = genai_builder.build(Path(request["checkpoint"]), out, out.parent / (out.name + "-cache"), precision=request["precision"],
                                 block_size=BLOCK_SIZE, context_length=CONTEXT_LENGTH, exclude_embeds=False)
    shutil.rmtree(out.parent / (out.name + "-cache"), ignore_errors=True)
    return {"report": report}


def job_torch(request: dict) -> dict:
    import torch
    from transformers import DynamicCache

    model, config = _causal_lm(Path(request["checkpoint"]))
    layers = config.num_hidden_layers

    class Decoder(torch.nn.Module):
        """Flat tensors in and out (genai's names), a DynamicCache of full layers in between."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache()  # no config: every layer keeps its whole past; the mask applies the window
            for index in range(layers):
                cache.update(past[2 * index], past[2 * index + 1], index)
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits
            return (logits, *[tensor for layer in cache.layers for tensor in (layer.keys, layer.values)])

    names = [f"past_key_values.{index}.{kind}" for index in range(layers) for kind in ("key", "value")]
    sequence = torch.export.Dim("sequence_length", min=1, max=1 << 16)
    past_length = torch.export.Dim("past_sequence_length", min=0, max=1 << 16)
    total = torch.export.Dim("total_sequence_length", min=1, max=1 << 17)
    past = [torch.zeros(1, config.num_key_value_heads, 3, config.head_dim) for _ in names]
    out = Path(request["out"])
    out.mkdir(parents=True)
    with torch.no_grad():
        torch.onnx.export(Decoder(), (torch.tensor([[2, 10, 11, 12]]), torch.ones(1, 7, dtype=torch.int64), *past), str(out / "model.onnx"),
                          dynamo=True, external_data=True, input_names=["input_ids", "attention_mask", *names],
                          output_names=["logits", *[name.replace("past_key_values", "present") for name in names]],
                          dynamic_shapes=({1: sequence}, {1: total}, tuple({2: past_length} for _ in names)), verbose=False)
    return {"report": {}}


def job_quantize(request: dict) -> dict:
    out = Path(request["out"])
    if request["method"] == "matmul_nbits":  # the target's own quantize step (onnx_worker.quantize)
        from modelforge.steps.onnx import worker as onnx_worker

        work = out.parent / (out.name + "-work")
        result = onnx_worker.quantize({"input_dir": request["input"], "file": "model.onnx", "precision": request["precision"],
                                       "block_size": BLOCK_SIZE, "work_dir": str(work)})
        (work / "quantized").rename(out)
        work.rmdir()
        return {"report": result["report"]}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out.mkdir(parents=True)
    quantize_dynamic(str(Path(request["input"]) / "model.onnx"), str(out / "model.onnx"), weight_type=QuantType.QInt8, use_external_data_format=True)
    return {"report": {}}


def job_parity(request: dict) -> dict:
    """PyTorch's greedy tokens and logits for the fixed prompt, then the graph teacher-forced along them."""
    import numpy as np
    import onnxruntime
    import torch
    from transformers import AutoTokenizer

    from modelforge.steps.parity_phases import LogitComparison

    checkpoint = Path(request["checkpoint"])
    model, config = _causal_lm(checkpoint)
    ids = AutoTokenizer.from_pretrained(checkpoint)(PROMPT).input_ids[:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS, f"the prompt has {len(ids)} tokens, fewer than {PROMPT_TOKENS}"
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True)
    tokens = generated.sequences[0, len(ids):].tolist()
    reference = [logits[0].double().numpy() for logits in generated.logits]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(Path(request["graph"]) / "model.onnx"), options, providers=["CPUExecutionProvider"])
    past = [item.name for item in session.get_inputs() if item.name.startswith("past_key_values")]
    outputs = [item.name for item in session.get_outputs()]
    cache = {name: np.zeros((1, config.num_key_value_heads, 0, config.head_dim), np.float32) for name in past}
    comparison, feed, length = LogitComparison(), ids, 0
    comparison.start_prompt()
    seconds = []
    for step in range(STEPS):
        length += len(feed)
        started = time.perf_counter()
        result = dict(zip(outputs, session.run(None, {"input_ids": np.array([feed], np.int64), "attention_mask": np.ones((1, length), np.int64), **cache})))
        seconds.append(time.perf_counter() - started)
        cache = {name: result[name.replace("past_key_values", "present")] for name in past}
        comparison.add(result["logits"][0, -1].astype(np.float64), reference[step])
        feed = [tokens[step]]
    report = comparison.report()
    report["greedy_identical_steps"] = report["greedy_identical_steps"][0]
    # onnxruntime, one thread, on a shared machine: compare within a run only
    report["prefill_s"], report["decode_tokens_per_s"] = round(seconds[0], 4), round((len(seconds) - 1) / sum(seconds[1:]), 2)
    return {"report": report}


def job_norm_gains(request: dict) -> dict:
    """The builder's float graph with each RMSNorm gain replaced by 1 + w computed in float32 from the
    checkpoint. The builder adds Gemma's offset in the checkpoint's dtype (builders/base.py,
    `layernorm.weight + add_offset`, then casts to float32), so a bf16 checkpoint's gains are rounded
    to bf16; this isolates how much of the graph's distance from PyTorch that is. Since genai_builder's
    `float32_gains` shim the builder writes these gains itself: the job then changes none (largest
    change 0), which checks that the shim reaches every gain."""
    import numpy as np
    import onnx
    from onnx import numpy_helper
    from safetensors import safe_open

    weights = {}
    for shard in sorted(Path(request["checkpoint"]).glob("*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            weights.update({name: handle.get_tensor(name).float().numpy() for name in handle.keys() if "norm" in name})
    model = onnx.load(str(Path(request["input"]) / "model.onnx"))
    replaced, largest = 0, 0.0
    for initializer in model.graph.initializer:
        name = initializer.name.replace(".attn.", ".self_attn.").replace(".layernorm.weight", ".weight")
        name = "model.norm.weight" if "final_norm" in name else name
        name = name if name in weights else "language_model." + name
        if "norm" in initializer.name and name in weights:
            old = numpy_helper.to_array(initializer)
            new = (1.0 + weights[name]).astype(np.float32)
            largest = max(largest, float(np.abs(old - new).max()))
            initializer.CopyFrom(numpy_helper.from_array(new, initializer.name))
            replaced += 1
    out = Path(request["out"])
    out.mkdir(parents=True)
    onnx.save_model(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return {"report": {"gains_replaced": replaced, "largest_gain_change": largest}}


JOBS = {"builder": job_builder, "torch": job_torch, "quantize": job_quantize, "parity": job_parity, "norm_gains": job_norm_gains}


def run_job_here(request_path: Path) -> None:
    import resource

    from modelforge.steps.workers import AnonymousPeak

    request = json.loads(request_path.read_text())
    anonymous = AnonymousPeak()
    started = time.monotonic()
    result = JOBS[request["job"]](request)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result["peak_anonymous_bytes"] = anonymous.stop()
    request_path.with_name(request_path.stem + ".result.json").write_text(json.dumps(result, indent=1, sort_keys=True))


# --------------------------------------------------------------------------- the harness
class Harness:
    def __init__(self, work: Path, light: list[str], heavy: list[str]):
        self.work, self.light, self.heavy, self.count = work, light, heavy, 0

    def run(self, job: str, heavy: bool = False, **request) -> dict:
        """One job in a fresh interpreter (behind the light or heavy wrapper); its result, or how it died."""
        self.count += 1
        request_path = self.work / "jobs" / f"{self.count:02d}-{job}.json"
        request_path.parent.mkdir(parents=True, exist_ok=True)
        request_path.write_text(json.dumps({"job": job, **request}))
        env = {**os.environ, **CHILD_ENV, "PYTHONPATH": str(ROOT / "src")}
        command = [*(self.heavy if heavy else self.light), sys.executable, str(Path(__file__).resolve()), "--job", str(request_path)]
        label = f"{job} {request.get('precision', '')} {Path(request.get('out', request.get('graph', ''))).name}"
        print(f"  run {label}", flush=True)
        started = time.monotonic()
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = round(time.monotonic() - started, 2)
        result_path = request_path.with_name(request_path.stem + ".result.json")
        if completed.returncode == 0 and result_path.exists():
            result = json.loads(result_path.read_text())
            result.update(ok=True, wall_s=wall)
            print(f"  done {label}: {wall} s, anon {gib(result['peak_anonymous_bytes'])} GiB", flush=True)
            return result
        killed = completed.returncode in (-9, 137)
        print(f"  FAILED {label} (rc {completed.returncode}){' killed: OOM at the cap?' if killed else ''}\n{completed.stderr[-3000:]}", flush=True)
        return {"ok": False, "rc": completed.returncode, "killed": killed, "wall_s": wall, "stderr_tail": completed.stderr[-3000:]}


def gib(value) -> str:
    return f"{value / 2**30:.2f}" if isinstance(value, (int, float)) else "n/a"


def file_hashes(directory: Path) -> dict:
    hashes = {}
    for path in sorted(directory.iterdir()):
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            hashes[path.name] = digest.hexdigest()
    return hashes


def graph_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir() if path.name.startswith("model.onnx"))


def f32_weight_bytes(checkpoint: Path) -> int:
    """Float32 bytes of the text decoder's weights, from the safetensors headers."""
    total = 0
    for shard in sorted(checkpoint.glob("*.safetensors")):
        with open(shard, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        for name, info in header.items():
            if name != "__metadata__" and not name.startswith(("vision_tower", "multi_modal_projector", "model.vision_tower", "model.multi_modal_projector")):
                count = 1
                for size in info["shape"]:
                    count *= size
                total += 4 * count
    return total


VARIANTS = {  # name: how it is made (exporter, precision, quantizer)
    "builder fp32": ("builder", "fp32", None),
    "builder int4": ("builder", "int4", None),
    "builder int8": ("builder", "int8", None),
    "torch fp32": ("torch", "fp32", None),
    "torch int4": ("torch", "int4", "matmul_nbits"),
    "torch int8": ("torch", "int8", "dynamic"),
}


def make(harness: Harness, variant: str, checkpoint: Path, out: Path, heavy: bool, torch_fp32: Path | None = None) -> tuple[dict, list[dict]]:
    """The variant's graph in `out`; its jobs' results (the torch int4/int8 path: export, then quantize)."""
    exporter, precision, method = VARIANTS[variant]
    if exporter == "builder":
        return harness.run("builder", heavy, checkpoint=str(checkpoint), out=str(out), precision=precision), []
    if method is None:
        return harness.run("torch", heavy, checkpoint=str(checkpoint), out=str(out)), []
    jobs = []
    if torch_fp32 is None:
        torch_fp32 = out.parent / (out.name + "-fp32")
        jobs.append(harness.run("torch", heavy, checkpoint=str(checkpoint), out=str(torch_fp32)))
        if not jobs[0]["ok"]:
            return jobs[0], jobs
    result = harness.run("quantize", heavy, input=str(torch_fp32), out=str(out), precision=precision, method=method)
    return result, jobs


def section_tiny(harness: Harness, work: Path) -> dict:
    rows = {}
    for variant in VARIANTS:
        print(f"tiny: {variant}", flush=True)
        runs = []
        for attempt in ("a", "b"):
            out = work / "tiny" / f"{variant.replace(' ', '-')}-{attempt}"
            result, before = make(harness, variant, TINY, out, heavy=False)
            peaks = [job.get("peak_anonymous_bytes", 0) for job in (*before, result) if job.get("ok")]
            runs.append({"result": result, "export_job": before[0] if before else None, "peak_anonymous_bytes": max(peaks) if peaks else None,
                         "hashes": file_hashes(out) if result["ok"] else {}, "bytes": graph_bytes(out) if result["ok"] else None, "out": out})
        first, second = runs
        graph_files = ("model.onnx", "model.onnx.data")
        identical = {name: first["hashes"].get(name) is not None and first["hashes"].get(name) == second["hashes"].get(name) for name in graph_files}
        other = sorted(name for name in set(first["hashes"]) | set(second["hashes"]) if name not in graph_files and first["hashes"].get(name) != second["hashes"].get(name))
        parity = harness.run("parity", checkpoint=str(TINY), graph=str(first["out"])) if first["result"]["ok"] else {"ok": False}
        rows[variant] = {
            "ok": first["result"]["ok"] and second["result"]["ok"],
            "identical": identical, "other_files_differing": other,
            "hashes": {"a": first["hashes"], "b": second["hashes"]},
            "graph_bytes": first["bytes"],
            "peak_anonymous_bytes": [first["peak_anonymous_bytes"], second["peak_anonymous_bytes"]],
            "seconds": [run["result"].get("wall_s") for run in runs],
            "export_seconds": [run["export_job"]["wall_s"] if run["export_job"] else None for run in runs],
            "report": first["result"].get("report"),
            "parity": parity.get("report") if parity["ok"] else {"error": parity.get("stderr_tail", "")[-600:]},
        }
        for run in runs:
            shutil.rmtree(run["out"], ignore_errors=True)
            shutil.rmtree(run["out"].parent / (run["out"].name + "-fp32"), ignore_errors=True)
    return rows


def write_1b_checkpoint(directory: Path, layers: int = 26, vocabulary: int = 262144) -> dict:
    """Gemma 3 1B (text only, Gemma3ForCausalLM) with the Hub's names and shapes, bf16, one shard;
    fewer layers or a smaller vocabulary for the light `small` section."""
    from modelforge.testing.gemma3_checkpoint import _FIXTURE_FILES, _pool, _write_shard

    config = {**GEMMA3_1B, "num_hidden_layers": layers, "vocab_size": vocabulary, "layer_types": GEMMA3_1B["layer_types"][:layers]}
    if layers < 6:
        config["layer_types"][-1] = "full_attention"  # both attention kinds, as the real pattern has
    hidden, inner, heads, kv, head = 1152, 6912, 4, 1, 256
    shapes = {"model.embed_tokens.weight": (vocabulary, hidden), "model.norm.weight": (hidden,)}
    for index in range(layers):
        prefix = f"model.layers.{index}."
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            shapes[prefix + norm + ".weight"] = (hidden,)
        shapes.update({prefix + "self_attn.q_proj.weight": (heads * head, hidden), prefix + "self_attn.k_proj.weight": (kv * head, hidden),
                       prefix + "self_attn.v_proj.weight": (kv * head, hidden), prefix + "self_attn.o_proj.weight": (hidden, heads * head),
                       prefix + "self_attn.q_norm.weight": (head,), prefix + "self_attn.k_norm.weight": (head,),
                       prefix + "mlp.gate_proj.weight": (inner, hidden), prefix + "mlp.up_proj.weight": (inner, hidden),
                       prefix + "mlp.down_proj.weight": (hidden, inner)})
    stamp = {"shapes": len(shapes), "config": config}
    stamp_path = directory / ".bench-stamp.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return stamp
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    _write_shard(directory / "model.safetensors", sorted(shapes), shapes, _pool())
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in _FIXTURE_FILES:
        shutil.copyfile(TINY / name, directory / name)
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return stamp


SIZES = {"mid": {"layers": 26, "vocabulary": 262144, "heavy": True}, "small": {"layers": 2, "vocabulary": 32768, "heavy": False}}


def section_mid(harness: Harness, work: Path, label: str = "mid") -> dict:
    """Peak memory of each path on a synthetic 1B-shaped checkpoint (`small`: 2 layers, vocabulary 32768, a light run)."""
    size = SIZES[label]
    checkpoint = work / f"checkpoint-1b-{label}"
    print(f"{label}: writing the synthetic Gemma 3 1B-shaped checkpoint", flush=True)
    write_1b_checkpoint(checkpoint, size["layers"], size["vocabulary"])
    weights = f32_weight_bytes(checkpoint)
    rows = {}
    for variant in ("builder fp32", "builder int4", "torch fp32", "torch int4"):
        print(f"{label}: {variant}", flush=True)
        out = work / label / variant.replace(" ", "-")
        torch_fp32 = work / label / "torch-fp32" if variant == "torch int4" and rows.get("torch fp32", {}).get("ok") else None
        result, before = make(harness, variant, checkpoint, out, heavy=size["heavy"], torch_fp32=torch_fp32)
        jobs = [*before, result]
        if torch_fp32 is not None:
            jobs = [rows["torch fp32"]["jobs"][0], result]  # the export measured just before, reused
        parity = None
        if label == "small" and result["ok"]:  # 1B widths (head_dim 256, 4 heads / 1 KV head), light enough to check against PyTorch
            parity = harness.run("parity", checkpoint=str(checkpoint), graph=str(out))
            if variant == "builder fp32":
                fixed = harness.run("norm_gains", checkpoint=str(checkpoint), input=str(out), out=str(out) + "-gains")
                fixed_parity = harness.run("parity", checkpoint=str(checkpoint), graph=str(out) + "-gains") if fixed["ok"] else {"ok": False}
                rows["builder fp32, gains 1+w in f32"] = {
                    "ok": fixed["ok"], "jobs": [fixed], "peak_anonymous_bytes": None, "peak_rss_bytes": None, "seconds": 0, "graph_bytes": None,
                    "killed": False, "report": fixed.get("report"),
                    "parity": fixed_parity.get("report") if fixed_parity["ok"] else {"error": fixed_parity.get("stderr_tail", "")[-600:]},
                }
                shutil.rmtree(str(out) + "-gains", ignore_errors=True)
        peaks = [job.get("peak_anonymous_bytes") for job in jobs]
        rows[variant] = {
            "ok": all(job["ok"] for job in jobs), "jobs": jobs,
            "peak_anonymous_bytes": max(peak for peak in peaks if peak) if any(peaks) else None,
            "peak_rss_bytes": max((job.get("peak_rss_bytes") or 0) for job in jobs) or None,
            "seconds": sum(job["wall_s"] for job in jobs),
            "graph_bytes": graph_bytes(out) if result["ok"] else None,
            "killed": any(job.get("killed") for job in jobs),
            "parity": (parity.get("report") if parity["ok"] else {"error": parity.get("stderr_tail", "")[-600:]}) if parity else None,
        }
        if variant != "torch fp32":
            shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work / label, ignore_errors=True)
    return {"f32_weight_bytes": weights, "layers": size["layers"], "vocabulary": size["vocabulary"], "rows": rows}


# --------------------------------------------------------------------------- rendering
def ratio(value, baseline):
    return round(value / baseline, 2) if value and baseline else None


def describe_parity(parity: dict | None) -> str:
    if not parity:
        return "-"
    if "error" in parity:
        return "failed"
    return (f"{parity['greedy_identical_steps']}/{STEPS}, {parity['max_abs_logit']:.1e}, {parity['top1_agreement']:.2f}, {parity['mean_kl']:.1e}; "
            f"{parity.get('decode_tokens_per_s', 'n/a')}")


def render(result: dict) -> str:
    machine = result["machine"]
    lines = ["<!-- bench:onnx_exporters begin -->", "## onnx_exporters: the Gemma 3 decoder, genai builder vs torch.onnx.export + onnxruntime quantizers", "",
             f"{result['date']}, commit {result['commit']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB; torch {result['versions']['torch']}, "
             f"transformers {result['versions']['transformers']}, onnxruntime {result['versions']['onnxruntime']}, onnxruntime-genai "
             f"{result['versions']['onnxruntime_genai']}, onnx {result['versions']['onnx']}. Baseline: the builder (the target's path), same run. "
             "See docs/onnx-exporters.md.", ""]
    tiny = result.get("tiny")
    if tiny:
        lines += ["### tiny (fixtures/tiny-medgemma): faithful, deterministic, memory", "",
                  f"Parity: onnxruntime CPU (1 thread) vs PyTorch float32, a {PROMPT_TOKENS}-token prompt, {STEPS} greedy steps teacher-forced. "
                  "Deterministic: two exports in fresh directories, sha256.", "",
                  "| variant | greedy-identical steps | top-1 | max abs dlogit | mean KL | model.onnx same | data same | other files differing | peak anon MiB | anon / builder | graph MB | wall s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for variant, row in tiny.items():
            parity = row["parity"] or {}
            baseline = tiny.get(f"builder {VARIANTS[variant][1]}", {}).get("peak_anonymous_bytes", [None])[0]
            peak = row["peak_anonymous_bytes"][0]
            lines.append(
                f"| {variant} | {parity.get('greedy_identical_steps', 'n/a')}/{STEPS} | {parity.get('top1_agreement', float('nan')):.3f} | "
                f"{parity.get('max_abs_logit', float('nan')):.2e} | {parity.get('mean_kl', float('nan')):.2e} | {row['identical']['model.onnx']} | "
                f"{row['identical']['model.onnx.data']} | {', '.join(row['other_files_differing']) or '-'} | "
                f"{peak / 2**20:.0f} | {ratio(peak, baseline)} | {(row['graph_bytes'] or 0) / 1e6:.2f} | {row['seconds'][0] + (row['export_seconds'][0] or 0):.1f} |"
                if peak else f"| {variant} | failed | | | | | | | | | | |")
        lines.append("")
    for label in ("mid", "small"):
        mid = result.get(label)
        if not mid:
            continue
        weights = mid["f32_weight_bytes"]
        rows = mid["rows"]
        title = ("synthetic Gemma 3 1B text decoder" if label == "mid" else
                 f"Gemma 3 1B widths, {mid.get('layers')} layers, vocabulary {mid.get('vocabulary')} (a light run)")
        lines += [f"### {label}: {title} ({weights / 2**30:.2f} GiB of float32 weights), peak memory", "",
                  "| variant | ok | peak anon GiB | / f32 weights | / builder same precision | peak RSS GiB | graph GB | wall s | parity: greedy, max abs dlogit, top-1, KL; decode tok/s (1 thread) | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for variant, row in sorted(rows.items(), key=lambda item: (item[0].split(",")[0] not in VARIANTS, list(VARIANTS).index(item[0].split(",")[0]) if item[0].split(",")[0] in VARIANTS else 0, item[0])):
            baseline = rows.get(f"builder {VARIANTS[variant][1]}", {}).get("peak_anonymous_bytes") if variant in VARIANTS else None
            note = "killed at the cap (OOM)" if row["killed"] else ("" if row["ok"] else "failed")
            if variant == "torch int4":
                note = (note + "; " if note else "") + "max of export and MatMulNBits quantization"
            if variant not in VARIANTS:
                note = (note + "; " if note else "") + f"the builder fp32 graph, {row['report']['gains_replaced']} RMSNorm gains recomputed (largest change {row['report']['largest_gain_change']:.2g}); parity only" if row.get("report") else "failed"
            lines.append(f"| {variant} | {row['ok']} | {gib(row['peak_anonymous_bytes'])} | {ratio(row['peak_anonymous_bytes'], weights)} | "
                         f"{ratio(row['peak_anonymous_bytes'], baseline)} | {gib(row['peak_rss_bytes'])} | {(row['graph_bytes'] or 0) / 1e9:.2f} | "
                         f"{row['seconds']:.0f} | {describe_parity(row.get('parity'))} | {note} |")
        lines.append("")
    targets = result.get("targets", {})
    if targets:
        lines += ["| target | result |", "|---|---|"] + [f"| {name} | {verdict(value)} |" for name, value in targets.items()] + [""]
    lines.append("<!-- bench:onnx_exporters end -->")
    return "\n".join(lines) + "\n"


def targets(result: dict) -> dict:
    """Printed, never raised: what the target needs from an exporter."""
    out = {}
    tiny = result.get("tiny") or {}
    for variant in ("builder fp32", "torch fp32"):
        if variant in tiny and tiny[variant]["parity"]:
            out[f"{variant}: {STEPS}/{STEPS} greedy steps and max |dlogit| <= 0.01 (the tiny manifest's gate)"] = (
                tiny[variant]["parity"].get("greedy_identical_steps") == STEPS and tiny[variant]["parity"].get("max_abs_logit", 1) <= 0.01)
    for variant, row in tiny.items():
        out[f"{variant}: byte-identical graph and data on re-export"] = all(row["identical"].values())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="tiny,small,mid", help="a subset of tiny,small,mid (none: re-render --results)")
    parser.add_argument("--work", type=Path, default=BENCH / "out" / "onnx_exporters", help="scratch: graphs, the 1B checkpoint (deleted graphs as measured)")
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "onnx_exporters.json")
    parser.add_argument("--markdown", type=Path, default=BENCH / "RESULTS.md")
    parser.add_argument("--light-wrapper", default="", help="command prefix for tiny jobs, e.g. a memory cgroup wrapper")
    parser.add_argument("--heavy-wrapper", default="", help="command prefix for 1B jobs, e.g. 'flock LOCK' and a memory cgroup wrapper")
    parser.add_argument("--keep-checkpoint", action="store_true", help="keep the synthetic 1B checkpoint in --work")
    arguments = parser.parse_args()
    if arguments.job:
        run_job_here(arguments.job)
        return 0
    sections = set(arguments.sections.split(","))
    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(work, shlex.split(arguments.light_wrapper), shlex.split(arguments.heavy_wrapper))
    import onnx
    import onnxruntime
    import onnxruntime_genai
    import torch
    import transformers

    previous = json.loads(arguments.results.read_text()) if arguments.results.exists() else {}
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
                     "onnxruntime_genai": onnxruntime_genai.__version__, "onnx": onnx.__version__},
        **{label: previous.get(label) for label in ("tiny", "mid", "small")},
    }
    if "tiny" in sections:
        result["tiny"] = section_tiny(harness, work)
    for label in ("small", "mid"):
        if label in sections:
            result[label] = section_mid(harness, work, label)
            if not arguments.keep_checkpoint:
                shutil.rmtree(work / f"checkpoint-1b-{label}", ignore_errors=True)
    if arguments.results.exists():  # another run may have written other sections meanwhile: keep them
        latest = json.loads(arguments.results.read_text())
        result.update({label: latest.get(label) for label in ("tiny", "mid", "small") if label not in sections})
    result["targets"] = targets(result)
    arguments.results.parent.mkdir(parents=True, exist_ok=True)
    arguments.results.write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    section = render(result)
    replace_section(arguments.markdown, "bench:onnx_exporters", section)
    print(section)
    failed = [name for name, row in (result.get("tiny") or {}).items() if not row["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
