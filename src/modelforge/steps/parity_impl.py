"""Parity of exported LiteRT graphs with the source transformers model, run inside the worker
process: teacher-forced greedy decoding on chat prompts (next-token logits compared step by step)
and, for multimodal exports, the vision encoder + adapter against the vision tower + projector."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

MASKED = float(np.finfo(np.float32).min / 2)


def _runner(path: Path, signature: str | None = None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
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
        self.cache = {name: np.zeros(details[name]["shape"], dtype=details[name]["dtype"]) for name in self.cache_names}
        self.cache_length = int(details["mask"]["shape"][-1])
        self.prefill_lengths = sorted(int(name.split("_")[1]) for name in self.signatures if name.startswith("prefill_"))

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


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def load_reference(checkpoint: Path, part: str, auto_class: str):
    """The transformers model in float32 with only `part`'s tensors read (partial_load): a 4B
    checkpoint's text reference is its 15.5 GB decoder, not the 17 GB multimodal model."""
    import torch
    import transformers

    from modelforge.steps import partial_load

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    with partial_load.meta_parameters():
        model = getattr(transformers, auto_class).from_config(config, dtype=torch.float32)
    shards = partial_load.Shards(checkpoint)
    try:
        partial_load.materialize(model, shards, partial_load.wants(part))
    finally:
        shards.close()
    partial_load.strip_unloaded(model)
    return model.eval()


def text_parity(checkpoint: Path, models_dir: Path, prompts: list[str], steps: int) -> dict:
    import gc

    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_reference(checkpoint, "text", "AutoModelForCausalLM")
    # The reference runs first and only its logits (steps × vocabulary per prompt) are kept, so the
    # PyTorch model is gone before the interpreter maps the exported graphs: the two never coexist.
    references = []
    for prompt in prompts:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        with torch.no_grad():
            generated = model.generate(
                torch.tensor([ids]), max_new_tokens=steps, do_sample=False, output_logits=True,
                return_dict_in_generate=True, min_new_tokens=steps, pad_token_id=tokenizer.pad_token_id,
            )
        references.append((ids, generated.sequences[0, len(ids):].tolist(), [logits[0].double().numpy() for logits in generated.logits]))
        del generated
    del model
    gc.collect()
    max_abs, agreements, kls, total, greedy_identical_steps = 0.0, 0, [], 0, []
    for ids, reference_tokens, reference_logits in references:
        decoder = TfliteDecoder(models_dir)
        decoder.prefill(ids[:-1])
        token, position, identical = ids[-1], len(ids) - 1, 0
        still_identical = True
        for index, reference_token in enumerate(reference_tokens):
            if position >= decoder.cache_length:
                break
            exported = decoder.step(token, position)
            reference = reference_logits[index]
            max_abs = max(max_abs, float(np.abs(exported - reference).max()))
            agree = int(exported.argmax()) == int(reference.argmax())
            agreements += agree
            still_identical = still_identical and agree
            identical += still_identical
            p, q = _softmax(reference), _softmax(exported)
            kls.append(float(np.sum(p * (np.log(p + 1e-30) - np.log(q + 1e-30)))))
            total += 1
            token, position = reference_token, position + 1  # teacher forcing keeps the two aligned
        greedy_identical_steps.append(identical)
        del decoder
    return {
        "prompts": len(prompts),
        "steps": total,
        "max_abs_logit": max_abs,
        "top1_agreement": agreements / total if total else math.nan,
        "mean_kl": float(np.mean(kls)) if kls else math.nan,
        "greedy_identical_steps": greedy_identical_steps,
    }


def vision_parity(checkpoint: Path, models_dir: Path) -> dict:
    import torch
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = load_reference(checkpoint, "vision", "AutoModelForImageTextToText")
    size = processor.size["height"], processor.size["width"]
    # A deterministic test card: gradients and a bright square, like an X-ray's edges.
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    image = np.stack([x / size[1], y / size[0], ((x // 7 + y // 7) % 2) * 1.0], axis=-1) * 255
    image[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 255
    pixel_values = processor(images=image.astype(np.uint8), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=pixel_values)
        reference = (features.pooler_output if hasattr(features, "pooler_output") else features)
        reference = reference[0] if isinstance(reference, (list, tuple)) else reference
        reference = reference.reshape(-1, reference.shape[-1]).double().numpy()
    del model
    encoder, encoder_signatures = _runner(models_dir / "vision_encoder.tflite")
    adapter, adapter_signatures = _runner(models_dir / "vision_adapter.tflite")
    encode = encoder.get_signature_runner(next(iter(encoder_signatures)))
    adapt = adapter.get_signature_runner(next(iter(adapter_signatures)))
    images = pixel_values.permute(0, 2, 3, 1).numpy().astype(np.float32)
    soft = encode(images=images)
    soft = soft[next(iter(soft))]
    embedded = adapt(soft_tokens=soft)
    embedded = embedded[next(iter(embedded))].reshape(-1, reference.shape[-1]).astype(np.float64)[: reference.shape[0]]
    a, b = reference.reshape(-1), embedded.reshape(-1)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"vision_cosine": cosine, "vision_tokens": int(reference.shape[0])}


def run_parity(request: dict) -> dict:
    checkpoint, models_dir = Path(request["checkpoint"]), Path(request["models_dir"])
    report = text_parity(checkpoint, models_dir, request["prompts"], request["steps"])
    if (models_dir / "vision_encoder.tflite").exists():
        report.update(vision_parity(checkpoint, models_dir))
    return {"report": report}
