"""The spec of target kind `hf_cast`: an hf_text_only target's checkpoint with its floating-point
weights cast to another dtype. Imports only `manifest.base` and pydantic."""

from __future__ import annotations

from typing import Literal, Mapping

from pydantic import Field

from modelforge.manifest.base import TargetBase


class HfCastTarget(TargetBase):
    kind: Literal["hf_cast"] = Field(
        description="A Hugging Face checkpoint with every floating-point weight of an hf_text_only target cast to one dtype "
        "(e.g. float16 for a runtime or GPU without bfloat16); the config's dtype says so, the other files are the same."
    )
    checkpoint: str = Field(description="The hf_text_only target of this manifest whose checkpoint is cast.")
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        description="The dtype of the cast weights. float16 refuses a weight above its largest finite value (65504) instead of "
        "turning it into infinity."
    )

    def check_references(self, name: str, targets: Mapping[str, TargetBase]) -> None:
        if getattr(targets.get(self.checkpoint), "kind", None) != "hf_text_only":
            raise ValueError(f"targets.{name}.checkpoint {self.checkpoint!r} is not an hf_text_only target of this manifest; name one")


SPEC = HfCastTarget
