"""Step `gguf_parity`: the built GGUF run in llama.cpp (llama-cpp-python, logits for every position)
against the PyTorch checkpoint it came from, on the same token ids. Per prompt: both tokenizers' ids;
PyTorch's greedy continuation and llama.cpp's own greedy continuation; then, teacher-forced on PyTorch's
sequence, max |Δlogit|, top-1 agreement and mean KL(PyTorch ‖ llama.cpp) over every position. The KV
cache is F32 (llama.cpp's default F16 cache would add its own rounding to every figure); ggml's CPU GELU
reads an F16 table, which leaves about 0.01 of |Δlogit| on a correct F32 conversion. Float
types are held to equal greedy tokens and a max |Δlogit|; quantized ones to top-1 agreement and mean
KL. A broken conversion (Gemma's +1 norm offset missing) fails both. Imports only steps.base, errors
and the stdlib at module level; torch, transformers and llama_cpp load in the worker only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "gguf_parity"
VERSION = 1
TOOLS = ("llama-cpp-python", "torch", "transformers", "sentencepiece", "numpy")
THREADS = 2


def measure(gguf: Path, checkpoint: Path, prompts: list[str], steps: int, *, work: Path,
            progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """The parity report of `gguf` against `checkpoint` (see the module docstring), measured in a child."""
    from modelforge.steps.gguf.worker import launch

    request = {"action": "parity", "gguf": str(gguf), "checkpoint": str(checkpoint), "prompts": list(prompts), "steps": steps, "threads": THREADS}
    result = launch(request, work / "parity", f"gguf parity {gguf.name}", progress)
    return result


def failures(report: dict, *, max_abs_logit: float | None = None, greedy_equal: bool = False,
             min_top1_agreement: float | None = None, max_kl: float | None = None) -> list[str]:
    """What in `report` misses the thresholds, one line each (empty: it passes)."""
    found = []
    for item in report["prompts"]:
        if not item["tokenizer_equal"]:
            found.append(f"prompt {item['prompt']!r}: llama.cpp tokenizes it as {item['gguf_prompt_ids']}, transformers as {item['prompt_ids']}")
        if greedy_equal and item["gguf_greedy"] != item["torch_greedy"]:
            found.append(f"prompt {item['prompt']!r}: llama.cpp's greedy tokens {item['gguf_greedy']} differ from PyTorch's {item['torch_greedy']} after {item['greedy_common_prefix']} token(s)")
    summary = report["summary"]
    if max_abs_logit is not None and summary["max_abs_logit"] > max_abs_logit:
        found.append(f"max |Δlogit| {summary['max_abs_logit']:.3g} is above {max_abs_logit}")
    if min_top1_agreement is not None and summary["top1_agreement"] < min_top1_agreement:
        found.append(f"top-1 agreement {summary['top1_agreement']:.3f} is below {min_top1_agreement}")
    if max_kl is not None and summary["mean_kl"] > max_kl:
        found.append(f"mean KL {summary['mean_kl']:.3g} is above {max_kl}")
    return found


def parity_in_child(request: dict) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llama_cpp

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(request["checkpoint"])
    model = AutoModelForCausalLM.from_pretrained(request["checkpoint"], dtype=torch.float32, attn_implementation="eager").eval()
    steps = request["steps"]
    encoded = [tokenizer(prompt).input_ids for prompt in request["prompts"]]
    n_ctx = max(len(ids) for ids in encoded) + steps + 8
    llama = llama_cpp.Llama(model_path=request["gguf"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                            n_threads=request["threads"], n_threads_batch=request["threads"], seed=0, verbose=False,
                            type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    items, deltas, agreements, divergences = [], [], [], []
    for prompt, ids in zip(request["prompts"], encoded):
        sequence = list(ids)
        with torch.no_grad():
            output = model(torch.tensor([sequence]), use_cache=True)
            for _ in range(steps):
                token = int(output.logits[0, -1].argmax())
                sequence.append(token)
                output = model(torch.tensor([[token]]), past_key_values=output.past_key_values, use_cache=True)
            reference = model(torch.tensor([sequence[:-1]])).logits[0].to(torch.float64).numpy()
        llama.reset()
        llama.eval(sequence[:-1])
        ours = np.array(llama.scores[: len(sequence) - 1], dtype=np.float64)
        llama.reset()
        llama.eval(ids)
        greedy = []
        for _ in range(steps):
            token = int(np.argmax(llama.scores[llama.n_tokens - 1]))
            greedy.append(token)
            llama.eval([token])
        torch_greedy = sequence[len(ids):]
        vocabulary = min(reference.shape[1], ours.shape[1])
        reference, ours = reference[:, :vocabulary], ours[:, :vocabulary]
        delta = np.abs(reference - ours).max(axis=1)
        agree = reference.argmax(axis=1) == ours.argmax(axis=1)
        log_p = reference - np.logaddexp.reduce(reference, axis=1, keepdims=True)
        log_q = ours - np.logaddexp.reduce(ours, axis=1, keepdims=True)
        kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=1)
        deltas.append(delta), agreements.append(agree), divergences.append(kl)
        common = next((index for index, (a, b) in enumerate(zip(greedy, torch_greedy)) if a != b), len(greedy))
        gguf_ids = llama.tokenize(prompt.encode(), add_bos=True, special=True)
        items.append({
            "prompt": prompt, "prompt_ids": list(ids), "gguf_prompt_ids": list(gguf_ids), "tokenizer_equal": list(gguf_ids) == list(ids),
            "torch_greedy": torch_greedy, "gguf_greedy": greedy, "greedy_common_prefix": common,
            "max_abs_logit": float(delta.max()), "top1_agreement": float(agree.mean()), "mean_kl": float(kl.mean()),
        })
    summary = {
        "positions": int(sum(len(delta) for delta in deltas)),
        "max_abs_logit": float(max(delta.max() for delta in deltas)),
        "top1_agreement": float(np.concatenate(agreements).mean()),
        "mean_kl": float(np.concatenate(divergences).mean()),
        "greedy_equal": all(item["gguf_greedy"] == item["torch_greedy"] for item in items),
        "tokenizer_equal": all(item["tokenizer_equal"] for item in items),
        "vocabulary": {"torch": int(model.config.get_text_config().vocab_size), "gguf": int(llama.n_vocab())},
    }
    return {"prompts": items, "summary": summary}


def run(context: StepContext) -> None:
    """params: {prompts, steps, max_abs_logit?, greedy_equal?, min_top1_agreement?, max_kl?}; inputs
    `gguf` (model.gguf) and `checkpoint` (the PyTorch side); output parity_report.json. Fails the build
    when the report misses a threshold."""
    params = context.params
    report = measure(context.input_path("gguf", "model.gguf"), context.input_dir("checkpoint"), params["prompts"], params["steps"],
                     work=context.scratch_dir, progress=context.progress)
    context.measurements.update({key: report.pop(key) for key in ("seconds", "peak_rss_bytes")})
    thresholds = {key: params[key] for key in ("max_abs_logit", "greedy_equal", "min_top1_agreement", "max_kl") if key in params}
    report["thresholds"] = thresholds
    context.output("parity_report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    missed = failures(report, **thresholds)
    if missed:
        context.progress(0, 0, json.dumps(report["summary"], sort_keys=True))
        raise StepFailed(f"gguf parity ({context.name or 'gguf'}): {missed[0]}" + (f" (and {len(missed) - 1} more)" if len(missed) > 1 else "") + "; the per-prompt figures are in the step's log")
