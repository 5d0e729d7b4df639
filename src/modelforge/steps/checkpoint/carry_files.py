"""Step `carry_files`: source files that travel unchanged (tokenizer, generation config)."""

from __future__ import annotations

from modelforge.steps.base import StepContext

KIND = "carry_files"
VERSION = 1
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    for relative in sorted(context.inputs["source"]):
        context.pass_through("source", relative)
