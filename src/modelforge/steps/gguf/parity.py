"""Step `gguf_parity`: the built text GGUF run in llama.cpp (llama-cpp-python, logits for every
position) against the PyTorch checkpoint it came from, on the parity prompts in the chat template.
The shared parity_reference step (steps/reference/) holds PyTorch's greedy tokens and their logits
(measure() runs the reference phases itself, for the tests). Phase `gguf` evaluates the same ids
teacher-forced in llama.cpp (max |Δlogit|, top-1 agreement, mean KL through
parity_phases.LogitComparison), lets llama.cpp decode greedily on its own (how many of PyTorch's
tokens it repeats) and checks that llama.cpp's tokenizer (the GGUF's) gives the reference's prompt
ids. A float type is held to top-1 agreement 1.0 (then its free-running greedy tokens are PyTorch's)
and a max |Δlogit|; a K-quant to top-1 agreement and mean KL. The KV cache is F32: llama.cpp's
default F16 cache would add its own rounding to every figure; ggml's CPU GELU reads an F16 table,
which leaves about 0.02 of |Δlogit| on a correct F32 conversion of the tiny model. A conversion
without Gemma's +1 norm offset fails.

With an mmproj, the reference's test cards (the processor's size) go through llama.cpp's mtmd (its
own clip preprocessing, the mmproj's tower and projector) against PyTorch's image embeddings:
vision_cosine (worst card) and the image token count of each side. A card 1.5 times as wide (phase
`non_square_reference`) records how llama.cpp's resize (aspect kept, padded) differs from the
processor's (stretched): vision_cosine_non_square, recorded, not gated.

Imports only steps.base, steps.parity, steps.gguf.worker, errors and the stdlib at module level;
torch, transformers and llama_cpp load in the worker only."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.gguf.worker import MODULE
from modelforge.steps.parity import gate, run_phases, take_reference

KIND = "gguf_parity"
VERSION = 2  # 2: p99 KL and the perplexity ratio
TOOLS = ("llama-cpp-python", "numpy", "pillow", "sentencepiece", "torch", "transformers")
REPORT = "parity.json"  # recorded in the lock under `checks`
THREADS = 2


def measure(gguf: Path, checkpoint: Path, prompts: list[str], steps: int, *, work: Path, mmproj: Path | None = None,
            progress: Callable[[int, int, str], None] = lambda *_: None) -> tuple[dict, dict]:
    """(the parity report, the measurements) of `gguf` (and `mmproj`, its vision) against
    `checkpoint`, each phase in a worker."""
    work.mkdir(parents=True, exist_ok=True)
    request = {"action": "parity", "gguf": str(gguf), "checkpoint": str(checkpoint), "prompts": list(prompts), "steps": steps,
               "threads": THREADS, "scratch_dir": str(work), "mmproj": str(mmproj) if mmproj else None, "bundle": None}
    phases = ["text_reference", *(["image_reference", "non_square_reference"] if mmproj else []), "gguf"]
    return run_phases(request, phases, work, progress, MODULE)


def non_square_reference(request: dict) -> dict:
    """Phase `non_square_reference`, in the worker: PyTorch's image embeddings of a card 1.5 times as
    wide as the processor's square (the vision tower and projector only, through partial_load), so the
    gguf phase can compare llama.cpp's resize with the processor's."""
    import numpy as np
    from transformers import AutoProcessor

    from modelforge.steps.parity_phases import load_reference, references_dir, test_cards, vision_references

    checkpoint = Path(request["checkpoint"])
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=False)
    height, width = processor.image_processor.size["height"], processor.image_processor.size["width"]
    directory = Path(request["scratch_dir"]) / "non-square"
    directory.mkdir(exist_ok=True)
    card = test_cards((height, width * 3 // 2), directory)[0]
    model = load_reference(checkpoint, "vision", "AutoModelForImageTextToText")
    np.savez(references_dir(request) / "non_square.npz", *vision_references(model, processor, [card]))
    return {"handoff": {"non_square_card": str(card)}}


def mtmd_image_embeddings(llama, mmproj: str, card: Path, threads: int):
    """The card through llama.cpp's mtmd (its own clip preprocessing, then the mmproj's vision tower
    and projector): the embeddings of the image's tokens, [tokens, hidden]."""
    import ctypes

    import numpy as np
    from PIL import Image

    from llama_cpp import mtmd_cpp as mtmd

    params = mtmd.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.print_timings = False, threads, False
    context = mtmd.mtmd_init_from_file(mmproj.encode(), llama.model, params)
    if not context:
        raise RuntimeError(f"llama.cpp's mtmd could not load {mmproj}")
    try:
        with Image.open(card) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        height, width = pixels.shape[:2]
        bitmap = mtmd.mtmd_bitmap_init(width, height, (ctypes.c_uint8 * pixels.size).from_buffer_copy(pixels.tobytes()))
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text(text=marker, text_len=len(marker), add_special=False, parse_special=True)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            if mtmd.mtmd_tokenize(context, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) != 0:
                raise RuntimeError(f"llama.cpp's mtmd could not tokenize an image prompt with {mmproj}")
            for index in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, index)
                if mtmd.mtmd_input_chunk_get_type(chunk) != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    continue
                tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if mtmd.mtmd_encode_chunk(context, chunk) != 0:
                    raise RuntimeError(f"llama.cpp's mtmd could not encode the image with {mmproj}")
                output = mtmd.mtmd_get_output_embd(context)
                return np.ctypeslib.as_array(output, shape=(tokens * llama.n_embd(),)).reshape(tokens, -1).astype(np.float64)
            raise RuntimeError("llama.cpp's mtmd made no image chunk of an image prompt")
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            mtmd.mtmd_bitmap_free(bitmap)
    finally:
        mtmd.mtmd_free(context)


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
            comparison.add(np.array(llama.scores[len(ids) - 1 + step], dtype=np.float64), logits[step], tokens[step])
        llama.reset()
        llama.eval(ids)
        greedy = []
        for _ in tokens:
            greedy.append(int(np.argmax(llama.scores[llama.n_tokens - 1])))
            llama.eval([greedy[-1]])
        free_running.append(next((step for step, (a, b) in enumerate(zip(greedy, tokens)) if a != b), len(tokens)))
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
        tokenizer_equal.append(list(llama.tokenize(text.encode(), add_bos=False, special=True)) == ids)
    report = comparison.report() | {"greedy_free_running_steps": free_running, "tokenizer_equal": all(tokenizer_equal)}
    if request.get("mmproj"):
        saved = np.load(references_dir(request) / "vision.npz")
        cosines, counts = [], []
        for index, card in enumerate(request["cards"]):
            reference = saved[f"arr_{index}"]
            ours = mtmd_image_embeddings(llama, request["mmproj"], Path(card), request["threads"])
            counts.append([int(ours.shape[0]), int(reference.shape[0])])
            if ours.shape == reference.shape:
                a, b = reference.reshape(-1), ours.reshape(-1)
                cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            else:
                cosines.append(float("nan"))  # a different image token count fails the gate
        report |= {"vision_cosine": min(cosines), "vision_tokens": counts}
        # Recorded, not gated: llama.cpp's clip keeps a Gemma 3 image's aspect ratio and pads it
        # (image_resize_pad = PAD_CEIL), where transformers' processor stretches it to the square.
        reference = np.load(references_dir(request) / "non_square.npz")["arr_0"]
        ours = mtmd_image_embeddings(llama, request["mmproj"], Path(request["non_square_card"]), request["threads"])
        if ours.shape == reference.shape:
            a, b = reference.reshape(-1), ours.reshape(-1)
            report["vision_cosine_non_square"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"report": report}


