#!/usr/bin/env python
"""Evidence: how the on-device runtimes attend inside Gemma 3's image block (issue 24, item 5).

Gemma 3 in transformers attends bidirectionally among an image's soft tokens (the processor's
`token_type_ids`); our .litertlm decoder and onnxruntime-genai's builder decoder take a causal mask.
LiteRT-LM has executor metadata for this (`ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL`). On the tiny
fixture's build (float graphs of bundle.export_*, the shipped int8 bundle, the onnx target) this
runs 2 prompts x 8 images (the parity test cards and 6 seeded noise images, 56 x 56) greedily for 24
tokens through:
  - transformers, causal (no token_type_ids) and bidirectional (its default with token_type_ids);
  - the LiteRT-LM runtime (litert_lm, CPU) on the bundle as shipped, and repacked with an
    ExecutorMetadata section that declares the mask type (it needs the KV caches listed as state
    buffers, or the engine refuses: "No state buffers found for the current signature");
  - our exported prefill/decode graph driven by hand (the LiteRT interpreter) with a mask we build:
    transformers' image block, and the block extended to the <end_of_image> token;
  - the onnx target's graphs in onnxruntime (the builder's decoder has only a 2-D attention_mask).
and prints/saves, for each, how many answers equal each reference and how many leading tokens agree.

    PYTHONPATH=src .venv/bin/python bench/bench_image_attention.py --store /tmp/bidi-store
    (the store holds a build of manifests/tiny-medgemma-litertlm.yaml at the lock's keys:
     MODELFORGE_STORE=/tmp/bidi-store modelforge build manifests/tiny-medgemma-litertlm.yaml)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "fixtures" / "tiny-medgemma"
PROMPTS = ["What are the symptoms of pneumonia?", "Describe the chest X-ray findings."]
STEPS = 24
STOP = ["<eos>", "<end_of_turn>"]


class Store:
    """The files of the tiny build's steps, found through the lock's keys."""

    def __init__(self, store: Path, lock: Path):
        import yaml

        self.store, self.steps = store, yaml.safe_load(lock.read_text())["steps"]

    def output(self, step: str, name: str) -> Path:
        key = self.steps[step]["key"]
        record = json.loads((self.store / "steps" / key[:2] / f"{key}.json").read_text())
        digest = record["outputs"][name]["sha256"]
        return self.store / "objects" / digest[:2] / digest

    def directory(self, step: str, work: Path, copy: bool = False) -> Path:
        """The step's outputs under `work`: links, or copies where a runtime resolves links and then
        refuses external data outside the model's directory (onnxruntime)."""
        key = self.steps[step]["key"]
        record = json.loads((self.store / "steps" / key[:2] / f"{key}.json").read_text())
        directory = work / step
        directory.mkdir(exist_ok=True)
        for name in record["outputs"]:
            target = directory / name
            if not target.exists():
                if copy:
                    shutil.copyfile(self.output(step, name), target)
                else:
                    target.symlink_to(self.output(step, name))
        return directory


