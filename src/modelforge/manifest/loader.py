"""Reads a manifest file: strict YAML (no anchors, no duplicate keys, bounded size) with the line
and column of every value, so validation errors point at the manifest's own text."""

from __future__ import annotations

import collections.abc
import difflib
import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError

from modelforge.errors import ManifestError
from modelforge.hashing import digest
from modelforge.manifest.models import LocalSourceSpec, Manifest

MAX_MANIFEST_BYTES = 1 << 20
# A source here is a mistake or an attack: pseudo-files that never end (/dev/zero, /proc/kmsg) or secrets.
SYSTEM_DIRECTORIES = ("/proc", "/sys", "/dev", "/etc", "/boot", "/run")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (YAML bombs) and duplicate keys, and remembers positions."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.positions: dict[tuple, tuple[int, int]] = {}

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                None, None, "aliases (*name) are not allowed in manifests; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise yaml.MarkedYAMLError(None, None, "mapping keys must be plain strings", key_node.start_mark)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    None, None, f"key {key!r} appears twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _positions(node: yaml.Node, path: tuple, out: dict[tuple, tuple[int, int]]) -> None:
    out[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # a list or mapping as a key: construct_mapping refuses it with its position
            out.setdefault(path + (key_node.value,), (key_node.start_mark.line + 1, key_node.start_mark.column + 1))
            _positions(value_node, path + (key_node.value,), out)
            out[path + (key_node.value,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _positions(item, path + (index,), out)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple, tuple[int, int]], list[str]]:
    try:
        # O_NONBLOCK: opening a FIFO must not hang; and never read more than the limit (/dev/zero).
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise ManifestError(f"{path}: not a regular file (a directory, device or FIFO); give the path of a .yaml manifest")
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest; check the path") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot read the manifest ({error.strerror}); check permissions") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: more than 1 MiB is too large for a manifest; split or trim it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text (byte {error.start}); save the manifest as UTF-8") from None
    try:
        # The reader checks the characters as it is built: a NUL or a control character fails here.
        loader = _StrictLoader(text)
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: {' '.join(str(error).split())}; remove it") from None
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError(f"{path}: the manifest is empty; start from manifests/tiny-medgemma-text-only.yaml")
        positions: dict[tuple, tuple[int, int]] = {}
        _positions(node, (), positions)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = error.problem or error.context or "invalid YAML"
        suffix = "" if ";" in problem else "; fix the YAML syntax"
        raise ManifestError(f"{where}: {problem}{suffix}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: invalid YAML ({error}); fix the YAML syntax") from None
    except RecursionError:
        raise ManifestError(f"{path}: the YAML nests too deeply; flatten it") from None
    except (ValueError, OverflowError, TypeError) as error:
        # PyYAML's own constructors: an int of more than 4300 digits, a timestamp like 2024-13-45.
        raise ManifestError(f"{path}: a value cannot be read ({str(error)[:100]}); fix or quote it") from None
    finally:
        loader.dispose()
    return data, positions, text.splitlines()


def _yaml_loc(loc: tuple, positions: dict[tuple, tuple[int, int]]) -> tuple:
    """pydantic's loc with union tags ('hub', 'drop', 'function-after[…]') removed: only parts
    that exist in the YAML document are kept."""
    kept: tuple = ()
    for part in loc:
        if kept + (part,) in positions:
            kept += (part,)
    return kept


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int) or not re.fullmatch(r"[\w-]+", str(part)):
            # An index, or a key a user cannot read plainly ('a b', '\n', ''): quoted, on one line.
            text += f"[{part}]" if isinstance(part, int) else f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _field_names(loc: tuple) -> set[str]:
    """The keys the manifest's models allow at `loc` (pydantic's loc, union tags included), for a
    'did you mean'. Walks the type annotations from Manifest down; empty when the walk gets lost."""
    candidates: list[Any] = [Manifest]
    for part in loc:
        following: list[Any] = []
        for kind in _leaves(candidates):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                fields = {field.alias or name: field.annotation for name, field in kind.model_fields.items()}
                if part in fields:
                    following.append(fields[part])
                elif getattr(kind.model_fields.get("kind"), "default", None) == part:
                    following.append(kind)  # a discriminated union's tag: the same model
            elif typing.get_origin(kind) in (dict, collections.abc.Mapping) and isinstance(part, str):
                following.append(typing.get_args(kind)[-1])
            elif typing.get_origin(kind) in (list, tuple, collections.abc.Sequence) and isinstance(part, int):
                following.append(typing.get_args(kind)[0])
        candidates = following or candidates  # a part of pydantic's own ('function-after[…]') names no key
    return {
        field.alias or name
        for kind in _leaves(candidates) if isinstance(kind, type) and issubclass(kind, BaseModel)
        for name, field in kind.model_fields.items()
    }


def _leaves(kinds: list[Any]) -> list[Any]:
    """Annotated, Optional and Union unwrapped into the types they allow."""
    result: list[Any] = []
    for kind in kinds:
        origin = typing.get_origin(kind)
        if origin is typing.Annotated:
            result += _leaves([typing.get_args(kind)[0]])
        elif origin in (typing.Union, types.UnionType):
            result += _leaves(list(typing.get_args(kind)))
        else:
            result.append(kind)
    return result


