"""Builds (or checks and reuses) the trained Gemma 3 270M fixtures from the registry GGUF and prints
their directories: modelforge.testing.trained_gemma3 does the work (see its docstring).

Usage: python tools/make_trained_fixture.py [--multimodal] [--root DIR]
       (DIR defaults to MODELFORGE_FIXTURE_CACHE, else .cache/fixtures in the checkout)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from modelforge.testing import trained_gemma3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multimodal", action="store_true", help="also the trained decoder + random vision tower checkpoint")
    parser.add_argument("--root", type=Path, default=None, help="cache directory (default: trained_gemma3.cache_root())")
    arguments = parser.parse_args()
    started = time.monotonic()
    try:
        print(trained_gemma3.text_checkpoint(arguments.root))
        if arguments.multimodal:
            print(trained_gemma3.multimodal_checkpoint(arguments.root))
    except trained_gemma3.FixtureError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
