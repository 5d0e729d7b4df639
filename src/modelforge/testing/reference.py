"""Source facts and synthetic checkpoints from a tensor list (name → shape), for tests and bench/:
the functions live in modelforge.reference (they also make offline plans of Hub manifests) and
are re-exported here under the names tests and benchmarks have always used."""

from __future__ import annotations

from modelforge.reference import (
    facts_from_shapes,
    load_tensor_shapes,
    reference_dir,
    reference_facts,
    reference_files,
    shard_assignment,
    shard_file_names,
)

__all__ = [
    "facts_from_shapes",
    "load_tensor_shapes",
    "reference_dir",
    "reference_facts",
    "reference_files",
    "shard_assignment",
    "shard_file_names",
]
