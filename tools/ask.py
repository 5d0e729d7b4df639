"""Asks a built `.litertlm` one question through the LiteRT-LM runtime (litert-lm-api, CPU) and prints
its greedy answer: what a user of the bundle sees, on the bundle as shipped.

Usage: python tools/ask.py BUNDLE.litertlm "QUESTION" [--image IMAGE] [--max-tokens N]

The answer goes to stdout; the time to load and to answer, to stderr. Imports litert_lm only.
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib.metadata import version
from pathlib import Path

import litert_lm


def ask(bundle: Path, question: str, image: Path | None = None, max_tokens: int = 48) -> str:
    """The runtime's greedy answer (top-k 1) to `question`, with `image` for a multimodal bundle."""
    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)  # its loader warns of every section a bundle lacks
    engine = litert_lm.Engine(
        str(bundle), backend=litert_lm.Backend.CPU(), vision_backend=litert_lm.Backend.CPU() if image else None,
        max_num_images=1 if image else None, cache_dir=":nocache",
    )
    try:
        conversation = engine.create_conversation(sampler_config=litert_lm.SamplerConfig(top_k=1, seed=0), max_output_tokens=max_tokens)
        message = question if image is None else {
            "role": "user", "content": [{"type": "image", "path": str(image)}, {"type": "text", "text": question}]}
        answer = str(conversation.send_message(message))
        conversation.close()
        return answer
    finally:
        engine.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a .litertlm file (dist/<manifest>/<target>/…)")
    parser.add_argument("question")
    parser.add_argument("--image", type=Path, default=None, help="an image file, for a bundle that reads images")
    parser.add_argument("--max-tokens", type=int, default=48, help="the most tokens to answer with (default 48)")
    arguments = parser.parse_args()
    for path in filter(None, (arguments.bundle, arguments.image)):
        if not path.is_file():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    started = time.monotonic()
    answer = ask(arguments.bundle, arguments.question, arguments.image, arguments.max_tokens)
    print(answer)
    print(f"answered in {time.monotonic() - started:.1f} s (LiteRT-LM {version('litert-lm-api')}, CPU, greedy)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