def run(context: StepContext) -> None:
    """params: {prompts, steps, thresholds: {max_abs_logit, min_top1_agreement, max_kl, min_vision_cosine}};
    inputs `gguf` (model.gguf), `mmproj` (mmproj.gguf, for a model that reads images), `checkpoint`
    and `reference` (the shared parity_reference step's outputs: PyTorch's tokens, logits, test cards
    and image embeddings); output parity.json (recorded in the lock)."""
    params = context.params
    mmproj = context.input_path("mmproj", "mmproj.gguf") if "mmproj" in context.inputs else None
    work = context.scratch_dir / "parity"
    work.mkdir()
    request = {"action": "parity", "gguf": str(context.input_path("gguf", "model.gguf")), "checkpoint": str(context.input_dir("checkpoint")),
               "prompts": params["prompts"], "steps": params["steps"], "threads": THREADS, "scratch_dir": str(work),
               "mmproj": str(mmproj) if mmproj else None, "bundle": None}
    phases = [*(["non_square_reference"] if mmproj else []), "gguf"]
    report, measurements = run_phases(request | take_reference(context, request), phases, work, context.progress, MODULE)
    context.measurements.update(measurements)
    if not report["tokenizer_equal"]:
        raise StepFailed("parity check failed: llama.cpp's tokenizer (the GGUF's vocabulary) splits a chat prompt differently from the "
                         "source's; the converter did not carry the tokenizer faithfully, so the GGUF must not ship")
    gate(context, report, params["thresholds"], "use a float type (F16, BF16, Q8_0) or a larger K-quant, or relax the thresholds under parity")
