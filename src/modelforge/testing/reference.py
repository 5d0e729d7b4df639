"""Source facts and synthetic checkpoints from a tensor list (name → shape), such as the real
MedGemma 4B list in reference/. Used by tests (no weights needed) and by bench/ (which
writes a full-scale checkpoint). Imports planner, plan and safetensors_io only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

from modelforge.plan import SourceFile
from modelforge.planner import SourceFacts
from modelforge.safetensors_io import DTYPE_BYTES, TensorInfo, _header_bytes

REFERENCE = Path(__file__).resolve().parents[3] / "reference"


def reference_dir() -> Path:
    """reference/ in the checkout: public MedGemma / Gemma 3 data files, copied from the team's
    shared/reference with their provenance (reference/README.md)."""
    return REFERENCE


def load_tensor_shapes(path: Path | None = None) -> tuple[dict[str, tuple[int, ...]], str]:
    data = json.loads((path or REFERENCE / "gemma3-4b-DERIVED-tensor-shapes.json").read_text())
    return {name: tuple(shape) for name, shape in data["tensors"].items()}, data["dtype"]


def shard_assignment(shapes: Mapping[str, tuple[int, ...]], dtype: str, shards: int = 2) -> list[list[str]]:
    """Split names (sorted) into `shards` runs of roughly equal bytes, as the Hub's writer does."""
    names = sorted(shapes)
    sizes = {name: _numel(shapes[name]) * DTYPE_BYTES[dtype] for name in names}
    total = sum(sizes.values())
    result: list[list[str]] = [[] for _ in range(shards)]
    running = 0
    for name in names:
        index = min(shards - 1, running * shards // total)
        result[index].append(name)
        running += sizes[name]
    return result


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count


def shard_file_names(count: int) -> list[str]:
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def facts_from_shapes(shapes: Mapping[str, tuple[int, ...]], dtype: str, config: Mapping, extra_files: Mapping[str, bytes]) -> SourceFacts:
    """SourceFacts as if a Hub checkpoint with these tensors (2 shards) and files existed.
    File hashes of the shards are derived from their headers (stand-ins: no bytes exist)."""
    tensors: dict[str, TensorInfo] = {}
    files = []
    groups = shard_assignment(shapes, dtype)
    for file_name, names in zip(shard_file_names(len(groups)), groups):
        entries = [(name, TensorInfo(name, dtype, shapes[name], file_name, 0, _numel(shapes[name]) * DTYPE_BYTES[dtype])) for name in names]
        header, offsets = _header_bytes(entries, {"format": "pt"})
        start = 8 + len(header)
        for (name, info), offset in zip(entries, offsets):
            tensors[name] = TensorInfo(name, dtype, info.shape, file_name, start + offset, start + offset + info.nbytes)
        size = start + sum(info.nbytes for _, info in entries)
        files.append(SourceFile(file_name, hashlib.sha256(header).hexdigest(), size))
    contents = dict(extra_files)
    contents["config.json"] = json.dumps(config, indent=2).encode()
    for name, content in sorted(contents.items()):
        files.append(SourceFile(name, hashlib.sha256(content).hexdigest(), len(content)))
    return SourceFacts(tuple(sorted(files, key=lambda item: item.path)), tensors, dict(config), {"kind": "hub"})


def reference_files() -> dict[str, bytes]:
    """The small files of a MedGemma Hub checkpoint, from reference/ (stand-ins where the
    reference has none: the tokenizer files)."""
    ref = REFERENCE
    return {
        "tokenizer.model": b"stand-in",
        "tokenizer.json": b"{}",
        "tokenizer_config.json": b"{}",
        "special_tokens_map.json": (ref / "medgemma-27b-it-special_tokens_map.json").read_bytes(),
        "added_tokens.json": (ref / "medgemma-27b-it-added_tokens.json").read_bytes(),
        "generation_config.json": (ref / "medgemma-27b-it-generation_config.json").read_bytes(),
        "chat_template.jinja": (ref / "medgemma-27b-it-chat_template.jinja").read_bytes(),
        "preprocessor_config.json": (ref / "medgemma-27b-it-preprocessor_config.json").read_bytes(),
        "processor_config.json": (ref / "medgemma-27b-it-processor_config.json").read_bytes(),
    }


def reference_facts() -> SourceFacts:
    """Facts of the MedGemma 1.5 4B Hub checkpoint: real tensor names and shapes, real 4B config."""
    shapes, dtype = load_tensor_shapes()
    config = json.loads((REFERENCE / "mlx-community_gemma-3-4b-it-bf16-config.json").read_text())
    return facts_from_shapes(shapes, dtype, config, reference_files())
