"""The planner: a pure function from a manifest and cheap facts about its source (file list with
hashes, safetensors headers, config.json) to a Plan. No heavy imports, no writes.

The DAG for the text-only target (other targets add their own nodes under `targets/`)::

    source ──► transform_weights ──┐
       │                           │
       ├─────► rewrite_config ─────┼──► assemble(target) ──► out/<target>/
       │                           │
       └─────► carry_files ────────┘

Coverage is checked here, before anything runs: every source tensor belongs to a component a
target uses or is dropped by a rule, and every source file is a weight shard, config.json, carried
or dropped. Beside the steps, the plan's facts carry the disk each step will add to the store
(disk.py, from the shapes the targets' steps read), as the targets record their memory.
"""

from __future__ import annotations

from typing import Mapping

from modelforge import disk
from modelforge.errors import PlanError
from modelforge.manifest.models import Manifest
from modelforge.plan import Plan, SourceNode, StepNode, TargetNode
from modelforge.plan_builder import PlanBuilder, SourceFacts
from modelforge.targets import TARGETS
from modelforge.transforms import apply_weight_rules, component_of, matches

WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json")
HANDLED_FILES = ("config.json",)


def _check_files(manifest: Manifest, facts: SourceFacts, where: str) -> dict[str, list[str]]:
    carried, dropped, stray = [], [], []
    for item in facts.files:
        if matches(item.path, WEIGHT_FILES) or item.path in HANDLED_FILES:
            continue
        if matches(item.path, manifest.files.carry):
            carried.append(item.path)
        elif matches(item.path, manifest.files.drop):
            dropped.append(item.path)
        else:
            stray.append(item.path)
    if stray:
        raise PlanError(
            f"{where}: source files {', '.join(stray)} are neither carried nor dropped; "
            "list them under files.carry or files.drop"
        )
    for pattern in manifest.files.carry + manifest.files.drop:
        if not any(matches(item.path, (pattern,)) for item in facts.files):
            raise PlanError(f"{where}: files pattern {pattern!r} matches no source file; fix or remove it")
    return {"carried": carried, "dropped": dropped}


def make_plan(manifest: Manifest, facts: SourceFacts, manifest_path: str, manifest_digest: str) -> Plan:
    where = manifest_path
    if "config.json" not in {item.path for item in facts.files}:
        raise PlanError(f"{where}: the source has no config.json; take it with source.files")
    names = sorted(facts.tensors)
    if not names:
        raise PlanError(f"{where}: the source has no safetensors tensors; take the *.safetensors files with source.files")
    owner = component_of(manifest, names, where)
    mapping = apply_weight_rules(manifest, names, owner, where)
    used = {component for target in manifest.targets.values() for component in target.contained_components()}
    stray = [name for name in names if name not in mapping.dropped and owner.get(name) not in used]
    if stray:
        sample = ", ".join(stray[:3]) + (f" and {len(stray) - 3} more" if len(stray) > 3 else "")
        raise PlanError(
            f"{where}: {len(stray)} source tensors are neither used by a target nor dropped ({sample}); "
            "add them to a component a target uses, or drop them with a weights rule"
        )
    files = _check_files(manifest, facts, where)
    source = SourceNode("source", tuple(sorted(facts.files, key=lambda item: item.path)), dict(facts.origin))
    builder = PlanBuilder(manifest, manifest_path, facts, source, mapping, owner, TARGETS)
    targets = []
    for target_name, spec in manifest.targets.items():
        planner = TARGETS[spec.kind]
        targets.append(TargetNode(target_name, spec.kind, planner.plan(builder, target_name, spec)))
    coverage = {
        "tensors": len(names),
        "kept": len(mapping.renamed),
        "dropped": len(mapping.dropped),
        "by_component": {c: sum(1 for n in names if owner.get(n) == c) for c in manifest.components},
        "rule_hits": mapping.rule_hits,
        "files": files,
    }
    steps = _topological(builder.steps, source.name)
    return Plan(
        manifest_name=manifest.name,
        manifest_digest=manifest_digest,
        source=source,
        steps=steps,
        targets=tuple(targets),
        facts={
            "coverage": coverage, "tensor_bytes": {name: facts.tensors[name].nbytes for name in names}, **builder.plan_facts,
            "disk": _predict_disk(builder, steps, targets),
        },
    )


def _predict_disk(builder: PlanBuilder, steps: tuple[StepNode, ...], targets: list[TargetNode]) -> dict:
    """disk.py's prediction: the bytes each step adds to the store, and each target's files."""
    tensors, owner = builder.facts.tensors, builder.owner

    def shapes(components) -> dict:
        wanted = set(components)
        return {name: tuple(info.shape) for name, info in tensors.items() if owner.get(name) in wanted}

    context = disk.Context(shapes, tensors, builder.facts.config, {item.path: (item.sha256, item.size) for item in builder.facts.files})
    added, scratch, outputs, holders = disk.predict_steps(steps, builder.source.name, context)
    return {"steps": added, "scratch": {name: size for name, size in scratch.items() if size},
            "targets": {target.name: outputs[target.node] for target in targets}, "holders": holders}


def _topological(steps: Mapping[str, StepNode], source_name: str) -> tuple[StepNode, ...]:
    """The order the executor runs the steps in: each after what it reads and, among the steps ready
    at a time, first the one reading the most recently made outputs (ties by name). A step's readers
    thus follow it closely (depth first), and under a store budget its objects can go before the
    next large export arrives: MedGemma 4B's two quantizations of the 15.5 GB float text graph run
    straight after its export, not after the onnx exports (issue #26; the plan's disk prediction
    follows the same order)."""
    ordered: list[StepNode] = []
    made = {source_name: -1}  # step → its place in the order
    pending = dict(sorted(steps.items()))
    while pending:
        ready = [step for step in pending.values() if all(ref.node in made for ref in step.inputs)]
        if not ready:
            raise PlanError(f"the plan has a cycle among {', '.join(pending)}; this is a modelforge bug")
        step = min(ready, key=lambda item: (-max((made[ref.node] for ref in item.inputs), default=-1), item.name))
        made[step.name] = len(ordered)
        ordered.append(pending.pop(step.name))
    return tuple(ordered)
