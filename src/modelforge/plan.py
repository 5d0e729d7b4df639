"""Plan values: frozen nodes of the build DAG and their keys. Equal nodes are equal values.
Imports only `hashing`; nothing here touches the filesystem."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from modelforge.hashing import canonical_json, digest


@dataclass(frozen=True)
class SourceFile:
    path: str  # POSIX, relative to the source root
    sha256: str
    size: int


@dataclass(frozen=True)
class SourceNode:
    """The leaf of every plan: files identified by content. Where they live (a local directory,
    the Hub cache) is not part of the node, so a --source-dir override keeps every key."""

    name: str
    files: tuple[SourceFile, ...]
    origin: Mapping[str, Any] = field(compare=False, hash=False)  # repo/commit or directory, for the lock

    @property
    def key(self) -> str:
        return digest({"source": {f.path: f.sha256 for f in self.files}})

    def file(self, path: str) -> SourceFile:
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)


@dataclass(frozen=True)
class InputRef:
    """An edge: the files `select`ed from an upstream node's outputs (all of them if None)."""

    name: str  # the name the step sees the input under
    node: str  # upstream node name
    select: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StepNode:
    """One step: its kind and version select the code, params are JSON, inputs are edges."""

    name: str
    kind: str
    version: int
    params_json: str
    inputs: tuple[InputRef, ...]
    tools: tuple[str, ...] = ()  # distributions whose versions enter the key

    @property
    def params(self) -> Any:
        return json.loads(self.params_json)

    @staticmethod
    def make(name: str, kind: str, version: int, params: Any, inputs: tuple[InputRef, ...], tools: tuple[str, ...] = ()) -> "StepNode":
        return StepNode(name, kind, version, canonical_json(params), inputs, tuple(sorted(tools)))


@dataclass(frozen=True)
class TargetNode:
    """A named output: which step's outputs are materialized under out/<name>/."""

    name: str
    kind: str
    node: str


@dataclass(frozen=True)
class Plan:
    manifest_name: str
    manifest_digest: str
    source: SourceNode
    steps: tuple[StepNode, ...]  # topologically ordered
    targets: tuple[TargetNode, ...]
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)  # coverage report etc.

    def node(self, name: str) -> SourceNode | StepNode:
        if name == self.source.name:
            return self.source
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def key_parts(step: StepNode, input_keys: Mapping[str, str], toolchain: Mapping[str, str]) -> dict[str, Any]:
    """Everything that can change a step's output, and nothing else (no paths, times, environment).

    A source file enters by its sha256 and a derived input by the key of the step that made it,
    so every key covers its inputs' content transitively and is known before anything runs:
    `plan`, `lock` and `diff` can name what would rebuild without building.
    """
    return {
        "kind": step.kind,
        "version": step.version,
        "params": digest(step.params),
        "inputs": {ref.name: digest({"node": input_keys[ref.name], "select": ref.select}) for ref in step.inputs},
        "tools": {tool: toolchain.get(tool, "absent") for tool in step.tools},
    }


def compute_keys(plan: Plan, toolchain: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """node name → {key, parts} for every node of the plan."""
    result: dict[str, dict[str, Any]] = {plan.source.name: {"key": plan.source.key, "parts": {}}}
    for step in plan.steps:
        input_keys = {}
        for ref in step.inputs:
            if ref.node == plan.source.name:
                files = ref.select if ref.select is not None else tuple(f.path for f in plan.source.files)
                input_keys[ref.name] = digest({f: plan.source.file(f).sha256 for f in files})
            else:
                input_keys[ref.name] = result[ref.node]["key"]
        parts = key_parts(step, input_keys, toolchain)
        result[step.name] = {"key": digest(parts), "parts": parts}
    return result
