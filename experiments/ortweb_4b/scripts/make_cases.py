"""Writes cases.json for the 4B probe: a text prompt and an image prompt (a fixed synthetic
896x896 picture through the checkpoint's own Gemma3ImageProcessor), their token ids, and the
reference answer of onnxruntime (Python, CPU) on the same graphs: greedy tokens and, per step, the
top-20 logits. The browser's answer is compared with it (same graphs, other runtime), not with
PyTorch: at 4B a PyTorch reference needs ~17 GiB and the onnx target's parity step already
compares these graphs with PyTorch.

usage: python make_cases.py CHECKPOINT PACKAGE_DIR OUT_JSON [STEPS]"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from transformers import AutoConfig, AutoTokenizer, Gemma3ImageProcessor


def picture() -> Image.Image:
    y, x = np.mgrid[0:640, 0:480]
    rgb = np.stack([(x * 255 // 479), (y * 255 // 639), ((x + y) % 256)], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def main(checkpoint: str, package: str, out: str, steps: str = "4") -> None:
    checkpoint, package, steps = Path(checkpoint), Path(package), int(steps)
    config = json.loads((checkpoint / "config.json").read_text())
    text = AutoConfig.from_pretrained(checkpoint).text_config.to_dict()  # with the class defaults
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    turn = lambda body: [2, 105, *ids("user\n"), *body, 106, *ids("\n"), 105, *ids("model\n")]  # noqa: E731
    image_block = [*ids("\n\n"), config["boi_token_index"], *[config["image_token_index"]] * config["mm_tokens_per_image"], config["eoi_token_index"], *ids("\n\n")]
    pixels = Gemma3ImageProcessor.from_pretrained(checkpoint)(picture(), return_tensors="np")["pixel_values"].astype(np.float32)
    long_question = " ".join(["Describe the chest X-ray findings in detail."] * 40)  # ~300 tokens: a long prefill
    cases = [
        {"name": "chat", "input_ids": turn(ids("What are the signs of pneumonia on a chest X-ray?"))},
        {"name": "long", "input_ids": turn(ids(long_question))},
        {"name": "image", "input_ids": turn([*image_block, *ids("Describe this image.")]), "pixel_values": pixels.ravel().tolist(), "pixel_shape": list(pixels.shape)},
    ]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    started = time.perf_counter()
    vision = ort.InferenceSession(str(package / "vision.onnx"), options, providers=["CPUExecutionProvider"])
    embedding = ort.InferenceSession(str(package / "embedding.onnx"), options, providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(package / "model.onnx"), options, providers=["CPUExecutionProvider"])
    print(f"sessions {time.perf_counter() - started:.1f}s", flush=True)
    past_names = [i.name for i in decoder.get_inputs() if i.name.startswith("past_key_values")]
    kv_heads, head_dim = text["num_key_value_heads"], text["head_dim"]
    for case in cases:
        hidden = text["hidden_size"]
        features = np.zeros((1, hidden), np.float32)
        if "pixel_values" in case:
            started = time.perf_counter()
            features = vision.run(None, {"pixel_values": pixels})[0]
            case["vision_s"] = time.perf_counter() - started
            case["reference_features_head"] = features.ravel()[:64].tolist()
            case["reference_features_norm"] = float(np.linalg.norm(features))
            features = features.reshape(-1, features.shape[-1])
        past = {n: np.zeros((1, kv_heads, 0, head_dim), np.float32) for n in past_names}
        current, total, tokens, top = case["input_ids"], 0, [], []
        for _ in range(steps):
            started = time.perf_counter()
            embeds = embedding.run(None, {"input_ids": np.array([current], np.int64), "image_features": features})[0]
            total += len(current)
            outputs = decoder.run(None, {"inputs_embeds": embeds, "attention_mask": np.ones((1, total), np.int64), **past})
            names = [o.name for o in decoder.get_outputs()]
            result = dict(zip(names, outputs))
            past = {n: result[n.replace("past_key_values", "present")] for n in past_names}
            logits = result["logits"][0, -1]
            order = np.argsort(-logits)[:20]
            tokens.append(int(order[0]))
            top.append({"ids": order.tolist(), "logits": logits[order].tolist()})
            current = [int(order[0])]
            print(case["name"], "step", len(tokens), f"{time.perf_counter() - started:.1f}s", tokens[-1], flush=True)
        case["reference"] = {"tokens": tokens, "top": top}
    Path(out).write_text(json.dumps({"hidden": text["hidden_size"], "kv_heads": kv_heads, "head_dim": head_dim, "cases": cases}))


if __name__ == "__main__":
    main(*sys.argv[1:])
