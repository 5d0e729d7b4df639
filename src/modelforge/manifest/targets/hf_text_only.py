"""The spec of target kind `hf_text_only` (a text-only Hugging Face checkpoint). Imports only
`manifest.base` and pydantic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from modelforge.manifest.base import TargetBase, parse_size


class HfTextOnlyTarget(TargetBase):
    kind: Literal["hf_text_only"] = Field(description="A Hugging Face checkpoint: sharded safetensors, index, config, tokenizer.")
    components: tuple[str, ...] = Field(min_length=1, description="Components whose tensors make up the checkpoint.")
    max_shard_size: Annotated[int, Field(gt=0, le=2**40)] = Field(
        default=5 * 10**9, description="Largest shard in bytes (e.g. 5GB); a tensor larger than this gets a shard of its own."
    )
    _size = field_validator("max_shard_size", mode="before")(lambda cls, value: parse_size(value))



SPEC = HfTextOnlyTarget
