"""The planning core every target planner builds on: what the planner may know about a source
without reading weight bytes (SourceFacts), the shared state target planners add their step nodes
to (PlanBuilder), and the input reference to source files (source_input). Imports only `plan`,
`manifest`, `errors`, `safetensors_io` and `transforms`: targets import it, and it imports no
target (the planner, which calls the targets, is `planner`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Mapping

from modelforge.errors import PlanError
from modelforge.manifest.models import Manifest
from modelforge.plan import InputRef, SourceFile, SourceNode, StepNode
from modelforge.safetensors_io import TensorInfo
from modelforge.transforms import WeightMapping


@dataclass(frozen=True)
class SourceFacts:
    """What the planner may know about a source without reading weight bytes."""

    files: tuple[SourceFile, ...]
    tensors: Mapping[str, TensorInfo]  # by source tensor name
    config: Mapping[str, Any]
    origin: Mapping[str, Any] = field(default_factory=dict)
    # The vendored web runtime, when a web_bundle target needs it: {"version", "files": {name: {sha256, size}}}.
    web_runtime: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PlanBuilder:
    """Shared state the target planners add nodes to; equal nodes are added once."""

    manifest: Manifest
    manifest_path: str
    facts: SourceFacts
    source: SourceNode
    mapping: WeightMapping
    owner: Mapping[str, str]
    targets: Mapping[str, ModuleType]  # target kind → its planner module (the registry, handed in by the planner)
    steps: dict[str, StepNode] = field(default_factory=dict)
    plan_facts: dict[str, Any] = field(default_factory=dict)  # what target planners report beside the steps (e.g. "memory")

    def add(self, node: StepNode) -> str:
        existing = self.steps.get(node.name)
        if existing is not None and existing != node:
            raise PlanError(f"{self.manifest_path}: two different steps are both named {node.name!r}; this is a modelforge bug")
        self.steps[node.name] = node
        return node.name

    def target(self, kind: str) -> ModuleType:
        """The planner of another target kind, for a target built on its nodes (web_bundle's
        variants plan through litertlm and onnx): through the registry, never by import, so that
        target modules stay independent of each other."""
        return self.targets[kind]

    def where(self, target: str) -> str:
        return f"{self.manifest_path}: targets.{target}"


def source_input(builder: PlanBuilder, files: list[str] | tuple[str, ...]) -> InputRef:
    return InputRef("source", builder.source.name, tuple(sorted(files)))
