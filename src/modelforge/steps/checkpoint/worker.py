"""The checkpoint steps' job that needs transformers, in a fresh interpreter (steps/workers.py):
the architecture a checkpoint's config.json names, built on the meta device (no weights, no
memory), described as the state dict it expects. check_architecture compares it with the shards.

Usage: python -m modelforge.steps.checkpoint.worker REQUEST.json   (writes result.json beside it)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

MODULE = "modelforge.steps.checkpoint.worker"


def expect(request: dict) -> dict:
    """{architecture, expected: {name: shape}, tied: {name: partner}, fp32_modules}, or {error} when
    transformers cannot build the architecture the config names."""
    checkpoint, target = Path(request["checkpoint"]), request["target"]
    raw_config = json.loads((checkpoint / "config.json").read_text())
    try:
        model = _meta_model(checkpoint, target, raw_config)
    except ValueError as error:
        return {"error": str(error)}
    return {
        "architecture": type(model).__name__,
        "expected": {name: list(tensor.shape) for name, tensor in model.state_dict().items()},
        "tied": _tied(model),
        "fp32_modules": list(getattr(model, "_keep_in_fp32_modules", None) or ()),
    }


def _meta_model(checkpoint: Path, target: str, raw_config: Mapping[str, Any]):
    import logging

    # Import-time warnings about optional kernels this CPU-only check never uses would land in the
    # middle of the build's progress lines.
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch
    import transformers

    architectures = raw_config.get("architectures") or []
    if len(architectures) != 1 or not isinstance(architectures[0], str):
        raise ValueError(
            f"target {target}: config.json's architectures is {architectures!r}; set exactly one class with a config edit "
            "(e.g. architectures: [Gemma3ForCausalLM])"
        )
    model_class = getattr(transformers, architectures[0], None)
    if model_class is None or not isinstance(model_class, type) or not issubclass(model_class, transformers.PreTrainedModel):
        raise ValueError(
            f"target {target}: config.json names the architecture {architectures[0]!r}, which transformers "
            f"{transformers.__version__} does not have; fix `architectures` with a config edit"
        )
    try:
        config = transformers.AutoConfig.from_pretrained(str(checkpoint), trust_remote_code=False)
        with torch.device("meta"):
            return model_class(config)
    except Exception as error:  # transformers' own validation errors are of many types
        raise ValueError(
            f"target {target}: transformers cannot build {architectures[0]} from the rewritten config.json "
            f"({type(error).__name__}: {str(error)[:200]}); fix the config edits"
        ) from None


def _tied(model) -> dict[str, str]:
    """Tensor name → the name it shares storage with, when the config ties them (absent is fine)."""
    tied = getattr(model, "all_tied_weights_keys", None)
    if tied is None:  # transformers before 5
        tied = {}
    return {str(name): str(source) for name, source in dict(tied).items()}


ACTIONS = {"expect": expect}


if __name__ == "__main__":
    from modelforge.steps.workers import serve

    serve(ACTIONS)
