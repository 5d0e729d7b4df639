"""Step `gguf_convert`: a Hugging Face Gemma 3 checkpoint → GGUF through llama.cpp's own converter
(converter.py: the pinned sdist's convert_hf_to_gguf.py), run in a child process (convert_child.py,
which adds the sliding-window pattern the converter leaves out for Gemma 3). Part
`text`: the decoder (from a text-only Gemma3ForCausalLM or the multimodal Gemma3ForConditionalGeneration;
the converter adds Gemma's +1 to every RMSNorm gain). Part `vision`: the SigLIP tower and projector as
an mmproj GGUF (`--mmproj`, projector type GEMMA3). Types are the converter's: F32, F16, BF16, Q8_0;
K-quants are quantize.py's. The checkpoint is shown to the converter in a directory named after the
model, and the name is passed explicitly, since the converter derives general.name (and basename,
version) from its input directory's name. Imports only steps.base, errors and the stdlib at module level."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Callable

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "gguf_convert"
VERSION = 1
TOOLS = ("llama-cpp-python", "torch", "transformers", "sentencepiece", "numpy", "safetensors")
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
            launcher: list[str] | None = None, progress: Callable[[int, int, str], None] = lambda *_: None) -> dict:
    """Run the converter on `checkpoint`, writing `out`; returns seconds and the child's peak RSS.
    `launcher` (the command before the converter's arguments) defaults to convert_child with the
    pinned converter; a test passes one that breaks the conversion on purpose."""
    from modelforge.steps.gguf import converter
    from modelforge.steps.gguf.worker import run_child

    if type not in OUTTYPES:
        raise StepFailed(f"gguf type {type!r} is not one llama.cpp's converter writes ({', '.join(OUTTYPES)}); K-quants come from a quantize step")
    if part not in FILES:
        raise StepFailed(f"gguf part {part!r} is neither 'text' nor 'vision'")
    launcher = launcher or [sys.executable, "-m", "modelforge.steps.gguf.convert_child", str(converter.converter_dir())]
    source = presented(checkpoint, name, work / "checkpoint")
    argv = [*launcher, str(source), "--outfile", str(out), "--outtype", OUTTYPES[type], "--model-name", name]
    if part == "vision":
        argv.append("--mmproj")
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = run_child(argv, work / f"convert-{part}", f"gguf convert {part} ({type})", progress)
    if not out.is_file():
        raise StepFailed(f"llama.cpp's converter exited 0 but wrote no {out}; see {work / f'convert-{part}' / 'log.txt'}")
    return measured


def run(context: StepContext) -> None:
    """params: {part: text|vision, type: F32|F16|BF16|Q8_0, name}; input `checkpoint`; output model.gguf
    (text) or mmproj.gguf (vision)."""
    params = context.params
    measured = convert(context.input_dir("checkpoint"), context.output(FILES[params["part"]]), part=params["part"],
                       type=params["type"], name=params["name"], work=context.scratch_dir, progress=context.progress)
    context.measurements.update(measured)
