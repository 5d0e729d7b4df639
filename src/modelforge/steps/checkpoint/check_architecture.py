"""Step `check_architecture`: before an HF-layout target is published, prove that its checkpoint is
what its own config.json describes. The state dict the architecture named in `architectures`
expects is compared with the shards' headers: every expected tensor present (a weight tied to
another may be absent), no tensor it does not expect, every shape equal, and the dtype config.json
declares. A mismatch fails the build naming the tensors: transformers would otherwise refuse the
output, or load it with random weights.

For Gemma3ForCausalLM (what every text-only target here publishes) the expected state dict is
written out from config.json and Gemma3TextConfig's defaults (`gemma3_text_layout`, checked
against transformers' own model by tests/test_check_architecture.py): importing torch would take
the text-only build from ~70 MB of RSS to ~450 MB for a check that reads shapes. Any other
architecture is instantiated on transformers' meta device (no weights, no memory).
Imports torch and transformers inside `_meta_model` only."""

from __future__ import annotations

import json
from typing import Any, Mapping

from modelforge.errors import ModelforgeError, StepFailed
from modelforge.safetensors_io import TensorInfo, read_header
from modelforge.steps.base import StepContext
from modelforge.transforms import unsafe_tensor_name

KIND = "check_architecture"
VERSION = 1
TOOLS = ("torch", "transformers")
REPORT = "architecture.json"  # recorded in the lock under `checks`

FLOATING = {"F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2"}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}
SHOWN = 5  # tensors named per kind of mismatch; the count says how many more


