"""The converter's process: runs the pinned convert_hf_to_gguf.py (converter.py) unchanged but for one
addition. llama.cpp reads which Gemma 3 layers slide from `gemma3.attention.sliding_window_pattern` and,
when the key is absent, assumes five sliding layers then one global (period 6); the converter at this
commit never writes the key. Where the checkpoint's `layer_types` differ from that default (the tiny
model slides every other layer), this writes them, as the converter's Cohere and EXAONE classes do for
their models; where they agree (MedGemma 4B), the output is the converter's to the byte. Imports only
the stdlib; the converter's `conversion` package and gguf-py come from its own directory.

Usage: python -m modelforge.steps.gguf.convert_child CONVERTER_DIR [convert_hf_to_gguf.py arguments]
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

LLAMA_CPP_DEFAULT_PERIOD = 6


def default_pattern(layers: int, period: int = LLAMA_CPP_DEFAULT_PERIOD) -> list[bool]:
    """llama_hparams::set_swa_pattern(period, dense_first=false): layer il slides iff il % period < period - 1."""
    return [index % period < period - 1 for index in range(layers)]


def prepare(converter_dir: Path) -> None:
    """Put the converter's package and gguf-py first on sys.path and add the sliding-window pattern."""
    sys.path[:0] = [str(converter_dir), str(converter_dir / "gguf-py")]
    from conversion import gemma

    original = gemma.Gemma3Model.set_gguf_parameters

    def set_gguf_parameters(self) -> None:
        original(self)
        types = self.hparams.get("layer_types")
        if types and self.hparams.get("sliding_window_pattern") != 1:
            pattern = [kind == "sliding_attention" for kind in types]
            if pattern != default_pattern(len(pattern)):
                self.gguf_writer.add_sliding_window_pattern(pattern)

    gemma.Gemma3Model.set_gguf_parameters = set_gguf_parameters


def run(converter_dir: Path, arguments: list[str]) -> None:
    script = converter_dir / "convert_hf_to_gguf.py"
    sys.argv = [str(script), *arguments]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    directory = Path(sys.argv[1])
    prepare(directory)
    run(directory, sys.argv[2:])
