"""The spec of target kind `litertlm` (a LiteRT-LM bundle). Imports only `manifest.base`,
`manifest.parts` and pydantic."""

from __future__ import annotations

from typing import Annotated, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from modelforge.manifest.base import TargetBase, check_relative
from modelforge.manifest.parts import HoistSpec, LlmMetadataSpec, ParitySpec, QuantizationSpec


class LitertlmTarget(TargetBase):
    kind: Literal["litertlm"] = Field(description="A LiteRT-LM bundle: prefill/decode graphs, tokenizer, metadata, vision encoder.")
    task: Literal["text_generation", "image_text_to_text"] = Field(description="Export the text decoder only, or the vision encoder too.")
    checkpoint: str = Field(
        default="source",
        description="What to export: 'source' (the checkpoint as fetched) or the name of an hf_text_only target of this manifest.",
    )
    file: str = Field(default="model.litertlm", description="Name of the bundle inside the target directory.")
    components: tuple[str, ...] = Field(min_length=1, description="Components this bundle contains (coverage).")
    prefill_lengths: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(default=(32, 128), min_length=1, description="One prefill signature per length.")
    cache_length: int = Field(default=1024, ge=8, le=1 << 20, description="KV-cache length (the longest conversation in tokens).")
    hoists: tuple[HoistSpec, ...] = Field(default=(), description="Modules lifted to the top level before tracing.")
    quantization: dict[str, QuantizationSpec] = Field(
        default_factory=dict, description="Recipe per component (text_decoder, vision_encoder…); absent means float."
    )
    metadata: LlmMetadataSpec = Field(default_factory=LlmMetadataSpec, description="LLM metadata the runtime needs.")
    parity: ParitySpec | None = Field(default=None, description="Compare against PyTorch during the build and record it.")

    _file = field_validator("file")(lambda cls, value: check_relative(value))

    @model_validator(mode="after")
    def _consistent(self) -> "LitertlmTarget":
        too_long = [length for length in self.prefill_lengths if length > self.cache_length]
        if too_long:
            raise ValueError(
                f"prefill length {too_long[0]} is larger than cache_length {self.cache_length}; "
                "lower prefill_lengths or raise cache_length"
            )
        for component in self.quantization:
            if component not in self.components:
                raise ValueError(f"quantization names component {component!r}, which this target does not contain; add it to components")
        return self

    def check_references(self, name: str, targets: Mapping[str, TargetBase]) -> None:
        if self.checkpoint != "source" and getattr(targets.get(self.checkpoint), "kind", None) != "hf_text_only":
            raise ValueError(
                f"targets.{name}.checkpoint {self.checkpoint!r} is neither 'source' nor an hf_text_only target of this manifest; fix it"
            )



SPEC = LitertlmTarget
