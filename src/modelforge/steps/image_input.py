"""What pixels the LiteRT-LM runtime hands a bundle's vision encoder, and the affine map that turns
them into what the source model's image processor would have given it. Used inside the worker
process by the vision export and the parity check; imports numpy and torch lazily, nothing of
modelforge.

The runtime's side (litert-lm-api 0.18.1, `litert_lm`), with its evidence:

- `runtime/components/preprocessor/stb_image_preprocessor.cc` (google-ai-edge/LiteRT-LM): the
  image is decoded with stb_image to 8-bit RGB, resized with `stbir_resize` (Catmull-Rom, sRGB,
  edge clamp) to the LlmMetadata's `image_tensor_height` × `image_tensor_width`, and written as
  float NHWC `value / 255.0f`: pixels in [0, 1], no mean, no standard deviation.
- The LlmMetadata proto of 0.18.1 has no normalization setting for Gemma 3: `Gemma3` and
  `Gemma3N` carry only the image delimiter tokens and the tensor height/width; only `Lfm2` has
  `normalization_mean` / `normalization_std` / `normalization_rescale_factor`, read by the LFM2
  data processor alone. So no metadata can ask the runtime to normalize a Gemma 3 image.
- Measured (tests/test_litertlm.py, tiny model, float bundle): exported without this map, the
  bundle's greedy image answer in the runtime equals PyTorch's on [0, 1] pixels and differs from
  PyTorch's on the processor's pixels; with it, it equals the latter token for token.

Gemma 3's processor (preprocessor_config.json) rescales by 1/255 and normalizes with mean 0.5 and
std 0.5, i.e. to [-1, 1]. The export therefore puts `pixel = scale · runtime_pixel + offset` (per
channel) in front of the vision tower, so the graph takes what the runtime gives and computes what
the processor would. The resize is not covered: the runtime's Catmull-Rom resize differs from the
processor's (PIL bilinear for Gemma 3) unless the image already has the target size.
"""

from __future__ import annotations

from typing import Any

# The runtime's pixel range (stb_image_preprocessor.cc: uint8 / 255.0f).
RUNTIME_PIXEL_RANGE = (0.0, 1.0)
RUNTIME_PIXEL_DIVISOR = 255.0


def processor_affine(image_processor: Any) -> dict[str, list[float]]:
    """Per-channel {scale, offset} with processor(x) = scale · (x / 255) + offset for 8-bit x, from
    the image processor transformers builds out of the source's preprocessor_config.json (its
    class defaults fill what the file leaves out, as they do for the source model's users)."""
    rescale = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", False) else 1.0
    channels = 3
    if getattr(image_processor, "do_normalize", False):
        mean, std = _per_channel(image_processor.image_mean, channels), _per_channel(image_processor.image_std, channels)
    else:
        mean, std = [0.0] * channels, [1.0] * channels
    if any(value == 0 for value in std):
        raise ValueError(f"the image processor's image_std {std} has a zero; preprocessor_config.json is broken")
    return {
        "scale": [RUNTIME_PIXEL_DIVISOR * rescale / deviation for deviation in std],
        "offset": [-average / deviation for average, deviation in zip(mean, std)],
    }


def _per_channel(value: Any, channels: int) -> list[float]:
    values = [float(item) for item in value] if isinstance(value, (list, tuple)) else [float(value)] * channels
    if len(values) != channels:
        raise ValueError(f"expected {channels} per-channel values in preprocessor_config.json, got {values}")
    return values


def normalize_runtime_pixels(vision_tower: Any, affine: dict[str, list[float]]) -> None:
    """Make `vision_tower` (called as vision_tower(pixel_values=NCHW)) take runtime pixels: a forward
    pre-hook applies the affine map before its first layer. The weights stay the source's bytes,
    so quantization sees the source's weights and any mean/std (not only 0.5) is exact; the graph
    gains one multiply and one add over the image."""
    import torch

    scale = torch.tensor(affine["scale"], dtype=torch.float32).reshape(1, -1, 1, 1)
    offset = torch.tensor(affine["offset"], dtype=torch.float32).reshape(1, -1, 1, 1)

    def hook(module, args, kwargs):
        if "pixel_values" in kwargs:
            kwargs = {**kwargs, "pixel_values": kwargs["pixel_values"] * scale + offset}
        else:
            args = (args[0] * scale + offset, *args[1:])
        return args, kwargs

    vision_tower.register_forward_pre_hook(hook, with_kwargs=True)


def runtime_pixels(image_path: str):
    """The NHWC float32 tensor the runtime feeds the vision encoder for an image that already has
    the target size (decode to RGB, / 255): what the parity check gives the bare vision graph."""
    import numpy as np
    from PIL import Image

    with Image.open(image_path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return (array / RUNTIME_PIXEL_DIVISOR)[None]
