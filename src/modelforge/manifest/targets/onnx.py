"""The spec of target kind `onnx` (graphs in onnxruntime-genai's layout). Imports only
`manifest.base` and pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modelforge.manifest.base import Spec, TargetBase


class OnnxPrecisionSpec(Spec):
    """The precision of one component's ONNX weights (activations stay float32)."""

    precision: Literal["fp32", "int8", "int4"] = Field(
        default="fp32",
        description="fp32, or int8 / int4 weight-only in blocks (MatMulNBits, symmetric): onnxruntime-genai's builder for "
        "the text decoder, onnxruntime's MatMulNBits quantizer for the vision graph.",
    )
    block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        default=None, description="Weights per quantization block for int8 / int4 (default 32); not allowed for fp32."
    )

    @model_validator(mode="after")
    def _block(self) -> "OnnxPrecisionSpec":
        if self.precision == "fp32" and self.block_size is not None:
            raise ValueError("block_size applies to int8 and int4 only; remove it or pick precision int8 or int4")
        return self

    @property
    def blocks(self) -> int:
        return self.block_size or 32


class OnnxParitySpec(Spec):
    """A check, run as a build step and recorded in the lock: the ONNX graphs in onnxruntime (CPU) against PyTorch."""

    prompts: tuple[str, ...] = Field(
        default=("What are the symptoms of pneumonia?", "Summarise: patient has a fever and a cough."),
        min_length=1, description="Chat prompts to compare on.",
    )
    steps: int = Field(default=24, ge=1, le=512, description="Greedy decode steps per prompt (teacher-forced along PyTorch's tokens).")
    max_abs_logit: float | None = Field(default=None, gt=0, description="Fail if max |Δlogit| exceeds this (float graphs).")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1, description="Fail if the top-1 agreement with PyTorch is lower (quantized graphs).")
    max_kl: float | None = Field(default=None, ge=0, description="Fail if the mean KL divergence from PyTorch's next-token distribution exceeds this.")
    min_vision_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Fail if the cosine similarity of vision.onnx's image embeddings with PyTorch's (both fed the image "
        "processor's pixels, two generated test cards, worst card) is lower.",
    )


class OnnxTarget(TargetBase):
    kind: Literal["onnx"] = Field(
        description="ONNX graphs in onnxruntime-genai's layout: the text decoder with its KV cache (model.onnx + external "
        "data, genai_config.json, tokenizer files) and, for image_text_to_text, vision.onnx and embedding.onnx."
    )
    task: Literal["text_generation", "image_text_to_text"] = Field(description="Export the text decoder only, or the vision graphs too.")
    components: tuple[str, ...] = Field(min_length=1, description="Components this target contains (coverage).")
    context_length: int = Field(
        default=4096, ge=8, le=131072,
        description="Longest conversation in tokens: the rows of the decoder's RoPE caches and genai_config's max_length.",
    )
    precision: dict[str, OnnxPrecisionSpec] = Field(
        default_factory=dict,
        description="Precision per component (text_decoder, vision_encoder, projector); absent means fp32. vision_encoder "
        "and projector are one graph (vision.onnx) and take one precision.",
    )
    parity: OnnxParitySpec | None = Field(default=None, description="Compare against PyTorch during the build and record it.")

    @model_validator(mode="after")
    def _consistent(self) -> "OnnxTarget":
        for component in self.precision:
            if component not in self.components:
                raise ValueError(f"precision names component {component!r}, which this target does not contain; add it to components")
        default = OnnxPrecisionSpec()
        vision = {name: self.precision.get(name, default) for name in ("vision_encoder", "projector") if name in self.components}
        if len(set(vision.values())) > 1:
            raise ValueError(
                "vision_encoder and projector are one graph (vision.onnx) and need one precision; give them the same precision"
            )
        return self



SPEC = OnnxTarget