def images(work: Path) -> list[Path]:
    from PIL import Image

    from modelforge.steps.parity_phases import test_cards

    paths = test_cards((56, 56), work)
    generator = np.random.default_rng(0)
    for index in range(6):
        path = work / f"noise-{index}.png"
        Image.fromarray(generator.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def executor_metadata(path: Path, cache_length: int, layers: int) -> Path:
    """The ExecutorMetadata litert-torch writes (core/litert_lm_builder.py, metadata_builder.py) for
    a decoder without a ring buffer, plus the global mask type."""
    from litert_lm_builder.runtime.proto import executor_metadata_pb2 as proto

    metadata = proto.ExecutorMetadata()
    llm = metadata.llm_executor_metadata
    for layer in range(layers):
        for kind, axis, buffer_type in (("k", 2, proto.StateBuffer.TYPE_GLOBAL_KEY_CACHE), ("v", 3, proto.StateBuffer.TYPE_GLOBAL_VALUE_CACHE)):
            buffer = llm.state_buffers.add()
            name = f"kv_cache_{kind}_{layer}"
            buffer.prefill_input_name = buffer.prefill_output_name = buffer.decode_input_name = buffer.decode_output_name = name
            buffer.type, buffer.sequence_axis, buffer.maximum_sequence_length = buffer_type, axis, cache_length
    llm.max_history_size = cache_length
    llm.attention_mask_settings.attention_mask_type = proto.ATTENTION_MASK_TYPE_VISION_BIDIRECTIONAL
    path.write_bytes(metadata.SerializeToString(deterministic=True))
    return path


def repack(shipped: Path, work: Path, name: str, graphs: dict[str, Path] | None, executor: Path | None) -> Path:
    """The shipped .litertlm unpacked, its TFLite sections optionally replaced (float graphs), an
    ExecutorMetadata section optionally added, packed again."""
    import tomllib

    import litert_lm_builder

    unpacked = work / f"unpacked-{name}"
    shutil.rmtree(unpacked, ignore_errors=True)
    toml_path = Path(litert_lm_builder.unpack(str(shipped), str(unpacked)))
    toml = toml_path.read_text()
    for section in tomllib.loads(toml)["section"]:
        if graphs and section["section_type"] == "TFLiteModel":
            toml = toml.replace(f'data_path = "{section["data_path"]}"', f'data_path = "{graphs[section["model_type"]]}"')
    if executor is not None:
        toml += f'\n[[section]]\nsection_type = "ExecutorMetadata"\ndata_path = "{executor}"\n'
    toml_path.write_text(toml)
    return Path(litert_lm_builder.pack(str(toml_path), str(work / f"{name}.litertlm")))


def inputs_for(processor, prompt: str, card: Path, tensors: str = "pt"):
    from PIL import Image

    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
                                         add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        return processor(text=text, images=image.convert("RGB"), return_tensors=tensors, add_special_tokens=False)


def graph_answers(models: Path, processor, card: Path, prompt: str, block_end: int) -> list[int]:
    """Our exported prefill/decode graph in the LiteRT interpreter, fed the runtime's inputs (the
    embedder's rows, the vision graphs' rows on [0, 1] pixels), prefilling all but the last prompt
    token as LiteRT-LM does, with an image block that reaches `block_end` tokens past its last soft
    token (None: causal)."""
    from modelforge.steps.image_input import runtime_pixels
    from modelforge.steps.parity_phases import MASKED, _runner

    def runner(file: str):
        interpreter, signatures = _runner(models / file)
        return interpreter.get_signature_runner(next(iter(signatures)))

    embed, encode, adapt = runner("embedder.tflite"), runner("vision_encoder.tflite"), runner("vision_adapter.tflite")
    interpreter, signatures = _runner(models / "model.tflite")
    decode = interpreter.get_signature_runner("decode")
    details = decode.get_input_details()
    caches = sorted(name for name in details if name.startswith("kv_cache"))
    cache_length, hidden = int(details["mask"]["shape"][-1]), int(details["embeddings"]["shape"][-1])
    inputs = inputs_for(processor, prompt, card, "np")
    ids = inputs["input_ids"][0].tolist()
    block = [index for index, kind in enumerate(inputs["token_type_ids"][0]) if kind == 1]
    soft = encode(images=runtime_pixels(str(card)))
    vision = adapt(soft_tokens=soft[next(iter(soft))])
    vision = vision[next(iter(vision))].reshape(-1, hidden)
    rows = [vision[block.index(index)][None, None] if index in block else embed(token_ids=np.array([[token]], np.int32))["embeddings"]
            for index, token in enumerate(ids)]
    length = len(ids) - 1
    prefill_length = min(int(name.split("_")[1]) for name in signatures if name.startswith("prefill_") and int(name.split("_")[1]) >= length)
    embeddings = np.zeros((1, prefill_length, hidden), np.float32)
    embeddings[0, :length] = np.concatenate(rows[:length], axis=1)[0]
    mask = np.full((1, 1, prefill_length, cache_length), MASKED, np.float32)
    for row in range(length):
        seen = max(block) + block_end if block_end is not None and row in block else row
        mask[0, 0, row, : seen + 1] = 0.0
    cache = {name: np.zeros(details[name]["shape"], details[name]["dtype"]) for name in caches}
    outputs = interpreter.get_signature_runner(f"prefill_{prefill_length}")(
        embeddings=embeddings, input_pos=np.arange(prefill_length, dtype=np.int32), mask=mask, **cache)
    cache = {name: outputs[name] for name in caches}
    stop = {processor.tokenizer.convert_tokens_to_ids(token) for token in STOP}
    row, position, answer = rows[-1], length, []
    for _ in range(STEPS):
        step_mask = np.full((1, 1, 1, cache_length), MASKED, np.float32)
        step_mask[0, 0, 0, : position + 1] = 0.0
        outputs = decode(embeddings=row, input_pos=np.array([position], np.int32), mask=step_mask, **cache)
        cache = {name: outputs[name] for name in caches}
        token = int(outputs["logits"].reshape(-1).argmax())
        if token in stop:
            break
        answer.append(token)
        row, position = embed(token_ids=np.array([[token]], np.int32))["embeddings"], position + 1
    return answer


def onnx_answers(models: Path, processor, card: Path, prompt: str) -> list[int]:
    from modelforge.steps.onnx.worker import OnnxGemma

    inputs = inputs_for(processor, prompt, card, "np")
    runner = OnnxGemma(models)
    features = runner.features(inputs["pixel_values"]).reshape(-1, runner.hidden)
    runner.start()
    stop = {processor.tokenizer.convert_tokens_to_ids(token) for token in STOP}
    answer, logits = [], runner.step(inputs["input_ids"][0].tolist(), features)
    for _ in range(STEPS):
        token = int(logits.argmax())
        if token in stop:
            break
        answer.append(token)
        logits = runner.step([token])
    return answer


def runtime_answers(bundle: Path, prompt: str, cards: list[Path]) -> list[str | None]:
    """parity_phases.runtime_image_answers, one engine per bundle and prompt, None where the runtime
    fails (litert_lm 0.18.1's streaming detokenizer raises "Stable text shrunk compared to
    released" on some of the int8 bundle's gibberish)."""
    import litert_lm

    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU(thread_count=1), vision_backend=litert_lm.Backend.CPU(),
                              max_num_images=1, cache_dir=":nocache")
    replies = []
    try:
        for card in cards:
            conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=STEPS)
            try:
                replies.append(str(conversation.send_message(
                    {"role": "user", "content": [{"type": "image", "path": str(card.resolve())}, {"type": "text", "text": prompt}]})))
            except RuntimeError:
                replies.append(None)
            conversation.close()
    finally:
        engine.close()
    return replies


