"""Parity of exported LiteRT graphs with the source transformers model, run inside the worker
process: teacher-forced greedy decoding on chat prompts (next-token logits compared step by step)
and, for multimodal exports, the vision encoder + adapter (fed the runtime's [0, 1] pixels) against
the vision tower + projector (fed the processor's pixels), and the packaged .litertlm answering an
image prompt through the LiteRT-LM runtime against PyTorch with the processor's preprocessing.

The check runs as separate worker processes, one per phase (`PHASES`), each handing the next its
figures through files in the step's scratch directory: the text reference, the multimodal
reference, the LiteRT-LM runtime and the exported graphs never share a process, so the peak is the
largest phase, not the sum of what each leaves behind (at MedGemma 4B: a 15.5 GB and a 17.2 GB
float32 reference, a 4 GB int8 decoder in the runtime and again in the interpreter)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from modelforge.quality import QualityAccumulator
from modelforge.steps.parity import references_dir

MASKED = float(np.finfo(np.float32).min / 2)


def interpreter_threads() -> int:
    """The interpreter's threads: $OMP_NUM_THREADS where set (as torch takes it), else the cores this
    process may use. ai_edge_litert's own default is one: at MedGemma 4B the graphs phase ran on one
    core of two. The logits do not depend on it (4B int4 decoder, 32 steps: bitwise equal with 1 and
    2 threads; the kernels split output channels, never a dot product)."""
    configured = os.environ.get("OMP_NUM_THREADS", "")
    return int(configured) if configured.isdigit() and int(configured) > 0 else len(os.sched_getaffinity(0))


def _runner(path: Path, signature: str | None = None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=interpreter_threads())
    signatures = interpreter.get_signature_list()
    return interpreter, signatures


class TfliteDecoder:
    """Drives the prefill/decode signatures of an export_hf graph with an explicit KV cache."""

    def __init__(self, models_dir: Path):
        self.interpreter, self.signatures = _runner(models_dir / "model.tflite")
        self.embedder = None
        if (models_dir / "embedder.tflite").exists():
            embedder, signatures = _runner(models_dir / "embedder.tflite")
            self.embedder = embedder.get_signature_runner(next(iter(signatures)))
        self.decode = self.interpreter.get_signature_runner("decode")
        details = self.decode.get_input_details()
        self.cache_names = sorted(name for name in details if name.startswith("kv_cache"))
        self._cache_details = {name: (details[name]["shape"], details[name]["dtype"]) for name in self.cache_names}
        self.reset()
        self.cache_length = int(details["mask"]["shape"][-1])
        self.prefill_lengths = sorted(int(name.split("_")[1]) for name in self.signatures if name.startswith("prefill_"))

    def reset(self) -> None:
        """An empty KV cache: the next prefill starts a new conversation."""
        self.cache = {name: np.zeros(shape, dtype=dtype) for name, (shape, dtype) in self._cache_details.items()}

    def _embed(self, tokens: list[int]) -> np.ndarray:
        rows = [self.embedder(token_ids=np.array([[token]], dtype=np.int32))["embeddings"] for token in tokens]
        return np.concatenate(rows, axis=1)

    def _inputs(self, tokens: list[int], positions: list[int]) -> dict:
        length = len(tokens)
        mask = np.full((1, 1, length, self.cache_length), MASKED, dtype=np.float32)
        for row, position in enumerate(positions):
            mask[0, 0, row, : position + 1] = 0.0
        inputs = {"input_pos": np.array(positions, dtype=np.int32), "mask": mask, **self.cache}
        if self.embedder is not None:
            inputs["embeddings"] = self._embed(tokens)
        else:
            inputs["tokens"] = np.array([tokens], dtype=np.int32)
        return inputs

    def prefill(self, tokens: list[int]) -> None:
        if not tokens:
            return
        fitting = [length for length in self.prefill_lengths if length >= len(tokens)]
        if not fitting:
            raise ValueError(f"prompt of {len(tokens)} tokens is longer than the largest prefill length {self.prefill_lengths[-1]}")
        length = fitting[0]
        padded = tokens + [0] * (length - len(tokens))
        runner = self.interpreter.get_signature_runner(f"prefill_{length}")
        outputs = runner(**self._inputs(padded, list(range(length))))
        self.cache = {name: outputs[name] for name in self.cache_names}

    def step(self, token: int, position: int) -> np.ndarray:
        outputs = self.decode(**self._inputs([token], [position]))
        self.cache = {name: outputs[name] for name in self.cache_names}
        return outputs["logits"].reshape(-1).astype(np.float64)


def load_reference(checkpoint: Path, part: str, auto_class: str):
    """The transformers model in float32 with only `part`'s tensors read (partial_load): a 4B
    checkpoint's text reference is its 15.5 GB decoder, not the 17 GB multimodal model."""
    import torch
    import transformers

    from modelforge.steps import partial_load

    config = transformers.AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    with partial_load.meta_parameters():
        model = getattr(transformers, auto_class).from_config(config, dtype=torch.float32)
    shards = partial_load.Shards(checkpoint)
    try:
        partial_load.materialize(model, shards, partial_load.wants(part))
    finally:
        shards.close()
    partial_load.strip_unloaded(model)
    return model.eval()


