"""Step `parity_reference`: the float32 transformers model's outputs that the parity gates compare
exports with — greedy tokens and next-token logits on the chat prompts (text.npz), and for a
multimodal checkpoint the test cards, their image embeddings (vision.npz) and, where a target
checks answers through a runtime, PyTorch's greedy image answers (reference.json). Computed once
per checkpoint and prompts, read by the litertlm, onnx and web parity steps: a second target's
parity loads no PyTorch model. Its bytes may differ between machines (float kernels); no key
depends on them (a key covers its inputs' keys, not their bytes)."""

from __future__ import annotations

from modelforge.steps.base import StepContext
from modelforge.steps.reference.worker import MODULE
from modelforge.steps.workers import job_request, run_job

KIND = "parity_reference"
VERSION = 1
TOOLS = ("pillow", "torch", "transformers")
KEEP = True  # only a full re-export (the model in memory) makes its outputs again: a store budget drops them last


def run(context: StepContext) -> None:
    """params: {prompts, steps, multimodal, answers: null | {stop_tokens}, chat_template?: the checkpoint's
    file to put the prompts in (default: the tokenizer's own template)}; input: checkpoint."""
    params = context.params
    request = job_request(
        context, "reference", checkpoint=str(context.input_dir("checkpoint")), prompts=params["prompts"], steps=params["steps"],
        multimodal=params["multimodal"], answers=params["answers"], chat_template=params.get("chat_template"),
    )
    run_job(context, request, "PyTorch reference", MODULE)
