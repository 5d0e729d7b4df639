"""The gguf steps' jobs, run in a child interpreter through steps/workers.py (fixed hash seed, peak
anonymous memory measured, dies with the build): the pinned converter (convert_child), llama.cpp's
quantizer and the parity phases. Neither torch nor llama.cpp loads into modelforge's own process.
Imports only the standard library at module level.

Usage: python -m modelforge.steps.gguf.worker REQUEST.json   (writes result.json beside it)
"""

from __future__ import annotations

from pathlib import Path

MODULE = "modelforge.steps.gguf.worker"


def convert(request: dict) -> dict:
    """The converter's main() in this process, with convert_child's one addition."""
    from modelforge.steps.gguf import convert_child

    directory = Path(request["converter_dir"])
    convert_child.prepare(directory)
    convert_child.run(directory, request["arguments"])
    return {}


def quantize(request: dict) -> dict:
    from modelforge.steps.gguf.quantize import quantize_in_child

    return quantize_in_child(request)


def parity(request: dict) -> dict:
    from modelforge.steps.gguf.parity import gguf_phase, non_square_reference
    from modelforge.steps.parity_phases import PHASES

    return {**PHASES, "non_square_reference": non_square_reference, "gguf": gguf_phase}[request["phase"]](request)


ACTIONS = {"convert": convert, "quantize": quantize, "parity": parity}


if __name__ == "__main__":
    from modelforge.steps.workers import serve

    serve(ACTIONS)
