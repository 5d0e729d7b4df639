"""Step `assemble`: the union of its inputs' files, laid out as one target directory. Copies no
bytes: outputs are the same store objects."""

from __future__ import annotations

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "assemble"
VERSION = 1
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    """params: {"layout": {input name: subdirectory ('' for the top)}}."""
    seen: dict[str, str] = {}
    for name in sorted(context.inputs):
        prefix = context.params["layout"].get(name, "")
        for relative in sorted(context.inputs[name]):
            out = f"{prefix}/{relative}" if prefix else relative
            if out in seen:
                raise StepFailed(f"assemble: {out!r} comes from both {seen[out]!r} and {name!r}; rename one of them")
            seen[out] = name
            context.pass_through(name, relative, out)
