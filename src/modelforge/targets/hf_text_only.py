"""Target `hf_text_only`: a Hugging Face checkpoint of the kept tensors (sharded safetensors +
index), the rewritten config.json and the carried files. Imports its spec, `plan`, `plan_builder`,
`transforms` and its steps (steps/checkpoint/)."""

from __future__ import annotations

from modelforge.manifest.targets.hf_text_only import HfTextOnlyTarget
from modelforge.plan import InputRef, StepNode
from modelforge.plan_builder import PlanBuilder, source_input
from modelforge.steps.checkpoint import assemble, carry_files, check_architecture, rewrite_config, transform_weights
from modelforge.transforms import matches

KIND = "hf_text_only"


def shard_layout(builder: PlanBuilder, spec: HfTextOnlyTarget) -> list[dict]:
    """Greedy packing of the kept tensors, in output-name order, into shards of at most
    max_shard_size bytes; the Hub's file names (model-0000i-of-0000n.safetensors)."""
    kept = sorted(
        (output, source)
        for source, output in builder.mapping.renamed.items()
        if builder.owner.get(source) in spec.components
    )
    shards: list[list] = [[]]
    size = 0
    for output, source in kept:
        info = builder.facts.tensors[source]
        if shards[-1] and size + info.nbytes > spec.max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append([output, info.file, source])
        size += info.nbytes
    if len(shards) == 1:
        return [{"file": "model.safetensors", "tensors": shards[0]}]
    count = len(shards)
    return [{"file": f"model-{i + 1:05d}-of-{count:05d}.safetensors", "tensors": tensors} for i, tensors in enumerate(shards)]


def plan(builder: PlanBuilder, target: str, spec: HfTextOnlyTarget) -> str:
    shards = shard_layout(builder, spec)
    source_shards = sorted({src for shard in shards for _, src, _ in shard["tensors"]})
    weights = builder.add(
        StepNode.make(
            f"{target}.weights",
            transform_weights.KIND,
            transform_weights.VERSION,
            {
                "shards": shards, "metadata": {"format": "pt"}, "index": len(shards) > 1,
                "non_finite": builder.manifest.source.non_finite_weights,
            },
            (source_input(builder, source_shards),),
            transform_weights.TOOLS,
        )
    )
    config = builder.add(
        StepNode.make(
            "config",
            rewrite_config.KIND,
            rewrite_config.VERSION,
            {"edits": [edit.model_dump(mode="json") for edit in builder.manifest.config]},
            (source_input(builder, ["config.json"]),),
            rewrite_config.TOOLS,
        )
    )
    carried = builder.add(
        StepNode.make(
            "files",
            carry_files.KIND,
            carry_files.VERSION,
            {},
            (source_input(builder, _carried(builder)),),
            carry_files.TOOLS,
        )
    )
    assembled = builder.add(
        StepNode.make(
            target,
            assemble.KIND,
            assemble.VERSION,
            {"layout": {}},
            (InputRef("weights", weights), InputRef("config", config), InputRef("files", carried)),
            assemble.TOOLS,
        )
    )
    # Not upstream of the target, but every step runs before any target is materialized: a
    # checkpoint that does not fit its config is never published.
    builder.add(
        StepNode.make(
            f"{target}.check",
            check_architecture.KIND,
            check_architecture.VERSION,
            {},
            (InputRef("checkpoint", assembled),),
            check_architecture.TOOLS,
        )
    )
    return assembled


def _carried(builder: PlanBuilder) -> list[str]:
    return [item.path for item in builder.facts.files if matches(item.path, builder.manifest.files.carry)]
