"""Step `web_task`: a MediaPipe `.task` (the format the GenAI web runtime runs) from a prefill/decode
graph (`model.tflite`; with `embedder.tflite` beside it, a decoder taking embeddings and its embedder,
packed as TF_LITE_EMBEDDER) and the SentencePiece tokenizer. The tokenizer is padded with unused pieces up
to the model's vocabulary: ids above it (image soft tokens) would otherwise crash the runtime's
detokenizer if the model ever emitted one."""

from __future__ import annotations

from modelforge.steps.base import StepContext

KIND = "web_task"
VERSION = 2
TOOLS = ("sentencepiece", "ai-edge-litert")


def run(context: StepContext) -> None:
    """params: {file, vocab_size, start_token, stop_tokens, max_tokens}."""
    from modelforge.web.taskfile import gemma_params, pad_sentencepiece, write_task

    params = context.params
    graph = context.input_path("graph", "model.tflite")
    vocab_size = params["vocab_size"] or _logits_width(graph)
    tokenizer = pad_sentencepiece(context.input_path("checkpoint", "tokenizer.model"), context.scratch_dir / "tokenizer.model", vocab_size)
    llm = gemma_params(max_tokens=params["max_tokens"])
    llm = type(llm)(**{**llm.__dict__, "start_token": params["start_token"], "stop_tokens": tuple(params["stop_tokens"])})
    embedder = context.input_path("graph", "embedder.tflite") if "embedder.tflite" in context.inputs["graph"] else None
    write_task(context.output(params["file"]), tflite=graph, embedder=embedder, tokenizer=tokenizer, params=llm)


def _logits_width(graph) -> int:
    """The vocabulary the graph can emit: the last dimension of the decode signature's logits."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(graph)).get_signature_runner("decode")
    return int(runner.get_output_details()["logits"]["shape"][-1])
