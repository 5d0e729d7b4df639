"""Pure transforms the planner previews and the steps apply: weight-key rules over tensor names
and edits of config.json. No I/O; imports only `errors` and `manifest`."""

from __future__ import annotations

import copy
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from modelforge.errors import PlanError
from modelforge.manifest.models import (
    ConfigEdit,
    DeleteEdit,
    DropRule,
    HoistEdit,
    Manifest,
    RenamePrefixRule,
    RenameRegexRule,
    SetEdit,
)


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


# A tensor name is dot-separated words (model.layers.0.self_attn.q_proj.weight). Anything else
# ('../x', 'a/b', spaces, an empty segment) is a mistake in a rule or a hostile source, and names
# become paths in some loaders and converters.
SAFE_TENSOR_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")


def unsafe_tensor_name(name: str) -> str | None:
    """Why a tensor name is unsafe, or None when it is fine."""
    if not isinstance(name, str) or not name:
        return "it is empty"
    if SAFE_TENSOR_NAME.fullmatch(name) is None:
        return "it is not dot-separated words of letters, digits, '_' and '-'"
    return None


@dataclass
class WeightMapping:
    """Outcome of the rules: output name per kept source tensor, and who dropped what."""

    renamed: dict[str, str] = field(default_factory=dict)  # source name → output name (kept tensors)
    dropped: dict[str, str] = field(default_factory=dict)  # source name → the rule that dropped it
    rule_hits: list[int] = field(default_factory=list)  # per rule: how many tensors it touched


def component_of(manifest: Manifest, names: Iterable[str], where: str) -> dict[str, str]:
    """source tensor name → component; a tensor in two components is an error."""
    owner: dict[str, str] = {}
    hits = {component: 0 for component in manifest.components}
    for name in names:
        for component, spec in manifest.components.items():
            if matches(name, spec.match):
                if name in owner:
                    raise PlanError(
                        f"{where}: tensor {name!r} is in both components {owner[name]!r} and {component!r}; "
                        "make the components' `match` patterns disjoint"
                    )
                owner[name] = component
                hits[component] += 1
    for component, count in hits.items():
        if count == 0:
            raise PlanError(
                f"{where}: component {component!r} matches no tensor of the source; "
                "fix its `match` patterns (tensor names are the source's, e.g. 'language_model.*')"
            )
    return owner


def apply_weight_rules(manifest: Manifest, names: Sequence[str], owner: Mapping[str, str], where: str) -> WeightMapping:
    """Run the ordered rules over every source tensor name (each rule sees names as left by the
    previous ones). Errors: a rule that matches nothing; two tensors mapped to one name."""
    mapping = WeightMapping(rule_hits=[0] * len(manifest.weights))
    current = {name: name for name in names}
    for index, rule in enumerate(manifest.weights):
        for source_name in list(current):
            name = current[source_name]
            if isinstance(rule, DropRule):
                if matches(name, rule.match) or owner.get(source_name) in rule.components:
                    del current[source_name]
                    mapping.dropped[source_name] = f"weights[{index}]"
                    mapping.rule_hits[index] += 1
            elif isinstance(rule, RenamePrefixRule):
                if name.startswith(rule.prefix):
                    current[source_name] = rule.to + name[len(rule.prefix):]
                    mapping.rule_hits[index] += 1
            elif isinstance(rule, RenameRegexRule):
                match = re.fullmatch(rule.pattern, name)
                if match:
                    try:
                        current[source_name] = match.expand(rule.to)
                    except (re.error, IndexError) as error:
                        raise PlanError(f"{where}: weights[{index}].to {rule.to!r} is invalid ({error}); fix the replacement") from None
                    mapping.rule_hits[index] += 1
        if mapping.rule_hits[index] == 0:
            raise PlanError(
                f"{where}: weights[{index}] ({rule.kind}) matches no tensor; "
                "fix its pattern or remove the rule (a rule that does nothing hides a mistake)"
            )
    seen: dict[str, str] = {}
    for source_name, output_name in current.items():
        if output_name in seen:
            raise PlanError(
                f"{where}: tensors {seen[output_name]!r} and {source_name!r} both become {output_name!r}; "
                "change the rename rules so every output name is unique"
            )
        if not output_name:
            raise PlanError(f"{where}: tensor {source_name!r} is renamed to an empty name; fix the rename rules")
        reason = unsafe_tensor_name(output_name)
        if reason and output_name == source_name:
            raise PlanError(
                f"{where}: source tensor {source_name!r} has an unsafe name ({reason}); "
                "drop it with a weights rule or rename it to dot-separated words"
            )
        if reason:
            raise PlanError(
                f"{where}: tensor {source_name!r} becomes {output_name!r}, an unsafe name ({reason}); "
                "fix the rename rules so every output name is dot-separated words"
            )
        seen[output_name] = source_name
    mapping.renamed = current
    return mapping


def _walk(config: dict, dotted: str, create: bool) -> tuple[dict, str]:
    parts = dotted.split(".")
    node = config
    for part in parts[:-1]:
        if part not in node and create:
            node[part] = {}
        node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise KeyError(dotted)
    return node, parts[-1]


def apply_config_edits(config: Mapping[str, Any], edits: Sequence[ConfigEdit], where: str) -> dict[str, Any]:
    """config.json after the ordered edits (hoist, set, delete)."""
    result = copy.deepcopy(dict(config))
    for index, edit in enumerate(edits):
        if isinstance(edit, HoistEdit):
            sub = result.get(edit.key)
            if not isinstance(sub, dict):
                raise PlanError(
                    f"{where}: config[{index}] hoists {edit.key!r}, but config.json has no such object "
                    f"(top-level keys: {', '.join(sorted(result))}); fix `key`"
                )
            hoisted = copy.deepcopy(sub)
            for keep in edit.keep:
                if keep in result and keep not in hoisted:
                    hoisted[keep] = copy.deepcopy(result[keep])
            result = hoisted
        elif isinstance(edit, SetEdit):
            for dotted, value in edit.values.items():
                try:
                    node, key = _walk(result, dotted, create=True)
                except KeyError:
                    raise PlanError(f"{where}: config[{index}] cannot set {dotted!r}: a parent is not an object; fix the path") from None
                node[key] = copy.deepcopy(value)
        elif isinstance(edit, DeleteEdit):
            for dotted in edit.keys:
                try:
                    node, key = _walk(result, dotted, create=False)
                    del node[key]
                except KeyError:
                    raise PlanError(
                        f"{where}: config[{index}] deletes {dotted!r}, which config.json does not have; "
                        "remove it from `keys`"
                    ) from None
    return result


def config_bytes(config: Mapping[str, Any]) -> bytes:
    """How a rewritten config.json is written: sorted keys, two-space indent, trailing newline."""
    import json

    return (json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