def masked_run(model, processor, prompt: str, card: Path, block_end: int | None, forced: list[int] | None = None):
    """transformers with the attention masks built here (the same rule graph_answers uses: an image
    soft token sees up to `block_end` tokens past the block, None: causal; the sliding layers also
    keep the window). Free-running greedy (forced None): the answer's tokens; teacher-forced along
    `forced`: the next-token log-probabilities at each of its positions."""
    import torch

    inputs = inputs_for(processor, prompt, card)
    ids, pixels = inputs["input_ids"], inputs["pixel_values"]
    block = (inputs["token_type_ids"][0] == 1).nonzero().flatten().tolist()
    window = model.config.text_config.sliding_window

    def masks(length: int) -> dict:
        query, key = torch.arange(length)[:, None], torch.arange(length)[None, :]
        seen = query.clone().expand(length, length).clone()
        if block_end is not None:
            seen[block] = max(block) + block_end
        full = key <= seen
        return {"full_attention": full[None, None], "sliding_attention": (full & (query - key < window))[None, None]}

    stop = {processor.tokenizer.convert_tokens_to_ids(token) for token in STOP}
    with torch.no_grad():
        if forced is not None:
            sequence = torch.cat([ids, torch.tensor([forced[:-1]], dtype=ids.dtype)], dim=1) if len(forced) > 1 else ids
            logits = model(input_ids=sequence, pixel_values=pixels, attention_mask=masks(sequence.shape[1]), use_cache=False).logits[0]
            return torch.log_softmax(logits[ids.shape[1] - 1 :].double(), dim=-1).numpy()
        answer = []
        for _ in range(STEPS):
            logits = model(input_ids=ids, pixel_values=pixels, attention_mask=masks(ids.shape[1]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            if token in stop:
                break
            answer.append(token)
            ids = torch.cat([ids, torch.tensor([[token]], dtype=ids.dtype)], dim=1)
        return answer


def trained_figures(checkpoint: Path, cards: list[Path]) -> dict:
    """On the trained multimodal fixture (trained Gemma 3 270M decoder, random vision): how far
    causal attention and LiteRT-LM's block-to-<end_of_image> are from transformers' default, by
    greedy answers and teacher-forced along the default's answers (top-1 agreement, mean KL)."""
    import torch
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint)
    model = Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    figures = {name: {"identical_answers": 0, "leading_identical_tokens": 0, "positions": 0, "top1": 0, "kl": 0.0}
               for name in ("causal", "image block to <end_of_image>")}
    answers = 0
    for prompt in PROMPTS:
        for card in cards:
            reference = masked_run(model, processor, prompt, card, 0)
            expected = masked_run(model, processor, prompt, card, 0, forced=reference) if reference else None
            answers += 1
            for name, block_end in (("causal", None), ("image block to <end_of_image>", 1)):
                got = masked_run(model, processor, prompt, card, block_end)
                row = figures[name]
                row["identical_answers"] += got == reference
                row["leading_identical_tokens"] += next((index for index, (a, b) in enumerate(zip(got, reference)) if a != b), min(len(got), len(reference)))
                if expected is not None:
                    observed = masked_run(model, processor, prompt, card, block_end, forced=reference)[: len(reference)]
                    wanted = expected[: len(reference)]
                    row["positions"] += len(reference)
                    row["top1"] += int((observed.argmax(-1) == wanted.argmax(-1)).sum())
                    row["kl"] += float((np.exp(wanted) * (wanted - observed)).sum())
    for row in figures.values():
        row["top1_agreement"] = round(row.pop("top1") / max(row["positions"], 1), 4)
        row["mean_kl"] = float(f"{row.pop('kl') / max(row['positions'], 1):.3g}")
    return {"answers": answers, "against transformers' default": figures}


def compare(answers: dict, references: dict, tokenizer) -> dict:
    from modelforge.steps.parity_phases import _leading_identical

    figures = {}
    for kind, expected in references.items():
        leading, exact = [], 0
        for got, want in zip(answers, expected):
            if got is None:
                leading.append(None)
                continue
            text = got if isinstance(got, str) else tokenizer.decode(got)
            leading.append(_leading_identical(want, text, tokenizer))
            exact += text == tokenizer.decode(want)
        figures[kind] = {"identical_answers": exact, "leading_identical_tokens": sum(filter(None, leading)),
                       "runtime_failures": leading.count(None), "per_answer": leading}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--lock", type=Path, default=ROOT / "lock" / "tiny-medgemma-litertlm.lock")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "image_attention")
    parser.add_argument("--quick", action="store_true", help="one prompt, two images, the float runs only (tests/test_image_attention.py)")
    parser.add_argument("--trained", type=Path, default=None,
                        help="also this checkpoint in transformers: the trained multimodal fixture, .cache/fixtures/gemma3-270m-multimodal "
                             "(modelforge.testing.trained_gemma3.multimodal_checkpoint() builds it)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "image_attention.json")
    arguments = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    from modelforge.steps.parity_phases import reference_image_answers

    work = arguments.work
    work.mkdir(parents=True, exist_ok=True)
    store = Store(arguments.store, arguments.lock)
    prompts = PROMPTS[:1] if arguments.quick else PROMPTS
    cards = images(work)
    if arguments.quick:  # a card where the runtime's flag misses transformers, a noise image where the two references differ
        cards = [cards[0], cards[4]]
    processor = AutoProcessor.from_pretrained(TINY)
    model = Gemma3ForConditionalGeneration.from_pretrained(TINY, dtype=torch.float32).eval()
    references = {"causal": [], "bidirectional": []}
    for prompt in prompts:
        answers = reference_image_answers(model, processor, prompt, STEPS, STOP, cards)
        for kind in references:
            references[kind] += answers[kind]
    del model
    text, vision = store.directory("bundle.export_text", work), store.directory("bundle.export_vision", work)
    floats = work / "float"
    floats.mkdir(exist_ok=True)
    for directory in (text, vision):
        for item in directory.iterdir():
            if item.suffix == ".tflite" and not (floats / item.name).exists():
                (floats / item.name).symlink_to(item)
    graphs = {"prefill_decode": floats / "model.tflite", "embedder": floats / "embedder.tflite",
              "vision_encoder": floats / "vision_encoder.tflite", "vision_adapter": floats / "vision_adapter.tflite"}
    shipped = store.output("bundle.package", "tiny-medgemma.litertlm")
    config = json.loads((TINY / "config.json").read_text())["text_config"]
    import yaml

    cache_length = yaml.safe_load((ROOT / "manifests" / "tiny-medgemma-litertlm.yaml").read_text())["targets"]["bundle"]["cache_length"]
    executor = executor_metadata(work / "executor_metadata.pb", cache_length, config["num_hidden_layers"])
    answers = {}
    runs = (("float", graphs, None), ("float+vision_bidirectional", graphs, executor),
            ("int8 (shipped)", None, None), ("int8+vision_bidirectional", None, executor))
    for name, replaced, metadata in runs[:2] if arguments.quick else runs:
        bundle = repack(shipped, work, name.split(" ")[0].replace("+", "-"), replaced, metadata)
        answers[f"litert_lm {name}"] = [reply for prompt in prompts for reply in runtime_answers(bundle, prompt, cards)]
    for name, block_end in (("graph, causal mask", None), ("graph, transformers' image block", 0), ("graph, image block to <end_of_image>", 1)):
        answers[f"float {name}"] = [graph_answers(floats, processor, card, prompt, block_end) for prompt in prompts for card in cards]
    onnx = store.directory("onnx.export_text", work, copy=True)
    for item in store.directory("onnx.export_vision", work, copy=True).iterdir():
        if not (onnx / item.name).exists():
            shutil.copyfile(item, onnx / item.name)
    answers["onnxruntime float (onnx target)"] = [onnx_answers(onnx, processor, card, prompt) for prompt in prompts for card in cards]
    same = sum(causal == both for causal, both in zip(references["causal"], references["bidirectional"]))
    results = {"answers": len(references["causal"]), "tokens_per_answer": STEPS,
               "references_identical_answers": same,
               "references_leading_identical_tokens": compare(references["causal"], {"bidirectional": references["bidirectional"]},
                                                              processor.tokenizer)["bidirectional"]["leading_identical_tokens"],
               "runs": {name: compare(got, references, processor.tokenizer) for name, got in answers.items()}}
    runtime_float = answers["litert_lm float+vision_bidirectional"]
    results["litert_lm float+vision_bidirectional against the graph"] = {
        name: compare(runtime_float, {"graph": answers[f"float {name}"]}, processor.tokenizer)["graph"]
        for name in ("graph, transformers' image block", "graph, image block to <end_of_image>")}
    if arguments.trained:
        results["trained multimodal fixture (transformers)"] = trained_figures(arguments.trained, cards)
    arguments.results.parent.mkdir(parents=True, exist_ok=True)
    arguments.results.write_text(json.dumps(results, indent=1) + "\n")
    total = len(references["causal"]) * STEPS
    print(f"transformers causal vs bidirectional: {same}/{len(references['causal'])} answers identical")
    for name, figures in results["runs"].items():
        print(f"{name:45s} " + "  ".join(f"vs {kind}: {value['identical_answers']}/{len(references[kind])} answers, "
                                         f"{value['leading_identical_tokens']}/{total} tokens" for kind, value in figures.items()))
    for name, value in results["litert_lm float+vision_bidirectional against the graph"].items():
        print(f"litert_lm float+vision_bidirectional vs {name}: {value['identical_answers']} answers, {value['leading_identical_tokens']}/{total} tokens")
    if arguments.trained:
        trained = results["trained multimodal fixture (transformers)"]
        for name, row in trained["against transformers' default"].items():
            print(f"trained fixture, {name} vs transformers' default: {row['identical_answers']}/{trained['answers']} answers, "
                  f"{row['leading_identical_tokens']} leading tokens; teacher-forced top-1 {row['top1_agreement']}, "
                  f"mean KL {row['mean_kl']} over {row['positions']} positions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
