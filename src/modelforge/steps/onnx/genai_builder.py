"""onnxruntime-genai's model builder (0.18.0) on Gemma 3 checkpoints, with the three shims it needs
under transformers 5 (and for reproducible bytes), one for float32 accuracy on bfloat16 checkpoints,
one that keeps its int4/int8 quantization within
the machine's memory, and build-time checks of the RoPE caches and the norm gains it writes. Runs inside the onnx
worker process (steps/onnx/worker.py); imports onnxruntime_genai, transformers and torch only there.

Why each shim exists (measured on fixtures/tiny-medgemma, docs/evidence/ortweb/RESULTS.md §1):

- `flat_rope_config`: transformers 5 stores Gemma 3's RoPE per layer type
  (rope_parameters = {"full_attention": {linear, factor 8, theta 1e6}, "sliding_attention": {default,
  theta 1e4}}) and has no `rope_local_base_freq`; the builder reads the 4.x flat form
  (rope_parameters["rope_type"]) and dies with KeyError: 'rope_type'. The shim hands the builder the
  4.x form: the full-attention parameters, plus rope_theta and rope_local_base_freq. It also caps
  max_position_embeddings at the manifest's context length: the builder writes cos/sin caches of
  that many rows (131072 for Gemma 3: 268 MB of fp32 at 4B) and genai_config's max_length from it.
- `local_rope_without_scaling`: Gemma3Model.make_rotary_embedding_multi_cache builds the sliding
  layers' cos/sin caches with the global layers' linear factor 8 still set (rope_attrs
  ["rescale_factors"] is never reset), which Gemma 3 does not do: silently wrong logits (0/24 greedy
  tokens equal to PyTorch on the tiny model). The shim resets the factor to 1 for the local caches.

- `float32_gains` (accuracy of bfloat16 checkpoints; MedGemma ships bf16): the builder loads the
  checkpoint in its own dtype and writes each Gemma RMSNorm gain as `layernorm.weight + add_offset`
  (builders/base.py make_layernorm and the q/k norms of make_attention; add_offset 1 for Gemma),
  an addition done in bfloat16 before the cast to the graph's float32: every gain rounded to bf16's
  spacing near 1 (2^-7), where transformers computes 1 + weight.float(). And builders/gemma.py sets
  the embedding scale to np.round(np.sqrt(hidden_size), decimals=2) (33.94 for 1152), where
  Gemma3TextScaledWordEmbedding multiplies by the float32 tensor of hidden_size ** 0.5. The shim
  turns the loaded model's RMSNorm modules to float32 right after the builder loads it (every
  `weight + add_offset` then adds in float32: exactly 1 + fp32(weight), rounded once by the cast
  to the graph's dtype) and sets the scale to hidden_size ** 0.5 after Gemma3Model.__init__ (the
  graph's float32 constant is then transformers' float32 scale). Measured on a synthetic 2-layer
  bf16 checkpoint at Gemma 3 1B's widths (bench/bench_onnx_exporters.py, section small): the fp32
  graph's max |Δlogit| against PyTorch float32 was 2.1e-2 as built, 2.3e-4 with the gains alone
  recomputed, 4.6e-6 with both. A float32 checkpoint (fixtures/tiny-medgemma, hidden 64: scale 8.0
  either way) gets the same bytes as without the shim; only bf16 (and fp16) sources change.
  (The multimodal package's embedding.onnx, with its scale, is our own dynamo export: the scale
  matters to the decoder only when it holds the embedding, exclude_embeds=False.)

- `wheel_commit`: the builder stamps model.onnx's producer_version with `git rev-parse HEAD` run
  five directories above its own file: in a virtualenv that is whatever repository holds the
  virtualenv (here the project's checkout), so the graph's bytes changed with every commit of an
  unrelated repository. The shim gives the wheel's own commit (onnxruntime_genai.__commit__), which
  the builder falls back to when git fails.

- `streamed_to_nbits` (memory, not correctness): for int4/int8 the builder's `to_nbits` serializes
  the whole float graph to one ModelProto (`ir.to_proto`: every MatMul weight widened to float32,
  15.5 GB at MedGemma 4B) before onnxruntime's MatMulNBitsQuantizer replaces the weights one by
  one: 21.2 GiB of anonymous memory at 4B, where reading the layers took 0.5 GiB (transformers
  maps the bfloat16 shards; bench/RESULTS.md "onnx export at 4B"). The shim hands the same
  quantizer the same graph with each MatMul weight left as an empty placeholder, and gives it the
  weight (widened then, from the checkpoint's tensor) only when it quantizes that MatMul, dropping
  it right after: 6.0 GiB at 4B. The quantizer, its kernel, the order of nodes and initializers
  are onnxruntime's own: the bytes written are the same (tests/test_onnx.py compares both on the
  tiny model in int4).

`check_rope_caches` compares the four caches in the built graph with transformers' own rotary
embedding for each layer type and raises RopeMismatch when one differs: a builder that regresses
(or a shim that stops applying: the builder imports its modules through sys.path as `builders.gemma`,
so a patch of `onnxruntime_genai.models.builders.gemma` silently does nothing) fails the build.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

# The four caches Gemma3Model writes, and the transformers layer type each must equal.
CACHES = {
    "cos_cache_global": ("full_attention", "cos"),
    "sin_cache_global": ("full_attention", "sin"),
    "cos_cache_local": ("sliding_attention", "cos"),
    "sin_cache_local": ("sliding_attention", "sin"),
}
# fp32 cos/sin of positions up to 131072: float32 rounding of the angle alone is ~1e-2 at the end
# of a long table, the factor-8 bug is off by up to 2 at position 1. Compared over the first
# CHECKED_POSITIONS rows, where both are computed in float32 from the same formula (< 1e-5 apart).
TOLERANCE = 1e-4
CHECKED_POSITIONS = 4096


class RopeMismatch(Exception):
    """The builder's RoPE caches differ from transformers': the graph would compute wrong logits."""


class GainMismatch(Exception):
    """The builder's RMSNorm gains differ from transformers' float32 ones."""


class UnquantizedWeight(Exception):
    """A MatMul weight streamed_to_nbits held back was not quantized: the graph would lack it."""


def _builder_modules():
    """The builder and its Gemma module as the builder itself imports them (through sys.path)."""
    from onnxruntime_genai.models import builder  # noqa: F401  (appends the builder's directory to sys.path)

    import builders.gemma as gemma  # type: ignore[import-not-found]

    return sys.modules["onnxruntime_genai.models.builder"], gemma


def flat_rope_config(config, context_length: int):
    """The 4.x flat RoPE form of a transformers 5 Gemma 3 config (see the module docstring)."""
    text = getattr(config, "text_config", config)
    rope = getattr(text, "rope_parameters", None)
    if isinstance(rope, dict) and "full_attention" in rope:
        full, sliding = dict(rope["full_attention"]), dict(rope["sliding_attention"])
        if sliding.get("rope_type", "default") != "default":
            raise RopeMismatch(f"sliding-attention RoPE of type {sliding.get('rope_type')!r}: the builder makes only unscaled local caches")
        text.rope_parameters = full
        text.rope_theta = full["rope_theta"]
        text.rope_local_base_freq = sliding["rope_theta"]
    for holder in {id(config): config, id(text): text}.values():
        if getattr(holder, "max_position_embeddings", None) is not None:
            holder.max_position_embeddings = min(holder.max_position_embeddings, context_length)
    return config


# The doc_string of a weight's placeholder while the quantizer runs (streamed_to_nbits).
DEFERRED = "modelforge: weight deferred until its MatMul is quantized"


class DeferredWeights:
    """The MatMul weights of the builder's graph taken out of it (each replaced by an empty
    placeholder tensor marked DEFERRED) and handed out, one at a time, to onnxruntime's quantizer
    (through `from_proto`, which the quantizer module calls on the initializer it found)."""

    def __init__(self, graph, op_types):
        import numpy as np
        import onnx_ir as ir

        self.ir = ir
        self.pending: dict[str, list] = {}  # name → [the weight's tensor, MatMuls still to quantize]
        for value in list(graph.initializers.values()):
            uses = list(value.uses())
            # Only a weight that is the B input of MatMuls alone: the quantizer's other paths (Gather) read
            # their initializer differently, and they keep theirs.
            if "MatMul" not in op_types or value.const_value is None or not uses:
                continue
            if any(use.node.op_type != "MatMul" or use.idx != 1 for use in uses):
                continue
            self.pending[value.name] = [value.const_value, len(uses)]
            value.const_value = ir.Tensor(np.zeros(0, np.float32), name=value.name, doc_string=DEFERRED)

    def __getattr__(self, name):  # the quantizer module's `ir`: everything else is onnx_ir's own
        return getattr(self.ir, name)

    def c_ordered(self, tensor):
        """What the quantizer reads from a serialized float weight: a C-ordered array of the
        tensor's values. The builder's weights are lazy casts of a transposed checkpoint tensor
        (make_initializer(weight.T, to=FLOAT)); casting that view and then copying it in C order
        would hold the float32 weight twice (5.4 GB for MedGemma's 262144 × 2560 output head), so
        a float32 one is cast straight into a C-ordered array from the checkpoint tensor, when the
        lazy tensor's function holds exactly one (a widening or same-type cast: the same values)."""
        import numpy as np
        import torch

        function = getattr(tensor, "raw", None) if isinstance(tensor, self.ir.LazyTensor) else None
        cells = [cell.cell_contents for cell in (getattr(function, "__closure__", None) or ())]
        sources = [cell for cell in cells if isinstance(cell, torch.Tensor)]
        if tensor.dtype == self.ir.DataType.FLOAT and len(sources) == 1 and sources[0].is_floating_point() \
                and sources[0].element_size() <= 4 and tuple(sources[0].shape) == tuple(tensor.shape):
            array = np.empty(tuple(tensor.shape), np.float32)
            torch.from_numpy(array).copy_(sources[0])
            return array
        return np.ascontiguousarray(tensor.numpy())

    def from_proto(self, proto):
        import numpy as np
        import onnx

        if not (isinstance(proto, onnx.TensorProto) and proto.doc_string == DEFERRED):
            return self.ir.from_proto(proto)
        entry = self.pending[proto.name]
        array = self.c_ordered(entry[0])
        entry[1] -= 1
        if entry[1] == 0:
            del self.pending[proto.name]  # the last reference to the checkpoint's tensor of this weight
        return self.ir.Tensor(array, name=proto.name)


def float32_norm_weights(original):
    """Model.load_weights with the loaded model's RMSNorm weights turned to float32 (module docstring):
    the builder reads them only to add Gemma's offset and write the gain as an initializer."""

    def load_weights(self, input_path):
        model = original(self, input_path)
        for module in model.modules():
            if type(module).__name__.endswith("RMSNorm"):
                module.float()
        return model

    return load_weights


def exact_embedding_scale(original):
    """Gemma3Model.__init__ with transformers' embedding scale, hidden_size ** 0.5, for the builder's
    rounded one (module docstring). The builder names the graph's constant after the value's str
    (`/model/constants/FLOAT/{scale}`) and parses it back: a Python float round-trips exactly."""

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.embed_attrs["scale"] = float(self.hidden_size) ** 0.5

    return __init__


def streamed_to_nbits(original):
    """Model.to_nbits with its float MatMul weights deferred (module docstring)."""
    import gc

    def to_nbits(self):
        from onnxruntime.quantization import matmul_nbits_quantizer

        gc.collect()  # the transformers model the builder let go of (make_model's `del self.weights`)
        deferred = DeferredWeights(self.model.graph, set(self.quant_attrs["op_types_to_quantize"]))
        saved = matmul_nbits_quantizer.ir
        matmul_nbits_quantizer.ir = deferred
        try:
            model = original(self)
        finally:
            matmul_nbits_quantizer.ir = saved
        left = sorted(deferred.pending)
        if left:
            raise UnquantizedWeight(
                f"the builder left MatMul weights unquantized ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}): "
                "modelforge's streamed quantization (steps/onnx/genai_builder.py) only hands out weights the quantizer replaces; "
                "handle such weights there"
            )
        return model

    return to_nbits


@contextlib.contextmanager
def shims(context_length: int, fix_local_rope: bool = True, stream_weights: bool = True, fix_gains: bool = True):
    """The builder patched for the duration (module docstring). fix_local_rope=False leaves the
    builder's local-RoPE bug in place: only the tests use it, to show that the check catches it;
    stream_weights=False leaves the builder's own to_nbits: only the tests use it, to compare bytes;
    fix_gains=False leaves the builder's bf16 norm gains and rounded embedding scale: only the tests
    use it, to show the difference."""
    import transformers

    builder, gemma = _builder_modules()

    class FlatAutoConfig:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            kwargs["trust_remote_code"] = False  # never run code shipped inside a checkpoint, whatever the builder asks
            return flat_rope_config(transformers.AutoConfig.from_pretrained(*args, **kwargs), context_length)

    def multi_cache(self):
        self.cos_cache_global_name, self.sin_cache_global_name = "cos_cache_global", "sin_cache_global"
        super(gemma.Gemma3Model, self).make_rotary_embedding_caches(cos_cache_name=self.cos_cache_global_name, sin_cache_name=self.sin_cache_global_name)
        self.rope_attrs["create_caches"] = True
        self.rope_attrs["theta"] = self.rope_local_theta
        self.rope_attrs["rescale_factors"] = 1  # Gemma 3's sliding layers have no linear scaling
        self.cos_cache_local_name, self.sin_cache_local_name = "cos_cache_local", "sin_cache_local"
        super(gemma.Gemma3Model, self).make_rotary_embedding_caches(cos_cache_name=self.cos_cache_local_name, sin_cache_name=self.sin_cache_local_name)

    base = sys.modules["builders.base"]

    def wheel_commit(cls):
        import onnxruntime_genai

        return getattr(onnxruntime_genai, "__commit__", None) or None

    saved = (builder.AutoConfig, gemma.AutoConfig, gemma.Gemma3Model.make_rotary_embedding_multi_cache, base.Model.__dict__["get_genai_commit"],
             base.Model.to_nbits, base.Model.load_weights, gemma.Gemma3Model.__init__)
    builder.AutoConfig = gemma.AutoConfig = FlatAutoConfig
    base.Model.get_genai_commit = classmethod(wheel_commit)
    if stream_weights:
        base.Model.to_nbits = streamed_to_nbits(base.Model.to_nbits)
    if fix_local_rope:
        gemma.Gemma3Model.make_rotary_embedding_multi_cache = multi_cache
    if fix_gains:
        base.Model.load_weights = float32_norm_weights(base.Model.load_weights)
        gemma.Gemma3Model.__init__ = exact_embedding_scale(gemma.Gemma3Model.__init__)
    try:
        yield
    finally:
        (builder.AutoConfig, gemma.AutoConfig, gemma.Gemma3Model.make_rotary_embedding_multi_cache, base.Model.get_genai_commit,
         base.Model.to_nbits, base.Model.load_weights, gemma.Gemma3Model.__init__) = saved


def build(checkpoint: Path, out_dir: Path, cache_dir: Path, *, precision: str, block_size: int, context_length: int,
          exclude_embeds: bool, fix_local_rope: bool = True, stream_weights: bool = True, fix_gains: bool = True) -> dict:
    """The decoder (model.onnx, model.onnx.data, genai_config.json, tokenizer files) for the CPU
    execution provider, with a full (not windowed) sliding KV cache so that one graph serves
    onnxruntime-genai and a hand-driven onnxruntime loop alike (onnxruntime's GQA refuses an empty
    windowed past). Returns the RoPE and gain checks' figures; raises RopeMismatch or GainMismatch when one fails."""
    with shims(context_length, fix_local_rope, stream_weights, fix_gains):
        builder, _ = _builder_modules()
        options = [f"exclude_embeds={'true' if exclude_embeds else 'false'}", "windowed_kv_cache=false", "hf_token=false"]
        if precision in ("int4", "int8"):
            # accuracy_level 1: fp32 activations. The CPU default (4) quantizes activations to int8
            # on native CPU only, so the browser's wasm and native CPU would compute different tokens.
            options += [f"block_size={block_size}", "accuracy_level=1"]
        extra = builder.parse_extra_options(None, str(checkpoint), str(out_dir), precision, "cpu", str(cache_dir), options)
        with contextlib.redirect_stdout(sys.stderr):
            builder.create_model(None, str(checkpoint), str(out_dir), precision, "cpu", str(cache_dir), **extra)
    return {**check_rope_caches(out_dir / "model.onnx", checkpoint), **check_norm_gains(out_dir / "model.onnx", checkpoint)}


def read_initializers(model_path: Path, wanted) -> dict:
    """The initializers of a graph whose names `wanted` accepts (a container or a predicate), as numpy
    arrays, reading only their bytes of the external data file (the whole decoder is 2.7 GB at
    MedGemma 4B; the four RoPE caches 8 MB)."""
    import onnx
    from onnx import numpy_helper

    accepts = wanted if callable(wanted) else wanted.__contains__
    graph = onnx.load(str(model_path), load_external_data=False)
    return {item.name: numpy_helper.to_array(item, base_dir=str(model_path.parent)) for item in graph.graph.initializer if accepts(item.name)}


# The builder's names for Gemma 3's RMSNorm gains → the checkpoint's (after the text model's prefix).
GAIN_NAMES = (
    (re.compile(r"model\.layers\.(\d+)\.attn\.([qk]_norm)\.layernorm\.weight"), r"layers.\1.self_attn.\2.weight"),
    (re.compile(r"model\.layers\.\d+\.final_norm_layernorm\.weight"), "norm.weight"),
    (re.compile(r"model\.layers\.(\d+)\.(\w+_layernorm)\.weight"), r"layers.\1.\2.weight"),
)


def check_norm_gains(model_path: Path, checkpoint: Path) -> dict:
    """Each RMSNorm gain of the graph against transformers' float32 gain, 1 + float32(weight) of the
    checkpoint: exact when the float32_gains shim applied (a bf16 checkpoint's gains computed in
    bf16 are up to 2^-8 relative off, 2.1e-2 in the logits at 1B widths). Raises GainMismatch."""
    import numpy as np

    from modelforge.steps import partial_load

    gains = read_initializers(model_path, lambda name: any(pattern.fullmatch(name) for pattern, _ in GAIN_NAMES))
    shards = partial_load.Shards(checkpoint)
    text_keys = {name: name for name in shards.keys if not name.startswith(partial_load.VISION_MODULES)}
    worst, wrong = 0.0, []
    try:
        for name, gain in sorted(gains.items()):
            suffix = next(pattern.sub(replacement, name) for pattern, replacement in GAIN_NAMES if pattern.fullmatch(name))
            sources = [key for key in text_keys if key == suffix or key.endswith(f".{suffix}")]
            if len(sources) != 1:
                raise GainMismatch(f"the built graph's gain {name} matches {len(sources)} checkpoint tensors ({suffix}); not the Gemma 3 layout this check knows")
            expected = shards.tensor(sources[0]).float().numpy() + np.float32(1)
            delta = float(np.abs(gain.astype(np.float64) - expected).max())
            worst = max(worst, delta)
            if delta != 0.0:
                wrong.append(f"{name} (max |Δ| {delta:.3g})")
    finally:
        shards.close()
    if not gains or wrong:
        raise GainMismatch(
            f"the builder's RMSNorm gains are not transformers' float32 1 + weight ({', '.join(wrong[:3]) or 'none found in the graph'}): "
            "the graph would compute less accurate logits; the builder's Gemma norms changed, update modelforge/steps/onnx/genai_builder.py"
        )
    return {"gain_check": {"gains": len(gains), "max_abs": worst}}


def check_rope_caches(model_path: Path, checkpoint: Path) -> dict:
    """Each cos/sin cache of the graph against transformers' rotary embedding of its layer type."""
    import numpy as np
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    text = getattr(config, "text_config", config)
    caches = read_initializers(model_path, CACHES)
    missing = sorted(set(CACHES) - set(caches))
    if missing:
        raise RopeMismatch(f"the built graph has no {', '.join(missing)}: not the Gemma 3 cache layout this check knows")
    rotary = transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding(text)
    rows = min(CHECKED_POSITIONS, min(len(cache) for cache in caches.values()))
    positions = torch.arange(rows)[None]
    probe = torch.zeros(1, rows, text.hidden_size)
    report = {}
    for name, (layer_type, function) in CACHES.items():
        cos, sin = rotary(probe, positions, layer_type=layer_type)
        reference = (cos if function == "cos" else sin)[0].numpy()
        half = caches[name].shape[-1]
        delta = float(np.abs(caches[name][:rows].astype(np.float64) - reference[:, :half]).max())
        report[name] = delta
    wrong = {name: delta for name, delta in report.items() if not delta <= TOLERANCE}
    if wrong:
        shown = ", ".join(f"{name} (max |Δ| {delta:.3g})" for name, delta in wrong.items())
        raise RopeMismatch(
            f"the builder's RoPE caches differ from transformers' ({shown}, tolerance {TOLERANCE}): the graph would "
            "compute wrong logits; the builder's Gemma 3 RoPE changed, update modelforge/steps/onnx/genai_builder.py"
        )
    return {"rope_check": {"positions": rows, "tolerance": TOLERANCE, "max_abs": {k: float(f"{v:.2g}") for k, v in report.items()}}}

