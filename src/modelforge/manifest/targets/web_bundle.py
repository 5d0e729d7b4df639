"""The spec of target kind `web_bundle` (a static page running the model in the browser) and its
variants. Imports only `manifest.base`, `manifest.parts` and pydantic."""

from __future__ import annotations

from typing import Literal, Mapping

from pydantic import Field, field_validator, model_validator

from modelforge.manifest.base import NAME, Spec, TargetBase, check_relative
from modelforge.manifest.parts import check_recipe


class WebVariantSpec(Spec):
    name: str = Field(pattern=NAME, description="Slug of the variant's files (models/<name>-<sha16>.task for MediaPipe).")
    label: str = Field(min_length=1, max_length=200, description="What the page shows, e.g. 'MedGemma 4B · int8'.")
    source_target: str = Field(
        alias="from", description="The target of this manifest whose graphs or export settings the variant reuses: a litertlm "
        "target (runtime mediapipe or litertjs) or an onnx target (runtime onnxruntime_web)."
    )
    runtime: Literal["mediapipe", "litertjs", "onnxruntime_web"] = Field(
        default="mediapipe",
        description="What runs the variant in the page. mediapipe: a text-only MediaPipe .task (the text fallback; the web "
        "runtime rejects float embeddings, so it needs a recipe). litertjs: the litertlm target's own graphs (embedder, "
        "prefill/decode, vision encoder and adapter) on LiteRT.js, WebGPU or its wasm CPU backend, with images; the "
        "litertlm target's task must be image_text_to_text. onnxruntime_web: the onnx target's own package (decoder, "
        "embedding and vision graphs at the onnx target's precision; a text_generation onnx target's decoder alone) on "
        "onnxruntime-web, WebGPU or its wasm CPU backend, with images when the onnx target has them: how MedGemma 4B reads "
        "images in the browser (docs/web-routes.md).",
    )
    chat_template: str | None = Field(
        default=None,
        description="litertjs and onnxruntime_web: the source file with the Jinja template the page puts the question in "
        "(default: the litertlm target's metadata.chat_template, or chat_template.jinja for onnxruntime_web). A pretrained "
        "base model takes its prompt as plain text (e.g. a template of just bos_token and the message).",
    )
    recipe: str | None = Field(
        default=None,
        description="Quantization of the text decoder (default: the litertlm target's). MediaPipe variants need quantized "
        "embeddings (not none); a litertjs variant may be float (none). The litertlm target's recipe reuses its very steps.",
    )
    vision_recipe: str = Field(
        default="none",
        description="litertjs only: quantization of the vision encoder and projector. Default none (float): LiteRT.js 2.5.3 "
        "cannot compile int8 weight-only vision graphs on WebGPU (the page then runs them on its wasm CPU backend).",
    )
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 20, description="Input + output tokens (default: the cache length).")
    stream_weights: bool = Field(
        default=False,
        description="litertjs only: ship the decoder and embedder with their quantized weights in separate files that the page "
        "streams into WebGPU buffers (loadModelAndWeights), so that only the rest of each graph enters LiteRT.js's 2 GiB wasm "
        "heap: how MedGemma 4B fits. Needs a quantized text recipe; the variant then runs on WebGPU only (the page falls back "
        "to the next variant without it). See docs/web-streamed-weights.md.",
    )

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: str | None) -> str | None:
        return None if value is None else check_recipe(value)

    _vision_recipe = field_validator("vision_recipe")(lambda cls, value: check_recipe(value))
    _chat_template = field_validator("chat_template")(lambda cls, value: None if value is None else check_relative(value))

    @model_validator(mode="after")
    def _runtime(self) -> "WebVariantSpec":
        if self.runtime == "mediapipe" and self.recipe == "none":
            raise ValueError(
                "the MediaPipe web runtime rejects float embedding tables; pick a quantization recipe such as "
                "dynamic_wi8_afp32, or set runtime: litertjs for a float variant"
            )
        if self.runtime == "mediapipe" and self.vision_recipe != "none":
            raise ValueError("vision_recipe applies to runtime: litertjs variants only (a MediaPipe .task reads text only); remove it")
        if self.runtime == "mediapipe" and self.chat_template is not None:
            raise ValueError("chat_template applies to the page's own loop (litertjs, onnxruntime_web), not to a MediaPipe .task; remove it")
        if self.runtime == "mediapipe" and self.stream_weights:
            raise ValueError("stream_weights applies to runtime: litertjs variants only (MediaPipe loads a whole .task); remove it")
        if self.runtime == "onnxruntime_web" and (self.recipe is not None or self.vision_recipe != "none" or self.stream_weights):
            raise ValueError(
                "an onnxruntime_web variant ships its onnx target's graphs as they are: set their precision on the onnx target, "
                "and remove recipe, vision_recipe and stream_weights here"
            )
        if self.stream_weights and self.recipe == "none":
            raise ValueError("stream_weights streams quantized weights only (LiteRT.js reads float ones from its heap); set a quantized recipe")
        return self


class WebBundleTarget(TargetBase):
    kind: Literal["web_bundle"] = Field(
        description="A static page that runs the model in the browser (WebGPU; LiteRT.js variants also on its wasm CPU backend), "
        "with server configs."
    )
    title: str = Field(min_length=1, max_length=200, description="Page title.")
    variants: tuple[WebVariantSpec, ...] = Field(
        min_length=1, description="Models in priority order; the page falls back to the next one and says why."
    )

    @model_validator(mode="after")
    def _unique(self) -> "WebBundleTarget":
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; {names} repeats one")
        return self

    def check_references(self, name: str, targets: Mapping[str, TargetBase]) -> None:
        for variant in self.variants:
            wanted = "an onnx" if variant.runtime == "onnxruntime_web" else "a litertlm"
            if getattr(targets.get(variant.source_target), "kind", None) != wanted.split()[1]:
                raise ValueError(
                    f"targets.{name}.variants: 'from: {variant.source_target}' is not {wanted} target of this manifest "
                    f"(runtime {variant.runtime} runs {wanted} target's graphs); name one of its {wanted.split()[1]} targets"
                )



SPEC = WebBundleTarget