def run(context: StepContext) -> None:
    """params: {}. Input `checkpoint`: the assembled target, as it will be published."""
    target = context.name.removesuffix(".check") or "(unnamed)"
    files = context.inputs["checkpoint"]
    if "config.json" not in files:
        raise StepFailed(f"target {target}: the checkpoint has no config.json; carry or rewrite one (config: edits)")
    raw_config = json.loads(context.input_path("checkpoint", "config.json").read_text())
    actual = _tensors(context, target)
    unsafe = sorted(name for name in actual if unsafe_tensor_name(name))
    if unsafe:
        raise StepFailed(f"target {target}: unsafe tensor names {_sample(unsafe)}; fix the weights rules so names are dot-separated words")
    layout = gemma3_text_layout(target, raw_config)
    if layout is not None:
        architecture, (expected, tied), fp32_modules = raw_config["architectures"][0], layout, ()
    else:
        model = _meta_model(context, target, raw_config)
        architecture = type(model).__name__
        expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        tied, fp32_modules = _tied(model), getattr(model, "_keep_in_fp32_modules", None) or ()
    declared = raw_config.get("dtype", raw_config.get("torch_dtype"))
    report = compare(expected, tied, actual, declared, fp32_modules)
    problems = report.pop("problems")
    if problems:
        raise StepFailed(
            f"target {target}: the checkpoint does not fit its config's architecture {architecture}: {'; '.join(problems)}; "
            "fix the weights rules, the components or the config edits so that every tensor is the one the config expects"
        )
    report["architecture"] = architecture
    context.output("architecture.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


# Gemma3TextConfig's defaults (transformers 5.x) for the fields the layout reads: a config.json may
# leave any of them out (MedGemma's text_config names four). The test holds them to transformers'.
GEMMA3_TEXT_DEFAULTS = {
    "vocab_size": 262208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "attention_bias": False, "tie_word_embeddings": True,
}


def gemma3_text_layout(target: str, raw_config: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    """Gemma3ForCausalLM's state dict (name → shape) and tied weights, from config.json alone; None
    for any other architecture (transformers then builds it on the meta device)."""
    if raw_config.get("architectures") != ["Gemma3ForCausalLM"] or raw_config.get("model_type") != "gemma3_text":
        return None
    values = {key: raw_config.get(key, default) for key, default in GEMMA3_TEXT_DEFAULTS.items()}
    sizes = {key: value for key, value in values.items() if key not in ("attention_bias", "tie_word_embeddings")}
    wrong = sorted(key for key, value in sizes.items() if not isinstance(value, int) or isinstance(value, bool) or value < 1)
    if wrong:
        raise StepFailed(f"target {target}: config.json's {', '.join(wrong)} must be positive whole numbers; fix the config edits")
    hidden, inner, head = values["hidden_size"], values["intermediate_size"], values["head_dim"]
    queries, keys = values["num_attention_heads"] * head, values["num_key_value_heads"] * head
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (values["vocab_size"], hidden)}
    for index in range(values["num_hidden_layers"]):
        layer = f"model.layers.{index}"
        projections = {"q_proj": (queries, hidden), "k_proj": (keys, hidden), "v_proj": (keys, hidden), "o_proj": (hidden, queries)}
        for name, shape in projections.items():
            shapes[f"{layer}.self_attn.{name}.weight"] = shape
            if values["attention_bias"]:
                shapes[f"{layer}.self_attn.{name}.bias"] = shape[:1]
        shapes |= {f"{layer}.self_attn.q_norm.weight": (head,), f"{layer}.self_attn.k_norm.weight": (head,)}
        shapes |= {f"{layer}.mlp.gate_proj.weight": (inner, hidden), f"{layer}.mlp.up_proj.weight": (inner, hidden), f"{layer}.mlp.down_proj.weight": (hidden, inner)}
        for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            shapes[f"{layer}.{norm}.weight"] = (hidden,)
    shapes |= {"model.norm.weight": (hidden,), "lm_head.weight": (values["vocab_size"], hidden)}
    tied = {"lm_head.weight": "model.embed_tokens.weight"} if values["tie_word_embeddings"] else {}
    return shapes, tied


def compare(
    expected: Mapping[str, tuple[int, ...]],
    tied: Mapping[str, str],
    actual: Mapping[str, TensorInfo],
    declared_dtype: Any,
    fp32_modules=(),
) -> dict[str, Any]:
    """The comparison, apart from transformers: expected name → shape, tied name → the name it
    shares storage with, the checkpoint's tensors. Returns the report with its `problems`."""
    missing = sorted(
        name for name in expected
        if name not in actual and not (name in tied and tied[name] in actual)
    )
    unexpected = sorted(name for name in actual if name not in expected)
    shapes = sorted(
        f"{name} {list(actual[name].shape)} (expected {list(expected[name])})"
        for name in actual if name in expected and tuple(actual[name].shape) != tuple(expected[name])
    )
    dtypes = []
    wanted = SAFETENSORS_DTYPES.get(str(declared_dtype)) if declared_dtype is not None else None
    if wanted is not None:
        for name, info in sorted(actual.items()):
            if info.dtype in FLOATING and info.dtype != wanted and not any(f".{module}." in f".{name}" for module in fp32_modules):
                dtypes.append(f"{name} {info.dtype} (config.json says {declared_dtype})")
    problems = []
    for label, names in (("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", shapes), ("wrong dtypes", dtypes)):
        if names:
            problems.append(f"{label} {_sample(names)}")
    return {
        "problems": problems,
        "tensors": len(actual),
        "tied_absent": sorted(name for name in tied if name not in actual and name in expected),
        "dtype": wanted,
    }


def _sample(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return f"{shown} and {len(names) - SHOWN} more" if len(names) > SHOWN else shown


def _tensors(context: StepContext, target: str) -> dict[str, TensorInfo]:
    """Every tensor of the checkpoint's shards; the index, when there is one, must agree with them."""
    shards = sorted(name for name in context.inputs["checkpoint"] if name.endswith(".safetensors"))
    if not shards:
        raise StepFailed(f"target {target}: the checkpoint has no .safetensors shard; give the target a component with tensors")
    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        try:
            found, _ = read_header(context.input_path("checkpoint", shard), shard)
        except ModelforgeError as error:
            raise StepFailed(f"target {target}: {error}") from None
        for name, info in found.items():
            if name in tensors:
                raise StepFailed(f"target {target}: tensor {name!r} is in both {tensors[name].file} and {shard}; fix the weights rules")
            tensors[name] = info
    if "model.safetensors.index.json" in context.inputs["checkpoint"]:
        index = json.loads(context.input_path("checkpoint", "model.safetensors.index.json").read_text())
        weight_map = index.get("weight_map", {})
        wrong = sorted(name for name in set(weight_map) | set(tensors) if weight_map.get(name) != getattr(tensors.get(name), "file", None))
        if wrong:
            raise StepFailed(f"target {target}: model.safetensors.index.json disagrees with the shards on {_sample(wrong)}; this is a modelforge bug")
    return tensors


def _meta_model(context: StepContext, target: str, raw_config: Mapping[str, Any]):
    import logging

    # Import-time warnings about optional kernels this CPU-only check never uses would land in the
    # middle of the build's progress lines.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch
    import transformers

    architectures = raw_config.get("architectures") or []
    if len(architectures) != 1 or not isinstance(architectures[0], str):
        raise StepFailed(
            f"target {target}: config.json's architectures is {architectures!r}; set exactly one class with a config edit "
            "(e.g. architectures: [Gemma3ForCausalLM])"
        )
    model_class = getattr(transformers, architectures[0], None)
    if model_class is None or not isinstance(model_class, type) or not issubclass(model_class, transformers.PreTrainedModel):
        raise StepFailed(
            f"target {target}: config.json names the architecture {architectures[0]!r}, which transformers "
            f"{transformers.__version__} does not have; fix `architectures` with a config edit"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(context.input_dir("checkpoint")), trust_remote_code=False)
        with torch.device("meta"):
            return model_class(config)
    except Exception as error:  # transformers' own validation errors are of many types
        raise StepFailed(
            f"target {target}: transformers cannot build {architectures[0]} from the rewritten config.json "
            f"({type(error).__name__}: {str(error)[:200]}); fix the config edits"
        ) from None


def _tied(model) -> dict[str, str]:
    """Tensor name → the name it shares storage with, when the config ties them (absent is fine)."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if tied is None:  # transformers before 5
        tied = {}
    return {str(name): str(source) for name, source in dict(tied).items()}
