"""Spec parts that more than one target kind uses: module hoists before tracing, ai-edge-quantizer
recipes and their overrides, the LLM metadata and sampler a runtime needs, and the parity check of
exported graphs against PyTorch. Imports only `manifest.base`, pydantic and the standard library."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from modelforge.manifest.base import NAME, Spec, check_regex, check_relative


class HoistSpec(Spec):
    """Lift a nested module to the top level of the model before tracing, so the exporter sees the
    multimodal connection points where it looks for them."""

    name: str = Field(pattern=NAME, description="Name of this hoist, for plans and reports.")
    path: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Dotted attribute path of the module in the loaded model, e.g. model.vision_tower.",
    )
    to: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Top-level attribute name it becomes, e.g. vision_tower.")

    @field_validator("path", "to")
    @classmethod
    def _no_dunders(cls, value: str) -> str:
        # __class__, __globals__… lead from a model to any object of the process; modules never need them.
        if any(part.startswith("__") for part in value.split(".")):
            raise ValueError(f"{value!r} names a private attribute (__…); hoist a submodule such as model.vision_tower")
        return value


# The recipes of ai-edge-quantizer 0.10.0 that need no calibration data and return a plain recipe
# (a test checks this list against the installed quantizer, so a toolchain bump cannot drift silently).
QUANTIZER_RECIPES = (
    "dynamic_legacy_wi8_afp32", "dynamic_wi2b32_afp32", "dynamic_wi2b64_afp32", "dynamic_wi2c_afp32",
    "dynamic_wi2c_hr_afp32", "dynamic_wi4_afp32", "dynamic_wi4b32_afp32", "dynamic_wi4b64_afp32", "dynamic_wi4c_afp32",
    "dynamic_wi4c_hr_afp32", "dynamic_wi8_afp32", "dynamic_wi8b32_afp32", "dynamic_wi8b64_afp32", "dynamic_wi8c_afp32",
    "dynamic_wi8c_hr_afp32", "weight_only_wi4_afp32", "weight_only_wi8_afp32",
)


def check_recipe(value: str) -> str:
    if value != "none" and value not in QUANTIZER_RECIPES:
        import difflib

        close = difflib.get_close_matches(value, QUANTIZER_RECIPES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown quantization recipe {value!r}; {hint}valid recipes: none, {', '.join(QUANTIZER_RECIPES)}")
    return value


class RecipeOverrideSpec(Spec):
    regex: str = Field(min_length=1, description="Regular expression over op output tensor names, e.g. '.*Gemma3MLP_mlp.*'.")
    recipe: str = Field(description="ai-edge-quantizer recipe for the ops it matches (later overrides win).")
    _regex = field_validator("regex")(lambda cls, value: check_regex(value))
    _recipe = field_validator("recipe")(lambda cls, value: check_recipe(value))


class QuantizationSpec(Spec):
    recipe: str = Field(
        default="none",
        description="ai-edge-quantizer recipe name (e.g. dynamic_wi8_afp32, weight_only_wi8_afp32, dynamic_wi4b32_afp32) or none.",
    )
    overrides: tuple[RecipeOverrideSpec, ...] = Field(default=(), description="Finer recipes scoped by regex.")
    _recipe = field_validator("recipe")(lambda cls, value: check_recipe(value))


class SamplerSpec(Spec):
    type: Literal["top_k", "top_p", "greedy"] = Field(default="top_k", description="Sampling strategy.")
    k: int = Field(default=64, ge=1, le=1 << 20, description="Top-k.")
    p: float = Field(default=0.95, gt=0, le=1, description="Top-p.")
    temperature: float = Field(default=1.0, ge=0, le=100, description="Temperature.")


class LlmMetadataSpec(Spec):
    start_token: str = Field(default="<bos>", description="Token the runtime puts first.")
    stop_tokens: tuple[str, ...] = Field(default=("<eos>", "<end_of_turn>"), min_length=1, description="Tokens that end generation.")
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 24, description="Maximum tokens (default: cache_length).")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Sampler defaults.")
    chat_template: str = Field(default="chat_template.jinja", description="Source file with the Jinja chat template.")
    _chat_template = field_validator("chat_template")(lambda cls, value: check_relative(value))


class ParitySpec(Spec):
    """A check, run as a build step and recorded in the lock: exported graphs against PyTorch."""

    prompts: tuple[str, ...] = Field(
        default=("What are the symptoms of pneumonia?", "Summarise: patient has a fever and a cough."),
        min_length=1, description="Chat prompts to compare on.",
    )
    steps: int = Field(default=24, ge=1, le=512, description="Greedy decode steps per prompt.")
    max_abs_logit: float | None = Field(default=None, gt=0, description="Fail if max |Δlogit| exceeds this (float exports).")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1, description="Fail if top-1 agreement is lower.")
    max_kl: float | None = Field(default=None, ge=0, description="Fail if the mean KL divergence exceeds this.")
    min_vision_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Fail if the cosine similarity of the vision graphs' image embeddings (fed the runtime's [0, 1] pixels) "
        "with PyTorch's (fed the image processor's pixels) is lower.",
    )
    min_image_token_agreement: float | None = Field(
        default=None, ge=0, le=1,
        description="Fail if the bundle, run in the LiteRT-LM runtime on image prompts (greedy), reproduces a smaller share of "
        "PyTorch's greedy answer tokens (counted from the first) than this; 1.0 requires identical answers (float bundles).",
    )
