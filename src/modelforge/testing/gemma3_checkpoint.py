"""Synthetic Gemma 3 multimodal checkpoints with MedGemma 4B's layer shapes (hidden 2560, intermediate
10240, its head layout, the SigLIP tower at 896 px) but fewer layers, written straight from the
reference tensor list (reference/gemma3-4b-DERIVED-tensor-shapes.json) in the Hub's legacy key
layout, bf16, 2 shards. Used by bench/bench_scale.py and by the slow determinism test: real-size
tensors without 8 GB of disk. Tokenizer files come from fixtures/tiny-medgemma (its ids are all
below the real vocabulary), the 896 px processor from reference/.

Imports only the standard library, numpy and modelforge.testing.reference.
"""

from __future__ import annotations

import json
import re
import shutil
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np

from modelforge.safetensors_io import write_tensors
from modelforge.testing.reference import load_tensor_shapes, reference_dir, shard_assignment, shard_file_names

REFERENCE = reference_dir()

FIXTURE = Path(__file__).resolve().parents[3] / "fixtures" / "tiny-medgemma"
GENERATOR_VERSION = 1
REAL_VOCABULARY = 262208
TEXT_LAYERS = 34
VISION_LAYERS = 27
_POOL_VALUES = 1 << 22  # 4 Mi bf16 values: 8 MiB, reused at a different offset for each tensor
_FIXTURE_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "chat_template.jinja", "generation_config.json")
_REFERENCE_FILES = {"preprocessor_config.json": "medgemma-27b-it-preprocessor_config.json",
                    "processor_config.json": "medgemma-27b-it-processor_config.json"}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def shapes(text_layers: int, vision_layers: int = VISION_LAYERS, vocabulary: int = REAL_VOCABULARY) -> dict[str, tuple[int, ...]]:
    """The reference tensors kept for `text_layers` decoder layers and `vision_layers` SigLIP layers."""
    reference, _ = load_tensor_shapes()
    kept = {}
    for name, shape in reference.items():
        match = _LAYER.search(name)
        if match:
            limit = text_layers if name.startswith("language_model.") else vision_layers
            if int(match.group(1)) >= limit:
                continue
        if name == "language_model.model.embed_tokens.weight":
            shape = (vocabulary,) + tuple(shape[1:])
        kept[name] = tuple(shape)
    return kept


def parameter_counts(tensor_shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    counts = {"text": 0, "vision": 0}
    for name, shape in tensor_shapes.items():
        counts["text" if name.startswith("language_model.") else "vision"] += int(np.prod(shape))
    return counts


def _config(text_layers: int, vision_layers: int, vocabulary: int) -> dict:
    config = json.loads((REFERENCE / "mlx-community_gemma-3-4b-it-bf16-config.json").read_text())
    fixture = json.loads((FIXTURE / "config.json").read_text())
    for key in ("boi_token_index", "eoi_token_index", "image_token_index", "eos_token_id"):
        config[key] = fixture[key]  # the fixture tokenizer's ids
    text = config["text_config"]
    text.update({"num_hidden_layers": text_layers, "vocab_size": vocabulary, "num_attention_heads": 8, "num_key_value_heads": 4,
                 "head_dim": 256, "query_pre_attn_scalar": 256, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0})
    text["layer_types"] = ["full_attention" if (index + 1) % 6 == 0 else "sliding_attention" for index in range(text_layers)]
    config["vision_config"]["num_hidden_layers"] = vision_layers
    return config


def _pool() -> np.ndarray:
    rng = np.random.default_rng(20250101)
    values = rng.normal(0.0, 0.02, 2 * _POOL_VALUES).astype(np.float32)
    return (values.view(np.uint32) >> 16).astype(np.uint16)  # bf16 bit patterns


def _write_shard(path: Path, names: list[str], tensor_shapes: dict, pool: np.ndarray) -> int:
    """One shard, tensor by tensor, each cycled from the pool; returns its size in bytes."""

    def values(index: int, shape) -> Iterator[bytes]:
        remaining = int(np.prod(shape))
        start = (index * 7919) % _POOL_VALUES
        while remaining:
            count = min(_POOL_VALUES, remaining)
            yield pool[start : start + count].tobytes()
            remaining -= count

    write_tensors(path, [(name, "BF16", tensor_shapes[name], partial(values, index, tensor_shapes[name])) for index, name in enumerate(names)],
                  {"format": "pt"})
    return path.stat().st_size


def write_checkpoint(directory: Path, text_layers: int, vision_layers: int = VISION_LAYERS, vocabulary: int = REAL_VOCABULARY) -> dict:
    """Write (or reuse, when its stamp matches) the checkpoint; returns the stamp with parameter counts."""
    directory = Path(directory)
    tensor_shapes = shapes(text_layers, vision_layers, vocabulary)
    stamp = {"generator_version": GENERATOR_VERSION, "text_layers": text_layers, "vision_layers": vision_layers,
             "vocabulary": vocabulary, **parameter_counts(tensor_shapes)}
    stamp_path = directory / ".stamp.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp:
        return stamp
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    pool = _pool()
    weight_map = {}
    total = 0
    groups = shard_assignment(tensor_shapes, "BF16")
    for shard, names in zip(shard_file_names(len(groups)), groups):
        total += _write_shard(directory / shard, names, tensor_shapes, pool)
        weight_map.update({name: shard for name in names})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (directory / "config.json").write_text(json.dumps(_config(text_layers, vision_layers, vocabulary), indent=2) + "\n")
    for name in _FIXTURE_FILES:
        shutil.copyfile(FIXTURE / name, directory / name)
    for name, reference in _REFERENCE_FILES.items():
        shutil.copyfile(REFERENCE / reference, directory / name)
    stamp_path.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    return stamp
