"""Step `gguf_parity`: the built text GGUF run in llama.cpp (llama-cpp-python, logits for every
position) against the PyTorch checkpoint it came from, on the parity prompts in the chat template.
Phase `text_reference` (steps/parity_phases.py, shared) records PyTorch's greedy tokens and their
logits; phase `gguf` evaluates the same ids teacher-forced in llama.cpp (max |Δlogit|, top-1
agreement, mean KL through parity_phases.LogitComparison), lets llama.cpp decode greedily on its own
(how many of PyTorch's tokens it repeats) and checks that llama.cpp's tokenizer (the one in the GGUF)
gives the reference's prompt ids. A float type is held to top-1 agreement 1.0 (then its free-running
greedy tokens are PyTorch's) and a max |Δlogit|; a K-quant to top-1 agreement and mean KL. The KV
cache is F32: llama.cpp's default F16 cache would add its own rounding to every figure; ggml's CPU GELU
reads an F16 table, which leaves about 0.02 of |Δlogit| on a correct F32 conversion of the tiny model.
A conversion without Gemma's +1 norm offset fails. Imports only steps.base, steps.parity, errors and
the stdlib at module level; torch, transformers and llama_cpp load in the worker only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.gguf.worker import MODULE
from modelforge.steps.parity import gate, run_phases

KIND = "gguf_parity"
VERSION = 1
TOOLS = ("llama-cpp-python", "torch", "transformers", "sentencepiece", "numpy")
REPORT = "parity.json"  # recorded in the lock under `checks`
THREADS = 2


def measure(gguf: Path, checkpoint: Path, prompts: list[str], steps: int, *, work: Path,
            progress: Callable[[int, int, str], None] = lambda *_: None) -> tuple[dict, dict]:
    """(the parity report, the measurements) of `gguf` against `checkpoint`, each phase in a worker."""
    work.mkdir(parents=True, exist_ok=True)
    request = {"action": "parity", "gguf": str(gguf), "checkpoint": str(checkpoint), "prompts": list(prompts), "steps": steps,
               "threads": THREADS, "scratch_dir": str(work)}
    return run_phases(request, ["text_reference", "gguf"], work, progress, MODULE)


def gguf_phase(request: dict) -> dict:
    """Phase `gguf`, in the worker: the GGUF in llama.cpp against the saved PyTorch references."""
    import numpy as np
    from transformers import AutoTokenizer

    import llama_cpp

    from modelforge.steps.parity_phases import LogitComparison, references_dir

    saved = np.load(references_dir(request) / "text.npz")
    tokenizer = AutoTokenizer.from_pretrained(request["checkpoint"], trust_remote_code=False)
    prompts = len(request["prompts"])
    longest = max(len(saved[f"ids_{index}"]) + len(saved[f"tokens_{index}"]) for index in range(prompts))
    llama = llama_cpp.Llama(model_path=request["gguf"], n_ctx=longest + 8, n_batch=longest + 8, n_ubatch=longest + 8,
                            logits_all=True, n_threads=request["threads"], n_threads_batch=request["threads"], seed=0,
                            verbose=False, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    comparison = LogitComparison()
    tokenizer_equal, free_running = [], []
    for index, prompt in enumerate(request["prompts"]):
        ids, tokens = saved[f"ids_{index}"].tolist(), saved[f"tokens_{index}"].tolist()
        logits = saved[f"logits_{index}"].astype(np.float64)
        llama.reset()
        llama.eval(ids + tokens[:-1])
        comparison.start_prompt()
        for step in range(len(tokens)):
            comparison.add(np.array(llama.scores[len(ids) - 1 + step], dtype=np.float64), logits[step])
        llama.reset()
        llama.eval(ids)
        greedy = []
        for _ in tokens:
            greedy.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
            llama.eval([greedy[-1]])
        free_running.append(next((step for step, (a, b) in enumerate(zip(greedy, tokens)) if a != b), len(tokens)))
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        tokenizer_equal.append(list(llama.tokenize(text.encode(), add_bos=False, special=True)) == ids)
    return {"report": comparison.report() | {
        "greedy_free_running_steps": free_running,
        "tokenizer_equal": all(tokenizer_equal),
    }}


def run(context: StepContext) -> None:
    """params: {prompts, steps, thresholds: {max_abs_logit, min_top1_agreement, max_kl}}; inputs `gguf`
    (model.gguf) and `checkpoint` (the PyTorch side); output parity.json (recorded in the lock)."""
    params = context.params
    report, measurements = measure(context.input_path("gguf", "model.gguf"), context.input_dir("checkpoint"), params["prompts"],
                                   params["steps"], work=context.scratch_dir / "parity", progress=context.progress)
    context.measurements.update(measurements)
    if not report["tokenizer_equal"]:
        raise StepFailed("parity check failed: llama.cpp's tokenizer (the GGUF's vocabulary) splits a chat prompt differently from the "
                         "source's; the converter did not carry the tokenizer faithfully, so the GGUF must not ship")
    gate(context, report, params["thresholds"], "use a float type (F16, BF16, Q8_0) or a larger K-quant, or relax the thresholds under parity")