def _validation_message(path: Path, error: ValidationError, positions: dict) -> str:
    errors = error.errors()
    first = errors[0]
    # A misspelled required key is two errors: the key missing and an unknown key beside it. The
    # unknown key is the one to point at, with its 'did you mean'.
    missing = {(tuple(item["loc"][:-1]), str(item["loc"][-1])) for item in errors if item["type"] == "missing" and item["loc"]}
    for item in errors:
        if item["type"] == "extra_forbidden" and item["loc"]:
            parent = tuple(item["loc"][:-1])
            if difflib.get_close_matches(str(item["loc"][-1]), [name for where, name in missing if where == parent], n=1, cutoff=0.75):
                first = item
                break
    loc = tuple(first["loc"])
    yaml_loc = _yaml_loc(loc, positions)
    position = positions.get(yaml_loc)
    where = f"{path}:{position[0]}:{position[1]}" if position else str(path)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), sorted(_field_names(loc[:-1])), n=1, cutoff=0.75)
        if close:
            message = f"unknown key {loc[-1]!r}; did you mean {close[0]!r}? fix its spelling"
        else:
            message = f"unknown key {loc[-1]!r}; remove it or check its spelling against schemas/manifest.schema.json"
    elif first["type"] == "missing":
        message = f"required key {loc[-1]!r} is missing; add it"
    elif first["type"] == "union_tag_invalid":
        message = f"{message}; set `kind` to one of the listed values"
    elif first["type"] == "union_tag_not_found":
        message = "`kind` is missing; add it (see schemas/manifest.schema.json for the kinds)"
    elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
        message = f"{message} (got {str(first['input'])[:60]!r})"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    # A missing or unknown key is not in the YAML at its own position; name it after its parent.
    field = _dotted(yaml_loc + ((loc[-1],) if first["type"] in ("missing", "extra_forbidden") and loc[-1] not in yaml_loc[-1:] else ()))
    if field == "(top level)" and first["type"] == "value_error":
        return f"{where}: {message}{more}"  # a whole-manifest check names its own fields
    return f"{where}: {field}: {message}{more}"


def load_manifest(path: str | Path) -> Manifest:
    """Load and validate a manifest; any problem is a one-line ManifestError with file:line:col."""
    path = Path(path)
    data, positions, _ = _read_yaml(path)
    if not isinstance(data, dict):
        raise ManifestError(f"{path}:1:1: a manifest is a mapping (name:, source:, targets: …); got {type(data).__name__}")
    try:
        digest(data)  # what the digest and the lock will need: JSON-able, encodable text
    except UnicodeEncodeError as error:
        raise ManifestError(f"{path}: {error.object[error.start:error.end]!r} is an unpaired surrogate escape; remove it") from None
    except (TypeError, ValueError):
        pass  # a date, bytes or a set: validation names the field
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        raise ManifestError(_validation_message(path, error, positions)) from None
    except RecursionError:
        raise ManifestError(f"{path}: the manifest nests too deeply; flatten it") from None
    _check_source_path(path, manifest, positions)
    return manifest


def _check_source_path(path: Path, manifest: Manifest, positions: dict) -> None:
    """A local source must not be a system directory (resolved here: validators do no I/O)."""
    spec = manifest.source
    if not isinstance(spec, LocalSourceSpec):
        return
    resolved = os.path.realpath(path.resolve().parent / spec.path)
    if resolved == "/" or any(resolved == system or resolved.startswith(system + "/") for system in SYSTEM_DIRECTORIES):
        position = positions.get(("source", "path"))
        where = f"{path}:{position[0]}:{position[1]}" if position else str(path)
        raise ManifestError(
            f"{where}: source.path: {spec.path!r} is the system directory {resolved}, not a checkpoint; "
            "point it at the directory holding config.json and the *.safetensors files"
        )


def flatten_fields(value: Any, prefix: str = "") -> dict[str, Any]:
    """Manifest content (its JSON dump) as dotted field paths → values, e.g. `targets.web.headers[2]`:
    what `diff` and `lock --check` name when fields change."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            result.update(flatten_fields(item, f"{prefix}.{key}" if prefix else str(key)))
        return result or {prefix: {}}
    if isinstance(value, list):
        result = {}
        for index, item in enumerate(value):
            result.update(flatten_fields(item, f"{prefix}[{index}]"))
        return result or {prefix: []}
    return {prefix: value}


_ABSENT = object()


class FieldChange(NamedTuple):
    """One manifest field that differs; a side that lacks the field (status added or removed) gives None."""

    path: str
    old: Any
    new: Any
    status: str  # added | removed | changed


def changed_fields(old: Any, new: Any) -> list[FieldChange]:
    """The fields that differ between two manifest contents (JSON dumps), sorted by path. An empty
    mapping or list that gained its first items (or lost its last) is named by those items only,
    not also as a change of the empty container."""
    old_flat, new_flat = flatten_fields(old), flatten_fields(new)
    changes = []
    for path in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(path, _ABSENT), new_flat.get(path, _ABSENT)
        if before == after or _emptied_container(path, before, after, new_flat) or _emptied_container(path, after, before, old_flat):
            continue
        status = "added" if before is _ABSENT else "removed" if after is _ABSENT else "changed"
        changes.append(FieldChange(path, None if before is _ABSENT else before, None if after is _ABSENT else after, status))
    return changes


def _emptied_container(path: str, value: Any, other: Any, other_flat: dict[str, Any]) -> bool:
    """Whether `value` is an empty container whose place the other side fills with items."""
    return value in ({}, []) and other is _ABSENT and any(not path or key.startswith((f"{path}.", f"{path}[")) for key in other_flat)


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the validated manifest's canonical JSON: key order and comments do not count."""
    return digest(manifest.model_dump(mode="json"))
