"""The page's image preprocessing (app/litert.js `rgbPixels`, run in node) against the source model's
own processor (transformers' Gemma3 image processor, PIL bilinear) on images that need resizing, up
and down: the page's [0, 1] pixels must be the processor's pixel_values before its rescale and
normalization (which the exported vision graph applies itself)."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from .conftest import ROOT, TINY

APP = ROOT / "src" / "modelforge" / "web" / "app" / "litert.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def _page_pixels(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    script = (
        f"import {{rgbPixels}} from {json.dumps(APP.as_uri())};\n"
        "import {readFileSync} from 'node:fs';\n"
        "const [rgb, w, h, H, W] = JSON.parse(readFileSync(0, 'utf8'));\n"
        "process.stdout.write(JSON.stringify(Array.from(rgbPixels(Float32Array.from(rgb), w, h, H, W))));\n"
    )
    payload = json.dumps([rgb.reshape(-1).tolist(), rgb.shape[1], rgb.shape[0], height, width])
    result = subprocess.run(["node", "--input-type=module", "-e", script], input=payload, capture_output=True, text=True, check=True)
    return np.array(json.loads(result.stdout), dtype=np.float32).reshape(height, width, 3)


@pytest.mark.parametrize("size", [(23, 31), (97, 130), (56, 200)])
def test_page_resize_equals_the_processor(size):
    from PIL import Image
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(TINY)
    target = processor.size["height"], processor.size["width"]
    rng = np.random.default_rng(sum(size))
    # smooth gradients plus noise: edges and flat areas both
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    rgb = np.stack([x * 255 // size[1], y * 255 // size[0], (x * y) % 256], axis=-1) + rng.integers(-20, 20, (*size, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    pixel_values = processor(images=Image.fromarray(rgb, mode="RGB"), return_tensors="np")["pixel_values"][0]
    mean, std = np.array(processor.image_mean), np.array(processor.image_std)
    expected = (pixel_values.transpose(1, 2, 0) * std + mean)  # back to [0, 1]: the graph's input
    page = _page_pixels(rgb.astype(np.float32), *target)
    assert np.abs(page - expected).max() < 0.5 / 255  # the same 8-bit values
