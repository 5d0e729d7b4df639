"""Runs onnxruntime-genai's model builder (0.18.0) on a Gemma 3 multimodal checkpoint under
transformers 5.x. Two shims, each switchable, both recorded in RESULTS.md:

- transformers 5 stores Gemma 3's RoPE per layer type (rope_parameters = {"full_attention": {...},
  "sliding_attention": {...}}); the builder's Gemma3Model reads the 4.x flat form
  (rope_parameters["rope_type"], rope_theta, rope_local_base_freq) and dies with KeyError: 'rope_type'.
  The shim flattens it back to the 4.x form (full-attention parameters + rope_local_base_freq).
- --fix-local-rope: the builder applies the global layers' linear scaling factor to the local
  (sliding) layers' cos/sin caches too; the shim resets it to 1 for the local caches.

usage: python build_decoder.py INPUT OUTPUT EP [--fix-local-rope] [extra builder args...]
(-p fp32 unless the extra arguments give another -p: argparse keeps the last)"""

import sys

import transformers

original = transformers.AutoConfig.from_pretrained


def flattened(*args, **kwargs):
    config = original(*args, **kwargs)
    text = getattr(config, "text_config", config)
    rope = getattr(text, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        full, sliding = dict(rope["full_attention"]), dict(rope["sliding_attention"])
        text.rope_parameters = full
        text.rope_theta = full["rope_theta"]
        text.rope_local_base_freq = sliding["rope_theta"]
    return config


transformers.AutoConfig.from_pretrained = flattened

from onnxruntime_genai.models import builder  # noqa: E402
import builders.gemma as gemma  # noqa: E402  (the builder imports its modules top-level, through sys.path)

builder.AutoConfig.from_pretrained = flattened
gemma.AutoConfig.from_pretrained = flattened

arguments = sys.argv[1:]
if "--fix-local-rope" in arguments:
    arguments.remove("--fix-local-rope")

    def multi_cache(self):
        self.cos_cache_global_name, self.sin_cache_global_name = "cos_cache_global", "sin_cache_global"
        super(gemma.Gemma3Model, self).make_rotary_embedding_caches(
            cos_cache_name=self.cos_cache_global_name, sin_cache_name=self.sin_cache_global_name)
        self.rope_attrs["create_caches"] = True
        self.rope_attrs["theta"] = self.rope_local_theta
        self.rope_attrs["rescale_factors"] = 1  # the sliding layers have no linear scaling in Gemma 3
        self.cos_cache_local_name, self.sin_cache_local_name = "cos_cache_local", "sin_cache_local"
        super(gemma.Gemma3Model, self).make_rotary_embedding_caches(
            cos_cache_name=self.cos_cache_local_name, sin_cache_name=self.sin_cache_local_name)

    gemma.Gemma3Model.make_rotary_embedding_multi_cache = multi_cache

source, output, provider, *rest = arguments
sys.argv = ["builder", "-i", source, "-o", output, "-p", "fp32", "-e", provider, "-c", output + ".cache", *rest]
import runpy  # noqa: E402

runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
