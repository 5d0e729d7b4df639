"""The spec of target kind `gguf`: GGUF files for llama.cpp and what is built on it (Ollama, LM Studio,
Jan, llamafile). Imports only `manifest.base`, `manifest.parts` and pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from modelforge.manifest.base import Spec, TargetBase
from modelforge.manifest.parts import LlmMetadataSpec

GgufType = Literal["F32", "F16", "BF16", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q5_0", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


class GgufParitySpec(Spec):
    """A check, run as a build step and recorded in the lock: the text GGUF in llama.cpp against PyTorch."""

    prompts: tuple[str, ...] = Field(
        default=("What are the symptoms of pneumonia?", "Summarise: patient has a fever and a cough."),
        min_length=1, description="Chat prompts to compare on (in the source's chat template).",
    )
    steps: int = Field(default=24, ge=1, le=512, description="Greedy decode steps per prompt (teacher-forced along PyTorch's tokens).")
    max_abs_logit: float | None = Field(default=None, gt=0, description="Fail if max |Δlogit| exceeds this (float types).")
    min_top1_agreement: float | None = Field(
        default=None, ge=0, le=1,
        description="Fail if top-1 agreement with PyTorch is lower; 1.0 means llama.cpp's greedy tokens are PyTorch's (float types).",
    )
    max_kl: float | None = Field(default=None, ge=0, description="Fail if the mean KL divergence from PyTorch's next-token distribution exceeds this.")
    min_vision_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Fail if the cosine similarity of the image embeddings llama.cpp's mtmd makes from the mmproj (its own "
        "preprocessing) with PyTorch's (the image processor's pixels, two generated test cards, worst card) is lower, or the "
        "image token counts differ (image_text_to_text).",
    )


class GgufTarget(TargetBase):
    kind: Literal["gguf"] = Field(
        description="GGUF for llama.cpp, Ollama, LM Studio: the text decoder as one GGUF, for image_text_to_text the vision "
        "tower and projector as an mmproj GGUF beside it, and an Ollama Modelfile. Converted by llama.cpp's own converter "
        "and quantized by its own quantizer, both from the pinned llama-cpp-python source."
    )
    task: Literal["text_generation", "image_text_to_text"] = Field(description="The text GGUF only, or the mmproj GGUF too.")
    components: tuple[str, ...] = Field(min_length=1, description="Components this target contains (coverage).")
    file: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Base of the file names (<file>-<type>.gguf, mmproj-<file>-<type>.gguf) and the GGUF's general.name; default the manifest's name.",
    )
    type: GgufType = Field(
        default="Q4_K_M",
        description="The text GGUF's type: F32, F16, BF16, Q8_0 straight from the converter; a K-quant (Q4_K_M, Q5_K_M, Q6_K, …) "
        "or Q4_0/Q5_0 through llama.cpp's quantizer from an F32 conversion.",
    )
    vision_type: Literal["F32", "F16", "BF16", "Q8_0"] = Field(
        default="F16",
        description="The mmproj GGUF's type (image_text_to_text). The converter keeps the patch and position embeddings F32 "
        "and the projector's input projection F16 whatever this says.",
    )
    context_length: int = Field(default=4096, ge=8, le=131072, description="The Modelfile's num_ctx.")
    metadata: LlmMetadataSpec = Field(default_factory=LlmMetadataSpec, description="Stop tokens, sampler and chat template for the Modelfile.")
    parity: GgufParitySpec | None = Field(default=None, description="Compare the text GGUF in llama.cpp against PyTorch during the build and record it.")

    @model_validator(mode="after")
    def _consistent(self) -> "GgufTarget":
        if self.task == "text_generation" and any(c in self.components for c in ("vision_encoder", "projector")):
            raise ValueError("task text_generation has no mmproj for vision_encoder or projector; use image_text_to_text or remove them")
        return self


SPEC = GgufTarget
