"""Target `hf_cast`: an hf_text_only target's checkpoint with its floating-point weights cast to
one dtype, by one step::

    <hf_text_only target> ─► cast_weights ─► out/<target>/

Imports the spec, `plan`, `plan_builder` and its step; reaches the hf_text_only target through
PlanBuilder.target, never by import."""

from __future__ import annotations

from modelforge.manifest.targets.hf_cast import HfCastTarget
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder
from modelforge.steps.cast import cast_weights

KIND = "hf_cast"


def plan(builder: PlanBuilder, target: str, spec: HfCastTarget) -> str:
    # The hf_text_only target's node (the same node when the manifest builds that target too).
    checkpoint = builder.target("hf_text_only").plan(builder, spec.checkpoint, builder.manifest.targets[spec.checkpoint])
    return builder.add(StepNode.make(
        target, cast_weights.KIND, cast_weights.VERSION, {"dtype": spec.dtype},
        (InputRef("checkpoint", checkpoint),), cast_weights.TOOLS,
    ))
