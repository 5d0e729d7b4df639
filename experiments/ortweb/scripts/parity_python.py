"""PyTorch float32 reference and onnxruntime (CPU, Python) on the three ONNX graphs: the vision
features of two test cards (max |delta|, cosine), greedy answers for a chat prompt and for an image
prompt per card (identical tokens, max |delta logit| while identical). Writes the cases (token ids,
pixel values, references) for the browser runs as cases.json.

usage: python parity_python.py CHECKPOINT GRAPHS_DIR (decoder: GRAPHS_DIR/decoder/model.onnx,
vision.onnx and embedding.onnx beside it) OUT_DIR"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))
from modelforge.steps.parity_impl import test_cards  # noqa: E402

STEPS = 24
CHAT_PROMPT = "What are the signs of pneumonia on a chest X-ray?"
IMAGE_PROMPT = "Describe this image."


class OnnxGemma:
    def __init__(self, graphs: Path, providers=("CPUExecutionProvider",)):
        options = ort.SessionOptions()
        self.vision = ort.InferenceSession(str(graphs / "vision.onnx"), options, providers=list(providers))
        self.embedding = ort.InferenceSession(str(graphs / "embedding.onnx"), options, providers=list(providers))
        self.decoder = ort.InferenceSession(str(graphs / "decoder" / "model.onnx"), options, providers=list(providers))
        self.past_names = [i.name for i in self.decoder.get_inputs() if i.name.startswith("past_key_values")]
        self.hidden = self.decoder.get_inputs()[1].shape[-1]

    def features(self, pixel_values: np.ndarray) -> np.ndarray:
        return self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]

    def greedy(self, ids: list[int], pixel_values: np.ndarray | None, steps: int):
        features = (self.features(pixel_values).reshape(-1, self.hidden) if pixel_values is not None
                    else np.zeros((1, self.hidden), np.float32))
        past = {name: np.zeros((1, 1, 0, 32), np.float32) for name in self.past_names}
        tokens, logits_all, times = [], [], []
        current, total = list(ids), 0
        for _ in range(steps):
            started = time.perf_counter()
            embeds = self.embedding.run(None, {"input_ids": np.array([current], np.int64), "image_features": features})[0]
            total += len(current)
            feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((1, total), np.int64), **past}
            outputs = self.decoder.run(None, feeds)
            names = [o.name for o in self.decoder.get_outputs()]
            result = dict(zip(names, outputs))
            past = {name: result[name.replace("past_key_values", "present")] for name in self.past_names}
            logits = result["logits"][0, -1].astype(np.float64)
            token = int(logits.argmax())
            times.append(time.perf_counter() - started)
            tokens.append(token)
            logits_all.append(logits)
            current = [token]
        return tokens, np.stack(logits_all), times


def compare(reference_tokens, reference_logits, tokens, logits):
    identical = 0
    for a, b in zip(reference_tokens, tokens):
        if a != b:
            break
        identical += 1
    steps = max(identical, 1) if identical < len(tokens) else identical  # logits comparable up to the first divergence (inclusive)
    return {"identical_leading_tokens": identical, "of": len(reference_tokens),
            "max_abs_logit": float(np.abs(np.asarray(logits[:steps]) - np.asarray(reference_logits[:steps])).max())}


def main(checkpoint: str, graphs: str, out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = transformers.AutoProcessor.from_pretrained(checkpoint)
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tokenizer = processor.tokenizer
    size = processor.image_processor.size["height"], processor.image_processor.size["width"]
    cards = test_cards(size, out_dir)
    cases = []
    ids = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    with torch.no_grad():
        generated = model.generate(torch.tensor([ids]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                   output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    cases.append({"name": "chat", "input_ids": ids, "pixel_values": None,
                  "reference": {"causal": {"tokens": generated.sequences[0, len(ids):].tolist(),
                                           "logits": torch.stack(generated.logits)[:, 0].double().tolist()}}})
    for card in cards:
        text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_PROMPT}]}],
                                             add_generation_prompt=True, tokenize=False)
        with Image.open(card) as image:
            inputs = processor(text=text, images=image.convert("RGB"), return_tensors="pt", add_special_tokens=False)
        case = {"name": card.stem, "input_ids": inputs["input_ids"][0].tolist(),
                "pixel_values": inputs["pixel_values"].numpy().astype(np.float32).reshape(-1).tolist(),
                "pixel_shape": list(inputs["pixel_values"].shape), "reference": {}}
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=inputs["pixel_values"])
            features = features.pooler_output if hasattr(features, "pooler_output") else features
            case["reference_features"] = features.reshape(-1).double().tolist()
            for attention in ("causal", "bidirectional"):
                arguments = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "pixel_values": inputs["pixel_values"]}
                if attention == "bidirectional":
                    arguments["token_type_ids"] = inputs["token_type_ids"]
                generated = model.generate(**arguments, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, output_logits=True,
                                           return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
                case["reference"][attention] = {"tokens": generated.sequences[0, inputs["input_ids"].shape[1]:].tolist(),
                                                "logits": torch.stack(generated.logits)[:, 0].double().tolist()}
        cases.append(case)
    (out_dir / "cases.json").write_text(json.dumps(cases))

    onnx = OnnxGemma(Path(graphs))
    results = {"onnxruntime": ort.__version__, "cases": {}}
    for case in cases:
        pixels = np.array(case["pixel_values"], np.float32).reshape(case["pixel_shape"]) if case["pixel_values"] else None
        tokens, logits, times = onnx.greedy(case["input_ids"], pixels, STEPS)
        row = {"tokens": tokens, "prompt_tokens": len(case["input_ids"]),
               "prefill_s": times[0], "per_token_s": float(np.median(times[1:]))}
        for attention, reference in case["reference"].items():
            row[f"vs_pytorch_{attention}"] = compare(reference["tokens"], reference["logits"], tokens, logits)
        if pixels is not None:
            got = onnx.features(pixels).reshape(-1).astype(np.float64)
            want = np.array(case["reference_features"])
            row["vision_max_abs"] = float(np.abs(got - want).max())
            row["vision_cosine"] = float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))
        results["cases"][case["name"]] = row
    (out_dir / "python_results.json").write_text(json.dumps(results, indent=1))
    for name, row in results["cases"].items():
        print(name, {k: v for k, v in row.items() if k != "tokens"})


if __name__ == "__main__":
    main(*sys.argv[1:])
