"""LiteRT.js route of issue #12, measured: the tiny MedGemma graphs modelforge exports, run in headless
Chromium by @litertjs/core (WebGPU on SwiftShader, and the wasm CPU backend), against the Python
ai_edge_litert interpreter (same inputs) and PyTorch's greedy tokens (float model).

Stages (each its own process, so torch and Chromium never share one memory cgroup):
    driver.py prepare    graphs from the store, fixed inputs, interpreter outputs, PyTorch and
                         interpreter greedy tokens, the site directory (.exp/site)
    driver.py browser    serves the site with modelforge's own headers (COOP/COEP, CSP) and drives
                         Chromium through page/harness.js: graphs and generation, both backends
    driver.py tokenizers the JS SentencePiece candidates against Python's ids
    driver.py report     results.json from the three

Run from the worktree root, under the memory cap:
    /work/wt/capped litertjs 2500M env PYTHONPATH=$PWD/src /work/main/.venv/bin/python experiments/litertjs/driver.py prepare
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
EXP = ROOT / ".exp"
STORE = EXP / "store"
SITE = EXP / "site"
WORK = EXP / "litertjs"
CHECKPOINT = ROOT / "fixtures" / "tiny-medgemma"
CHROMIUM = "/usr/bin/chromium"
GRAPHS = ["embedder", "model", "vision_encoder", "vision_adapter"]
TEXT_PROMPT = "What are the symptoms of pneumonia?"
IMAGE_PROMPT = "Describe the chest X-ray findings."
STEPS = 24
MASKED = float(np.finfo(np.float32).min / 2)


def graph_paths(variant: str = "float") -> dict[str, Path]:
    """The graphs found by their step records: "float", those of bundle.export_text / export_vision;
    "int8", those of bundle.quantize.* (the .litertlm's: int8 dynamic text, int8 weight-only vision)."""
    found = {}
    kind = "litert_export" if variant == "float" else "litert_quantize"
    for record in STORE.glob("steps/*/*.json"):
        data = json.loads(record.read_text())
        names = {name.removesuffix(".tflite") for name in data["outputs"]}
        # The text graphs come with their embedder; web.export.bundle's plain model (tokens in) and the
        # web variants' quantizations of it are not ours.
        if data["kind"] != kind or not (names >= {"model", "embedder"} or names & {"vision_encoder", "vision_adapter"}):
            continue
        for name, output in data["outputs"].items():
            if name.removesuffix(".tflite") in GRAPHS:
                found[name.removesuffix(".tflite")] = STORE / "objects" / output["sha256"][:2] / output["sha256"]
    missing = [g for g in GRAPHS if g not in found]
    if missing:
        sys.exit(f"no {missing} in {STORE}: run modelforge build manifests/tiny-medgemma-litertlm.yaml --store {STORE} first")
    return found


# ---------------------------------------------------------------------------------------- prepare

def fixed_inputs(name: str, signature: str, details: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Deterministic inputs of each signature: realistic ranges (token ids, [0, 1] pixels, a causal
    mask for the signature's positions, a non-empty KV cache so that the cache is read)."""
    inputs = {}
    for input_name, detail in details.items():
        shape, dtype = tuple(int(d) for d in detail["shape"]), detail["dtype"]
        if input_name == "token_ids":
            inputs[input_name] = np.array([[17]], dtype=np.int32)
        elif input_name == "images":
            inputs[input_name] = rng.uniform(0, 1, shape).astype(np.float32)
        elif input_name == "input_pos":
            start = 40 if signature == "decode" else 0
            inputs[input_name] = np.arange(start, start + shape[0], dtype=np.int32)
        elif input_name == "mask":
            pass  # after input_pos
        else:
            inputs[input_name] = rng.normal(0, 1, shape).astype(dtype)
    if "mask" in details:
        shape = tuple(int(d) for d in details["mask"]["shape"])
        mask = np.full(shape, MASKED, dtype=np.float32)
        for row, position in enumerate(inputs["input_pos"]):
            mask[0, 0, row, : position + 1] = 0.0
        inputs["mask"] = mask
    return inputs


def interpreter_generate(graphs: dict[str, Path], ids: list[int], steps: int, soft: np.ndarray | None, image_token: int) -> list[int]:
    """modelforge's TfliteDecoder loop (parity_impl) with the image's soft tokens spliced into the
    prefill embeddings, as the page does: the interpreter's greedy tokens."""
    from ai_edge_litert.interpreter import Interpreter

    model = Interpreter(model_path=str(graphs["model"]))
    embedder = Interpreter(model_path=str(graphs["embedder"])).get_signature_runner("embedder")
    decode = model.get_signature_runner("decode")
    details = decode.get_input_details()
    cache_names = sorted(n for n in details if n.startswith("kv_cache"))
    cache = {n: np.zeros(details[n]["shape"], dtype=details[n]["dtype"]) for n in cache_names}
    cache_length = int(details["mask"]["shape"][-1])
    prefill_lengths = sorted(int(k.split("_")[1]) for k in model.get_signature_list() if k.startswith("prefill_"))

    def embed(tokens):
        return np.concatenate([embedder(token_ids=np.array([[t]], dtype=np.int32))["embeddings"] for t in tokens], axis=1)

    def inputs(embeddings, positions):
        mask = np.full((1, 1, len(positions), cache_length), MASKED, dtype=np.float32)
        for row, position in enumerate(positions):
            mask[0, 0, row, : position + 1] = 0.0
        return {"embeddings": embeddings, "input_pos": np.array(positions, dtype=np.int32), "mask": mask, **cache}

    prompt = ids[:-1]
    length = next(length for length in prefill_lengths if length >= len(prompt))
    padded = prompt + [0] * (length - len(prompt))
    embeddings = embed(padded)
    if soft is not None:
        slots = [index for index, token in enumerate(prompt) if token == image_token]
        embeddings[0, slots] = soft.reshape(-1, embeddings.shape[-1])[: len(slots)]
    outputs = model.get_signature_runner(f"prefill_{length}")(**inputs(embeddings, list(range(length))))
    cache = {n: outputs[n] for n in cache_names}
    token, position, tokens = ids[-1], len(ids) - 1, []
    for _ in range(steps):
        outputs = decode(**inputs(embed([token]), [position]))
        cache = {n: outputs[n] for n in cache_names}
        token = int(outputs["logits"].reshape(-1).argmax())
        tokens.append(token)
        position += 1
    return tokens


def pytorch_reference(card: Path) -> dict:
    """PyTorch's greedy tokens, float32: the text prompt through the chat template, and the image
    prompt through the processor (its input_ids and pixel_values), causal inside the image block as
    parity_impl.reference_image_answers' "causal" (what a TfliteDecoder-style loop computes), and
    bidirectional beside it (transformers' own, token_type_ids)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    processor = AutoProcessor.from_pretrained(CHECKPOINT)
    tokenizer = processor.tokenizer
    model = Gemma3ForConditionalGeneration.from_pretrained(CHECKPOINT, dtype=torch.float32).eval()
    text_ids = tokenizer.apply_chat_template([{"role": "user", "content": TEXT_PROMPT}], add_generation_prompt=True, tokenize=True)
    text_ids = list(text_ids["input_ids"] if hasattr(text_ids, "keys") else text_ids)
    with torch.no_grad():
        generated = model.generate(torch.tensor([text_ids]), max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)
    text_tokens = generated[0, len(text_ids):].tolist()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_PROMPT}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    with Image.open(card) as image:
        inputs = processor(text=text, images=image.convert("RGB"), return_tensors="pt", add_special_tokens=False)
    image_tokens = {}
    for attention in ("causal", "bidirectional"):
        arguments = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "pixel_values": inputs["pixel_values"]}
        if attention == "bidirectional":
            arguments["token_type_ids"] = inputs["token_type_ids"]
        with torch.no_grad():
            generated = model.generate(**arguments, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                                       pad_token_id=tokenizer.pad_token_id)
        image_tokens[attention] = generated[0, inputs["input_ids"].shape[1]:].tolist()
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"])
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        features = features[0] if isinstance(features, (list, tuple)) else features
    return {
        "text_prompt": TEXT_PROMPT, "image_prompt": IMAGE_PROMPT, "image_text": text,
        "text_ids": text_ids, "text_tokens": text_tokens,
        "image_ids": inputs["input_ids"][0].tolist(), "image_tokens": image_tokens,
        "image_token": int(model.config.image_token_id), "hidden": int(model.config.text_config.hidden_size),
        "image_features": features.reshape(-1).tolist(),
        "pixel_values_processor": inputs["pixel_values"].reshape(-1).tolist(),
    }


def prepare(variant: str) -> None:
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    from modelforge.steps.image_input import runtime_pixels
    from modelforge.steps.parity_impl import test_cards

    if variant != "float":
        return prepare_variant(variant)
    graphs = graph_paths()
    if SITE.exists():
        shutil.rmtree(SITE)
    WORK.mkdir(parents=True, exist_ok=True)
    for sub in ("graphs", "inputs", "cards", "runtime/wasm", "runtime/core", "runtime/wasm-utils"):
        (SITE / sub).mkdir(parents=True, exist_ok=True)
    modules = HERE / "node_modules" / "@litertjs"
    for wasm in (modules / "core" / "wasm").iterdir():
        shutil.copyfile(wasm, SITE / "runtime" / "wasm" / wasm.name)
    # Vendored as a bundle would: the one bare import rewritten to a relative path (no import map,
    # which the bundle's CSP would refuse as an inline script).
    core = (modules / "core" / "dist" / "index.js").read_text()
    (SITE / "runtime" / "core" / "index.js").write_text(core.replace('from "@litertjs/wasm-utils"', 'from "../wasm-utils/index.js"'))
    shutil.copyfile(modules / "wasm-utils" / "dist" / "index.js", SITE / "runtime" / "wasm-utils" / "index.js")
    for page in ("index.html", "harness.js"):
        shutil.copyfile(HERE / "page" / page, SITE / page)
    for name, path in graphs.items():
        shutil.copyfile(path, SITE / "graphs" / f"{name}.tflite")

    cards = test_cards((56, 56), SITE / "cards")
    with Image.open(cards[0]) as image:
        assert image.size == (56, 56)

    plan_graphs, expected = graph_checks("float", cards[0])
    np.savez(WORK / "interpreter_outputs.npz", **expected)

    reference = pytorch_reference(cards[0])
    reference.update(interpreter_references(graphs, reference, cards[0]))
    (WORK / "reference.json").write_text(json.dumps(reference))
    write_plan("plan.json", "graphs", plan_graphs, reference)
    print(json.dumps({
        "graphs": {n: str(p) for n, p in graphs.items()},
        "text_ids": len(reference["text_ids"]), "image_ids": len(reference["image_ids"]),
        "interpreter_text_identical_to_pytorch": reference["interpreter_text_tokens"] == reference["text_tokens"],
        "interpreter_image_identical_to_pytorch_causal": reference["interpreter_image_tokens"] == reference["image_tokens"]["causal"],
        "pytorch_image_causal_equals_bidirectional": reference["image_tokens"]["causal"] == reference["image_tokens"]["bidirectional"],
    }, indent=1))


def prepare_variant(variant: str) -> None:
    """The quantized graphs beside the float ones: graphs/<variant>/, plan-<variant>.json, their own
    interpreter outputs and greedy tokens (PyTorch's stay those of the float model)."""
    graphs = graph_paths(variant)
    (SITE / "graphs" / variant).mkdir(parents=True, exist_ok=True)
    for name, path in graphs.items():
        shutil.copyfile(path, SITE / "graphs" / variant / f"{name}.tflite")
    card = SITE / "cards" / "test-card-0.png"
    plan_graphs, expected = graph_checks(variant, card)
    np.savez(WORK / f"interpreter_outputs-{variant}.npz", **expected)
    reference = json.loads((WORK / "reference.json").read_text())
    variant_reference = interpreter_references(graphs, reference, card)
    (WORK / f"reference-{variant}.json").write_text(json.dumps(variant_reference))
    write_plan(f"plan-{variant}.json", f"graphs/{variant}", plan_graphs, reference)
    print(json.dumps({"graphs": {n: str(p) for n, p in graphs.items()},
                      "interpreter_text_vs_pytorch": [a == b for a, b in zip(variant_reference["interpreter_text_tokens"], reference["text_tokens"])],
                      "interpreter_image_vs_pytorch": [a == b for a, b in zip(variant_reference["interpreter_image_tokens"], reference["image_tokens"]["causal"])]}))


def interpreter_references(graphs: dict[str, Path], reference: dict, card: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from modelforge.steps.image_input import runtime_pixels

    encoder = Interpreter(model_path=str(graphs["vision_encoder"]))
    encoder = encoder.get_signature_runner(next(iter(encoder.get_signature_list())))
    adapter = Interpreter(model_path=str(graphs["vision_adapter"])).get_signature_runner("vision_adapter")
    soft = adapter(soft_tokens=encoder(images=runtime_pixels(str(card)))["features"])["mm_embedding"]
    return {
        "interpreter_text_tokens": interpreter_generate(graphs, reference["text_ids"], STEPS, None, reference["image_token"]),
        "interpreter_image_tokens": interpreter_generate(graphs, reference["image_ids"], STEPS, soft, reference["image_token"]),
        "interpreter_soft_tokens": soft.reshape(-1).tolist(),
        "runtime_pixels": runtime_pixels(str(card)).reshape(-1).tolist(),
    }


def write_plan(file: str, graph_dir: str, plan_graphs: list, reference: dict) -> None:
    from ai_edge_litert.interpreter import Interpreter

    decode = Interpreter(model_path=str(SITE / graph_dir / "model.tflite")).get_signature_runner("decode")
    details = decode.get_input_details()
    plan = {
        "graphs": plan_graphs,
        "generation": {
            "cache_length": int(details["mask"]["shape"][-1]),
            "prefill_lengths": [32, 128],
            "cache_names": sorted(n for n in details if n.startswith("kv_cache")),
            "hidden": reference["hidden"],
            "text": {"ids": reference["text_ids"], "steps": STEPS},
            "image": {"ids": reference["image_ids"], "steps": STEPS, "image_token": reference["image_token"],
                      "card": "cards/test-card-0.png", "height": 56, "width": 56},
        },
    }
    (SITE / file).write_text(json.dumps(plan, indent=1))


def graph_checks(variant: str, card: Path) -> tuple[list, dict]:
    """Each signature of each graph on fixed inputs (written under inputs/<variant>/), and the
    interpreter's outputs on them."""
    from ai_edge_litert.interpreter import Interpreter

    from modelforge.steps.image_input import runtime_pixels

    graph_dir = "graphs" if variant == "float" else f"graphs/{variant}"
    (SITE / "inputs" / variant).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    plan_graphs, expected = [], {}
    for name in GRAPHS:
        interpreter = Interpreter(model_path=str(SITE / graph_dir / f"{name}.tflite"))
        checks = []
        for signature in interpreter.get_signature_list():
            runner = interpreter.get_signature_runner(signature)
            inputs = fixed_inputs(name, signature, runner.get_input_details(), rng)
            if name == "vision_encoder":
                inputs = {"images": runtime_pixels(str(card))}
            spec = {}
            for input_name, array in inputs.items():
                file = f"inputs/{variant}/{name}.{signature}.{input_name}.bin"
                (SITE / file).write_bytes(np.ascontiguousarray(array).tobytes())
                spec[input_name] = {"file": file, "dtype": str(array.dtype), "shape": list(array.shape)}
            outputs = runner(**inputs)
            for output_name, array in outputs.items():
                expected[f"{name}/{signature}/{output_name}"] = np.asarray(array)
            checks.append({"signature": signature, "inputs": spec})
        plan_graphs.append({"name": name, "file": f"{graph_dir}/{name}.tflite", "checks": checks})
    return plan_graphs, expected


# ---------------------------------------------------------------------------------------- browser

FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic", "--no-first-run", "--disable-default-apps", "--disable-extensions", "--enable-unsafe-webgpu"]


def browser(runs: list[str], timeout_s: float) -> None:
    """Each run: "MODE/BACKEND" with optional "?QUERY" for the page (plan=, precision=, embed=, jspi=0)."""
    from playwright.sync_api import sync_playwright

    from modelforge.web.serve import serve

    server = serve(SITE)
    results = json.loads((WORK / "browser.json").read_text()) if (WORK / "browser.json").exists() else {}
    try:
        with sync_playwright() as playwright:
            for run in runs:
                path, _, query = run.partition("?")
                mode, backend = path.split("/")
                browser_process = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
                page = browser_process.new_page()
                console, errors, requests, failed = [], [], [], []
                page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
                started = time.monotonic()
                page.goto(f"{server.url.rstrip('/')}/index.html?mode={mode}&backend={backend}" + (f"&{query}" if query else ""))
                try:
                    page.locator("body[data-state=done], body[data-state=error]").wait_for(timeout=timeout_s * 1000)
                    record = json.loads(page.inner_text("#result"))
                except Exception as error:  # a hang is a result too
                    record = {"error": f"no result in {timeout_s} s: {error}", "status": page.inner_text("#status")}
                record["wall_s"] = time.monotonic() - started
                record["console"] = console[-40:]
                record["page_errors"] = errors
                record["failed_requests"] = failed
                record["foreign_requests"] = [u for u in requests if not u.startswith(server.url.rstrip("/")) and not u.startswith(("data:", "blob:"))]
                results[run] = record
                (WORK / "browser.json").write_text(json.dumps(results))
                print(run, "error" if record.get("error") else "done", f"{record['wall_s']:.1f} s", flush=True)
                browser_process.close()
    finally:
        server.close()


# ------------------------------------------------------------------------------------- tokenizers

TOKENIZER_STRINGS = [
    "What are the symptoms of pneumonia?",
    "Summarise: patient has a fever and a cough.",
    "  leading spaces, trailing  ",
    "line one\nline two\n\n\ttabbed",
    "Dosage: 2.5 mg/kg q8h × 3 days — 100% (approx.)",
    "Café naïve résumé, Ärztin, 肺炎, пневмония",
    "<start_of_turn>user\nDescribe the chest X-ray findings.<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\n\n\n<start_of_image><end_of_image>\n\nWhat is shown?<end_of_turn>\n",
]


def tokenizers() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(CHECKPOINT)
    python_ids = [tokenizer.encode(s, add_special_tokens=False) for s in TOKENIZER_STRINGS]
    try:
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(CHECKPOINT / "tokenizer.model"))
        sentencepiece_ids = [processor.encode(s) for s in TOKENIZER_STRINGS]
    except ImportError:
        sentencepiece_ids = None
    strings_file = WORK / "tokenizer_strings.json"
    strings_file.write_text(json.dumps(TOKENIZER_STRINGS))
    conversations = [[{"role": "user", "content": TEXT_PROMPT}],
                     [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": IMAGE_PROMPT}]}],
                     [{"role": "system", "content": "You are a radiologist."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": TEXT_PROMPT}]]
    conversations_file = WORK / "conversations.json"
    conversations_file.write_text(json.dumps(conversations))
    python_templates = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    completed = subprocess.run(["node", str(HERE / "tokenizer_eval.mjs"), str(CHECKPOINT), str(strings_file), str(conversations_file)],
                               capture_output=True, text=True, cwd=HERE)
    if completed.returncode:
        sys.exit(completed.stderr)
    javascript = json.loads(completed.stdout)
    report = {"strings": TOKENIZER_STRINGS, "python_transformers_ids": python_ids, "python_sentencepiece_ids": sentencepiece_ids}
    jinja = javascript.pop("jinja")
    report["jinja_chat_template"] = jinja if isinstance(jinja, dict) else {
        "identical_to_transformers": [a == b for a, b in zip(jinja, python_templates)], "rendered": jinja, "python": python_templates}
    for name, result in javascript.items():
        if "error" in result:
            report[name] = {"error": result["error"]}
            continue
        report[name] = {
            "load_ms": result["load_ms"],
            "identical_to_transformers": [a == b for a, b in zip(result["ids"], python_ids)],
            "identical_to_sentencepiece": [a == b for a, b in zip(result["ids"], sentencepiece_ids)] if sentencepiece_ids else None,
            "ids": result["ids"],
            "round_trip": [d == s for d, s in zip(result["decoded"], TOKENIZER_STRINGS)],
        }
    (WORK / "tokenizers.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    for name in javascript:
        entry = report[name]
        print(name, entry.get("error") or (entry["identical_to_transformers"], entry["round_trip"]))
    print("jinja", report["jinja_chat_template"].get("error") or report["jinja_chat_template"]["identical_to_transformers"])


# ----------------------------------------------------------------------------------------- report

def decode_b64(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["base64"]), dtype=np.int32 if entry["dtype"] == "int32" else np.float32)


def report() -> None:
    from urllib.parse import parse_qs

    reference = json.loads((WORK / "reference.json").read_text())
    browser_results = json.loads((WORK / "browser.json").read_text())
    summary = {"files": {}, "graphs": {}, "generation": {}}
    for path in sorted((SITE / "runtime").rglob("*")) + sorted((SITE / "graphs").glob("*")):
        if path.is_file():
            summary["files"][str(path.relative_to(SITE))] = path.stat().st_size
    for key, record in browser_results.items():
        path, _, query = key.partition("?")
        mode, backend = path.split("/")
        plan = parse_qs(query).get("plan", ["plan.json"])[0]
        variant = plan.removeprefix("plan-").removesuffix(".json") if plan != "plan.json" else "float"
        expected = np.load(WORK / ("interpreter_outputs.npz" if variant == "float" else f"interpreter_outputs-{variant}.npz"))
        interpreter = reference if variant == "float" else json.loads((WORK / f"reference-{variant}.json").read_text())
        if mode == "graphs":
            out = summary["graphs"][key] = {"wasm_load_ms": record.get("wasm_load_ms"), "error": record.get("error"),
                                               "wasm_file": record.get("wasm_file"), "device": record.get("webgpu_device")}
            for name, graph in (record.get("graphs") or {}).items():
                entry = out[name] = {k: graph.get(k) for k in ("fetch_ms", "compile_ms", "fully_accelerated", "error")}
                for signature, check in (graph.get("checks") or {}).items():
                    if "error" in check:
                        entry[signature] = {"error": check["error"]}
                        continue
                    deltas = {}
                    for output_name, data in check["outputs"].items():
                        want = expected[f"{name}/{signature}/{output_name}"].reshape(-1)
                        got = decode_b64(data)
                        deltas[output_name] = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()) if got.size == want.size else f"size {got.size} != {want.size}"
                    entry[signature] = {"max_abs_delta": deltas, "run_ms": check["run_ms"]}
        else:
            generation = record.get("generation") or {}
            out = summary["generation"][key] = {"error": record.get("error"), "load": generation.get("load")}
            if generation:
                out["text_tokens"] = generation["text_tokens"]
                out["text_identical_to_pytorch"] = generation["text_tokens"] == reference["text_tokens"]
                out["text_identical_to_interpreter"] = generation["text_tokens"] == interpreter["interpreter_text_tokens"]
                out["text_agreement_with_pytorch"] = sum(a == b for a, b in zip(generation["text_tokens"], reference["text_tokens"])) / len(reference["text_tokens"])
                out["image_tokens"] = generation["image_tokens"]
                out["image_identical_to_pytorch_causal"] = generation["image_tokens"] == reference["image_tokens"]["causal"]
                out["image_identical_to_pytorch_bidirectional"] = generation["image_tokens"] == reference["image_tokens"]["bidirectional"]
                out["image_identical_to_interpreter"] = generation["image_tokens"] == interpreter["interpreter_image_tokens"]
                out["image_agreement_with_pytorch_causal"] = sum(a == b for a, b in zip(generation["image_tokens"], reference["image_tokens"]["causal"])) / len(reference["image_tokens"]["causal"])
                pixels = decode_b64({"dtype": "float32", "base64": generation["pixels_base64"]})
                out["pixels_max_abs_delta_vs_runtime_pixels"] = float(np.abs(pixels - np.array(reference["runtime_pixels"])).max())
                soft = decode_b64({"dtype": "float32", "base64": generation["soft_tokens_base64"]})
                out["soft_tokens_max_abs_delta_vs_interpreter"] = float(np.abs(soft - np.array(interpreter["interpreter_soft_tokens"])).max())
                features = np.array(reference["image_features"])
                rows = soft.reshape(-1, reference["hidden"])[: features.size // reference["hidden"]].reshape(-1)
                out["soft_tokens_cosine_vs_pytorch"] = float(rows @ features / (np.linalg.norm(rows) * np.linalg.norm(features)))
                for part in ("text", "image"):
                    timing = generation[f"{part}_timing"]
                    decode = timing["decode_ms"]
                    out[f"{part}_timing"] = {"total_ms": generation[f"{part}_ms"], "embed_ms_total": timing["embed_ms"],
                                             "prefill_ms": timing["prefill_ms"], "prefill_length": timing.get("prefill_length"),
                                             "decode_ms_median": float(np.median(decode)) if decode else None,
                                             "decode_ms_first": decode[0] if decode else None, "vision_ms": timing.get("vision_ms")}
        summary.setdefault("console", {})[key] = [line for line in record.get("console", []) if "[LiteRT]" in line or "WARNING" in line or "rror" in line.split(":", 1)[-1]][:12]
        summary.setdefault("failed_requests", {})[key] = record.get("failed_requests")
        summary.setdefault("foreign_requests", {})[key] = record.get("foreign_requests")
    summary["pytorch"] = {"text_tokens": reference["text_tokens"], "image_tokens": reference["image_tokens"],
                          "interpreter_text_tokens": reference["interpreter_text_tokens"],
                          "interpreter_image_tokens": reference["interpreter_image_tokens"],
                          "interpreter_text_identical_to_pytorch": reference["interpreter_text_tokens"] == reference["text_tokens"],
                          "interpreter_image_identical_to_pytorch_causal": reference["interpreter_image_tokens"] == reference["image_tokens"]["causal"]}
    (HERE / "results.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1)[:20000])


if __name__ == "__main__":
    stage = sys.argv[1]
    if stage == "prepare":
        prepare(sys.argv[2] if len(sys.argv) > 2 else "float")
    elif stage == "browser":
        modes = sys.argv[2].split(";") if len(sys.argv) > 2 else ["graphs/wasm", "graphs/webgpu", "generate/wasm", "generate/webgpu"]
        browser(modes, timeout_s=float(sys.argv[3]) if len(sys.argv) > 3 else 300)
    elif stage == "tokenizers":
        tokenizers()
    elif stage == "report":
        report()
    else:
        sys.exit(__doc__)