def text_reference(request: dict) -> dict:
    """Phase `text_reference`: PyTorch's greedy tokens and next-token logits on the chat prompts
    (float32, as computed), saved for the graphs phase."""
    import torch
    from transformers import AutoTokenizer

    checkpoint = Path(request["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    model = load_reference(checkpoint, "text", "AutoModelForCausalLM")
    arrays = {}
    template = chat_template(request)
    for index, prompt in enumerate(request["prompts"]):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template, add_generation_prompt=True,
                                            tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        with torch.no_grad():
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=request["steps"], do_sample=False, output_logits=True,
                return_dict_in_generate=True, min_new_tokens=request["steps"], pad_token_id=tokenizer.pad_token_id,
            )
        arrays[f"ids_{index}"] = np.array(ids, dtype=np.int64)
        arrays[f"tokens_{index}"] = generated.sequences[0, len(ids):].numpy().astype(np.int64)
        arrays[f"logits_{index}"] = np.stack([logits[0].float().numpy() for logits in generated.logits])
        del generated
    np.savez(references_dir(request) / "text.npz", **arrays)
    return {}


class LogitComparison:
    """Exported next-token logits against the reference's, teacher-forced along the reference's
    greedy tokens, prompt by prompt: max |Δ|, top-1 agreement, mean and p99 KL, the perplexity
    ratio on the reference's own tokens (quality.py's figures, as llama.cpp's --kl-divergence
    reports them), and how many leading steps stay greedy-identical. Shared by every toolchain's
    parity."""

    def __init__(self) -> None:
        self.quality = QualityAccumulator()
        self.identical_steps: list[int] = []
        self._still = True

    def start_prompt(self) -> None:
        self.identical_steps.append(0)
        self._still = True

    def add(self, exported: np.ndarray, reference: np.ndarray, target: int) -> None:
        """One position: the exported and reference logits, and the token that came next (the
        reference's greedy token)."""
        agree = int(exported.argmax()) == int(reference.argmax())
        self._still = self._still and agree
        self.identical_steps[-1] += self._still
        self.quality.add(reference[None, :], exported[None, :], np.array([target]))

    def report(self) -> dict:
        figures = self.quality.report() if self.quality.kls else {}
        return {
            "prompts": len(self.identical_steps),
            "steps": figures.get("positions", 0),
            "max_abs_logit": figures.get("max_abs_logit", 0.0),
            "top1_agreement": figures.get("top1_agreement", math.nan),
            "mean_kl": figures.get("mean_kl", math.nan),
            "p99_kl": figures.get("p99_kl", math.nan),
            "perplexity_ratio": figures.get("perplexity_ratio", math.nan),
            "greedy_identical_steps": self.identical_steps,
        }


def text_parity(models_dir: Path, references: Path, prompts: int) -> dict:
    """The exported decoder teacher-forced along PyTorch's greedy tokens: logits compared step by
    step. One interpreter serves every prompt (its KV cache emptied between them)."""
    saved = np.load(references)
    decoder = TfliteDecoder(models_dir)
    comparison = LogitComparison()
    for index in range(prompts):
        ids, reference_tokens = saved[f"ids_{index}"].tolist(), saved[f"tokens_{index}"].tolist()
        reference_logits = saved[f"logits_{index}"].astype(np.float64)
        decoder.reset()
        decoder.prefill(ids[:-1])
        comparison.start_prompt()
        token, position = ids[-1], len(ids) - 1
        for step, reference_token in enumerate(reference_tokens):
            if position >= decoder.cache_length:
                break
            comparison.add(decoder.step(token, position), reference_logits[step], reference_token)
            token, position = reference_token, position + 1  # teacher forcing keeps the two aligned
    return comparison.report()


def test_cards(size: tuple[int, int], directory: Path) -> list[Path]:
    """Deterministic PNG test cards of exactly the processor's size (so neither the runtime's
    Catmull-Rom nor the processor's bilinear resize changes a pixel): gradients, a checkerboard
    and a bright square, like an X-ray's edges; the second card differs in every channel."""
    from PIL import Image

    height, width = size
    y, x = np.mgrid[0:height, 0:width]
    cards = [
        np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), ((x // 7 + y // 7) % 2) * 255], axis=-1),
        np.stack([(x * 5 + y * 3) % 256, (y * 11 + x * x) % 256, ((x // 4 + y // 5) % 2) * 200 + 30], axis=-1),
    ]
    cards[0][height // 4 : height // 2, width // 4 : width // 2] = 255
    paths = []
    for index, card in enumerate(cards):
        path = directory / f"test-card-{index}.png"
        Image.fromarray(card.astype(np.uint8), mode="RGB").save(path)
        paths.append(path)
    return paths


def vision_references(model, processor, cards: list[Path]) -> list[np.ndarray]:
    """PyTorch's image embeddings (vision tower + projector) of each card, on the processor's own
    pixels: computed while the reference model is loaded, compared after it is freed."""
    import torch
    from PIL import Image

    references = []
    for card in cards:
        with Image.open(card) as image:
            pixel_values = processor.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=pixel_values)
            reference = features.pooler_output if hasattr(features, "pooler_output") else features
            reference = reference[0] if isinstance(reference, (list, tuple)) else reference
            references.append(reference.reshape(-1, reference.shape[-1]).double().numpy())
    return references


def vision_parity(references: list[np.ndarray], models_dir: Path, cards: list[Path]) -> dict:
    """The bare vision graphs fed what the runtime feeds ([0, 1] pixels, image_input.runtime_pixels)
    against PyTorch's embeddings on the processor's own pixels: cosine, worst card."""
    from modelforge.steps.image_input import runtime_pixels

    encoder, encoder_signatures = _runner(models_dir / "vision_encoder.tflite")
    adapter, adapter_signatures = _runner(models_dir / "vision_adapter.tflite")
    encode = encoder.get_signature_runner(next(iter(encoder_signatures)))
    adapt = adapter.get_signature_runner(next(iter(adapter_signatures)))
    cosines, tokens = [], 0
    for card, reference in zip(cards, references):
        soft = encode(images=runtime_pixels(str(card)))
        soft = soft[next(iter(soft))]
        embedded = adapt(soft_tokens=soft)
        embedded = embedded[next(iter(embedded))].reshape(-1, reference.shape[-1]).astype(np.float64)[: reference.shape[0]]
        a, b = reference.reshape(-1), embedded.reshape(-1)
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
        tokens = int(reference.shape[0])
    return {"vision_cosine": min(cosines), "vision_tokens": tokens}


def _leading_identical(reference_tokens: list[int], reply: str, tokenizer) -> int:
    """How many of PyTorch's tokens, from the first, the runtime's reply text reproduces (the
    runtime's Python API returns text, not ids)."""
    if tokenizer.decode(reference_tokens) == reply:
        return len(reference_tokens)
    count = 0
    while count < len(reference_tokens) and reply.startswith(tokenizer.decode(reference_tokens[: count + 1])):
        count += 1
    return count


def runtime_image_answers(bundle: Path, prompt: str, steps: int, cards: list[Path]) -> list[str]:
    """The .litertlm's greedy answers through the LiteRT-LM runtime (its own image decoding, resize,
    pixel range, prompt layout and attention), one fresh conversation per card."""
    import litert_lm

    engine = litert_lm.Engine(
        str(bundle), backend=litert_lm.Backend.CPU(thread_count=1), vision_backend=litert_lm.Backend.CPU(),
        max_num_images=1, cache_dir=":nocache",
    )
    replies = []
    try:
        for card in cards:
            conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=steps)
            replies.append(str(conversation.send_message(
                {"role": "user", "content": [{"type": "image", "path": str(card.resolve())}, {"type": "text", "text": prompt}]}
            )))
            conversation.close()
    finally:
        engine.close()
    return replies


def chat_template(request: dict) -> str | None:
    """The template the prompts go in: the checkpoint's file the request names (what the target
    ships), else None, the tokenizer's own."""
    name = request.get("chat_template")
    return None if name is None else (Path(request["checkpoint"]) / name).read_text(encoding="utf-8")


def reference_image_answers(model, processor, prompt: str, steps: int, stop_tokens: list[str], cards: list[Path],
                            template: str | None = None) -> dict:
    """PyTorch's greedy answers on the processor's own input_ids and pixel_values, to the first stop
    token. "causal" attends causally inside the image block, as the runtime does with our bundle
    (it declares no executor mask type); "bidirectional" is transformers' own image block (the
    processor's token_type_ids), reported beside it. LiteRT-LM 0.18.1's
    ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL also lets the block see <end_of_image>, matching
    neither (docs/targets/litertlm.md, bench/bench_image_attention.py)."""
    import torch
    from PIL import Image

    stop_ids = sorted({processor.tokenizer.convert_tokens_to_ids(token) for token in stop_tokens} - {None, processor.tokenizer.unk_token_id})
    answers = {"causal": [], "bidirectional": []}
    for card in cards:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False)
        with Image.open(card) as image:
            inputs = processor(text=text, images=image.convert("RGB"), return_tensors="pt", add_special_tokens=False)
        for attention, tokens_of in answers.items():
            arguments = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "pixel_values": inputs["pixel_values"]}
            if attention == "bidirectional":
                arguments["token_type_ids"] = inputs["token_type_ids"]
            with torch.no_grad():
                generated = model.generate(**arguments, max_new_tokens=steps, do_sample=False, eos_token_id=stop_ids or None,
                                           pad_token_id=processor.tokenizer.pad_token_id)
            tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
            tokens_of.append(tokens[: next((index for index, token in enumerate(tokens) if token in stop_ids), len(tokens))])
    return answers


def runtime_image_parity(answers: dict, replies: list[str], tokenizer) -> dict:
    """The runtime's replies against PyTorch's answers (reference_image_answers), token by token."""
    identical = [_leading_identical(tokens, reply, tokenizer) for tokens, reply in zip(answers["causal"], replies)]
    lengths = [len(tokens) for tokens in answers["causal"]]
    return {
        "image_prompts": len(replies),
        "image_tokens": lengths,
        "image_identical_tokens": identical,
        "image_token_agreement": sum(identical) / sum(lengths) if sum(lengths) else math.nan,
        "image_identical_tokens_bidirectional_reference": [
            _leading_identical(tokens, reply, tokenizer) for tokens, reply in zip(answers["bidirectional"], replies)],
    }


# The phases, in order; each runs in its own worker process (litert_parity.run) and returns
# {"report": figures for the lock, "handoff": what later phases are given}. Arrays go through files.

def image_reference(request: dict) -> dict:
    """Phase `image_reference`: the test cards, PyTorch's image embeddings and answers on them."""
    import torch
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    checkpoint = Path(request["checkpoint"])
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=False)
    size = processor.image_processor.size["height"], processor.image_processor.size["width"]
    cards = test_cards(size, Path(request["scratch_dir"]))
    model = Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=False).eval()
    embeddings = vision_references(model, processor, cards)
    np.savez(references_dir(request) / "vision.npz", *embeddings)
    handoff = {"cards": [str(card) for card in cards]}
    if request.get("bundle"):
        handoff["reference_answers"] = reference_image_answers(
            model, processor, request["prompts"][0], request["steps"], request["stop_tokens"], cards, chat_template(request))
    return {"handoff": handoff}


def runtime(request: dict) -> dict:
    """Phase `runtime`: the packaged .litertlm answers the image prompt through LiteRT-LM."""
    from transformers import AutoTokenizer

    cards = [Path(card) for card in request["cards"]]
    replies = runtime_image_answers(Path(request["bundle"]), request["prompts"][0], request["steps"], cards)
    tokenizer = AutoTokenizer.from_pretrained(Path(request["checkpoint"]), trust_remote_code=False)
    return {"report": runtime_image_parity(request["reference_answers"], replies, tokenizer)}


def graphs(request: dict) -> dict:
    """Phase `graphs`: the exported graphs in the LiteRT interpreter against the saved references."""
    models_dir, references = Path(request["models_dir"]), references_dir(request)
    report = text_parity(models_dir, references / "text.npz", len(request["prompts"]))
    if (models_dir / "vision_encoder.tflite").exists():
        saved = np.load(references / "vision.npz")
        embeddings = [saved[f"arr_{index}"] for index in range(len(saved.files))]
        report.update(vision_parity(embeddings, models_dir, [Path(card) for card in request["cards"]]))
    return {"report": report}


PHASES = {"text_reference": text_reference, "image_reference": image_reference, "runtime": runtime, "graphs": graphs}
