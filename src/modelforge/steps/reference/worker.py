"""The parity_reference step's job, in a fresh interpreter (steps/workers.py): the reference phases
of parity_phases, their files gathered as the step's outputs.

Usage: python -m modelforge.steps.reference.worker REQUEST.json   (writes result.json beside it)
"""

from __future__ import annotations

import json
from pathlib import Path

MODULE = "modelforge.steps.reference.worker"


def reference(request: dict) -> dict:
    from modelforge.steps import parity_phases
    from modelforge.steps.parity import references_dir

    work = Path(request["work_dir"])
    request = {**request, "scratch_dir": str(work)}
    parity_phases.text_reference(request)
    references = references_dir(request)
    files = {"text.npz": references / "text.npz"}
    if request["multimodal"]:
        answers = request["answers"]
        handoff = parity_phases.image_reference(
            {**request, "bundle": answers is not None, "stop_tokens": (answers or {}).get("stop_tokens", [])})["handoff"]
        files["vision.npz"] = references / "vision.npz"
        files |= {Path(card).name: Path(card) for card in handoff.pop("cards")}
        (work / "reference.json").write_text(json.dumps(handoff, indent=1, sort_keys=True) + "\n")
        files["reference.json"] = work / "reference.json"
    return {"files": {name: str(path) for name, path in files.items()}}


ACTIONS = {"reference": reference}


if __name__ == "__main__":
    from modelforge.steps.workers import serve

    serve(ACTIONS)
