"""Reference data of known Hub checkpoints, shipped in the package (reference_data/, provenance in
its README.md): tensor names and shapes, configs and small files of MedGemma / Gemma 3 4B, no
weights. Turns them into SourceFacts, so that `plan`, `diff` and `lock` of a Hub manifest work when
the Hub is unreachable and nothing is cached: the plan's structure, coverage and memory prediction
are the real ones; file hashes are stand-ins, so step keys are not. Also used by the tests and
bench/ (through modelforge.testing.reference). Imports plan, planner and safetensors_io only."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Mapping

from modelforge.plan import SourceFile
from modelforge.plan_builder import SourceFacts
from modelforge.safetensors_io import DTYPE_BYTES, TensorInfo, _header_bytes

TENSOR_SHAPES = "gemma3-4b-DERIVED-tensor-shapes.json"
CONFIG_4B = "mlx-community_gemma-3-4b-it-bf16-config.json"

# Hub repositories the reference data describes (the 4B MedGemma / Gemma 3 multimodal layout).
REFERENCE_REPOS = {
    "google/medgemma-1.5-4b-it": "the MedGemma / Gemma 3 4B tensor list and 4B config",
}


def reference_dir() -> Path:
    """The package's reference_data/ directory (a real directory: the package is never zipped)."""
    return Path(str(resources.files("modelforge") / "reference_data"))


def describe(repo: str) -> str | None:
    """What an offline plan of repo is made from, in words, or None when no reference data fits it."""
    what = REFERENCE_REPOS.get(repo)
    if what is None:
        return None
    return f"{what} shipped with modelforge (reference_data/{TENSOR_SHAPES}, reference_data/{CONFIG_4B})"


def load_tensor_shapes(path: Path | None = None) -> tuple[dict[str, tuple[int, ...]], str]:
    data = json.loads((path or reference_dir() / TENSOR_SHAPES).read_text())
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
    """The small files of a MedGemma Hub checkpoint, from reference_data/ (stand-ins where the
    reference has none: the tokenizer files)."""
    ref = reference_dir()
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
    config = json.loads((reference_dir() / CONFIG_4B).read_text())
    return facts_from_shapes(shapes, dtype, config, reference_files())
