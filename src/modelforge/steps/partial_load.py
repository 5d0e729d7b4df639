"""Load part of a Gemma 3 checkpoint into a transformers model: build the model with every parameter
on the meta device, then read from the safetensors shards only the tensors of the modules one job
needs (the text decoder for a text export or the text parity reference; the vision tower and
projector for the vision ones), in float32 as from_pretrained would give them. A 4B multimodal
checkpoint is 17 GB in float32; the text decoder alone 15.5 GB, the vision side 1.7 GB.

Runs inside the litert worker (imports torch and safetensors lazily); imports safetensors_io.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

# The modules of transformers' Gemma3ForConditionalGeneration that only the vision path uses.
VISION_MODULES = ("model.vision_tower", "model.multi_modal_projector")
# The Hub's legacy Gemma 3 key layout → transformers' module names (its "llava" renamings, with
# SiglipVisionModel's vision_model level folded away as transformers 5 does).
LEGACY_PREFIXES = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.vision_model.", "model.vision_tower."),
    ("model.vision_tower.vision_model.", "model.vision_tower."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def module_name(key: str) -> str:
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def checkpoint_keys(checkpoint: Path) -> dict[str, tuple[Path, str]]:
    """transformers' parameter name → (shard, checkpoint key), from the safetensors headers."""
    from modelforge.safetensors_io import read_header

    keys = {}
    for shard in sorted(Path(checkpoint).glob("*.safetensors")):
        for key in read_header(shard)[0]:
            keys[module_name(key)] = (shard, key)
    return keys


def wants(part: str) -> Callable[[str], bool]:
    """Which parameter names a part reads: 'text' everything but the vision modules, 'vision' those."""
    return lambda name: name.startswith(VISION_MODULES) == (part == "vision")


@contextlib.contextmanager
def meta_parameters():
    """nn.Parameters are created on the meta device; buffers (RoPE inv_freq, embedding scales,
    which no checkpoint stores) keep their real values. litert-torch's init_params_on_meta does
    the same; this copy keeps the parity worker free of litert-torch."""
    import torch

    original = torch.nn.Module.register_parameter

    def register(self, name, parameter):
        original(self, name, parameter)
        if parameter is not None and parameter.device.type != "meta":
            self._parameters[name] = torch.nn.Parameter(parameter.to("meta"), requires_grad=parameter.requires_grad)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


class Shards:
    """Open safetensors handles, closed (and their mappings dropped) by close()."""

    def __init__(self, checkpoint: Path):
        self.keys = checkpoint_keys(checkpoint)
        self._handles: dict[Path, object] = {}

    def handle(self, shard: Path):
        import safetensors

        if shard not in self._handles:
            self._handles[shard] = safetensors.safe_open(str(shard), framework="pt", device="cpu")
        return self._handles[shard]

    def tensor(self, name: str):
        shard, key = self.keys[name]
        return self.handle(shard).get_tensor(key)

    def rows(self, name: str, indices: list[int]):
        import torch

        shard, key = self.keys[name]
        table = self.handle(shard).get_slice(key)
        return torch.cat([table[index : index + 1] for index in indices])

    def close(self) -> None:
        self._handles.clear()


def materialize(model, shards: Shards, wanted: Callable[[str], bool]) -> None:
    """Replace the meta parameters whose names `wanted` accepts by the checkpoint's tensors in
    float32; tied aliases (lm_head ↔ embed_tokens) end up sharing one parameter."""
    import torch

    replaced: dict[int, torch.nn.Parameter] = {}
    originals = []  # alive until the end: an id() of a freed meta parameter could be reused
    with torch.no_grad():
        for prefix, module in model.named_modules(remove_duplicate=False):
            for name, parameter in list(module._parameters.items()):
                full = f"{prefix}.{name}" if prefix else name
                if parameter is None or not wanted(full):
                    continue
                originals.append(parameter)
                if id(parameter) not in replaced:
                    if full not in shards.keys:
                        continue  # a tied alias: filled through the name that has a key
                    tensor = shards.tensor(full)
                    if tuple(tensor.shape) != tuple(parameter.shape):
                        shard, key = shards.keys[full]
                        raise ValueError(f"{shard.name}: {key} has shape {tuple(tensor.shape)}, the model expects {tuple(parameter.shape)}")
                    replaced[id(parameter)] = torch.nn.Parameter(tensor.to(torch.float32), requires_grad=False)
                    del tensor
                module._parameters[name] = replaced[id(parameter)]
        for prefix, module in model.named_modules(remove_duplicate=False):  # aliases met before their source
            for name, parameter in list(module._parameters.items()):
                if parameter is not None and parameter.is_meta and id(parameter) in replaced:
                    module._parameters[name] = replaced[id(parameter)]
        model.tie_weights()  # where the model ties lm_head to the embeddings by assignment, not identity
    missing = [name for name, parameter in model.named_parameters(remove_duplicate=False) if parameter.is_meta and wanted(name)]
    if missing:
        raise LookupError(f"the checkpoint has no tensor for {len(missing)} parameters, e.g. {missing[0]}")


def strip_unloaded(model) -> None:
    """Detach every submodule whose parameters all stayed on the meta device, so that tracing
    or running the model never meets a meta tensor."""
    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            parameters = list(child.parameters()) if child is not None else []
            if parameters and all(parameter.is_meta for parameter in parameters):
                parent._modules[name] = None
    left = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if left:
        raise LookupError(f"parameters left unloaded inside used modules: {', '.join(left[:3])}")
