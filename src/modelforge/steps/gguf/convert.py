"""Step `gguf_convert`: a Hugging Face Gemma 3 checkpoint → GGUF through llama.cpp's own converter
(converter.py: the pinned sdist's convert_hf_to_gguf.py), run in the gguf worker (convert_child.py: the
converter unchanged but for the sliding-window pattern it leaves out for Gemma 3). Part
`text`: the decoder (from a text-only Gemma3ForCausalLM or the multimodal Gemma3ForConditionalGeneration;
the converter adds Gemma's +1 to every RMSNorm gain). Part `vision`: the SigLIP tower and projector as
an mmproj GGUF (`--mmproj`, projector type GEMMA3). Types are the converter's: F32, F16, BF16, Q8_0;
K-quants are quantize.py's. The checkpoint is shown to the converter in a directory named after the
model, and the name is passed explicitly, since the converter derives general.name (and basename,
version) from its input directory's name. Imports only steps.base, steps.gguf.worker (stdlib only), errors and the stdlib at module level."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext
from modelforge.steps.gguf.worker import MODULE

KIND = "gguf_convert"
VERSION = 1
TOOLS = ("llama-cpp-python", "torch", "transformers", "sentencepiece", "numpy", "safetensors")
KEEP = True  # only a full re-export (the model in memory) makes its outputs again: a store budget drops them last
OUTTYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0"}
FILES = {"text": "model.gguf", "vision": "mmproj.gguf"}


def presented(checkpoint: Path, name: str, work: Path) -> Path:
    """The checkpoint's files as symlinks in work/<name>: the directory name feeds the GGUF's metadata."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    directory = work / slug
    directory.mkdir(parents=True, exist_ok=True)
    for item in sorted(checkpoint.iterdir()):
        link = directory / item.name
        if not link.exists():
            os.symlink(item.resolve(), link)
    return directory


def convert(checkpoint: Path, out: Path, *, part: str, type: str, name: str, work: Path,
            module: str = MODULE, progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """Run the pinned converter on `checkpoint` in a worker, writing `out`; returns the worker's
    result (seconds, peak memory). `module` is the worker (a test passes one that breaks the
    conversion on purpose)."""
    from modelforge.steps.gguf import converter
    from modelforge.steps.workers import launch

    if type not in OUTTYPES:
        raise StepFailed(f"gguf type {type!r} is not one llama.cpp's converter writes ({', '.join(OUTTYPES)}); K-quants come from a quantize step")
    if part not in FILES:
        raise StepFailed(f"gguf part {part!r} is neither 'text' nor 'vision'")
    directory = converter.converter_dir()
    source = presented(checkpoint, name, work / "checkpoint")
    arguments = [str(source), "--outfile", str(out), "--outtype", OUTTYPES[type], "--model-name", name, *(["--mmproj"] if part == "vision" else [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    request = {"action": "convert", "phase": part, "converter_dir": str(directory), "arguments": arguments}
    result = launch(request, work, progress, f"gguf convert {part} ({type})", module)
    if not out.is_file():
        raise StepFailed(f"llama.cpp's converter exited 0 but wrote no {out.name}; see the log in {work}")
    return result


def run(context: StepContext) -> None:
    """params: {part: text|vision, type: F32|F16|BF16|Q8_0, name}; input `checkpoint`; output model.gguf
    (text) or mmproj.gguf (vision)."""
    params = context.params
    result = convert(context.input_dir("checkpoint"), context.output(FILES[params["part"]]), part=params["part"],
                     type=params["type"], name=params["name"], work=context.scratch_dir, progress=context.progress)
    context.measurements.update({key: result[key] for key in ("seconds", "peak_rss_bytes", "peak_anonymous_bytes")})
