"""Semantic diff of two versions of a manifest, for reviewers: changed fields, which steps and
targets are invalidated (their keys change) and which stay cached, and what can be known about
the outputs without building (rewritten config.json, tensors added/dropped/renamed, output
sizes). Reads safetensors headers only; never imports torch."""

from __future__ import annotations

import difflib
import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from modelforge import api
from modelforge.errors import ManifestError
from modelforge.executor import SilentReporter
from modelforge.lock import Lock, read_lock_or_none
from modelforge.manifest import Manifest, changed_fields
from modelforge.plan import Plan, compute_keys
from modelforge.store import Store, default_store_dir
from modelforge.transforms import apply_config_edits, config_bytes


@dataclass
class ManifestDiff:
    old_label: str
    new_label: str
    fields: list[dict[str, Any]] = field(default_factory=list)  # {path, old, new}
    steps: list[dict[str, Any]] = field(default_factory=list)  # {name, kind, status: added|removed|invalidated|cached}
    targets: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # target → {old, new} rewritten config.json text
    tensors: dict[str, Any] = field(default_factory=dict)  # target → {added, removed, renamed}
    sizes: dict[str, Any] = field(default_factory=dict)  # target → {old, new} bytes of weights
    planned_from: str | None = None  # set when the source came from reference data (the Hub out of reach)
    # check → {figure: {old, new}}: the quality figures both locks record for a check whose step the
    # change re-runs or whose figures differ (what the reviewer weighs: "int8 → int4: top-1 0.97 → 0.88").
    quality: dict[str, Any] = field(default_factory=dict)

    @property
    def rebuilds(self) -> bool:
        return any(step["status"] != "cached" for step in self.steps)


def manifest_at_revision(path: Path, revision: str) -> tuple[Path, str]:
    """Write the manifest as it was at a git revision into a temporary file beside the original
    (so relative source paths still resolve); returns (path, label)."""
    path = Path(path)
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path.parent, capture_output=True, text=True, check=True).stdout.strip()
        relative = path.resolve().relative_to(Path(top).resolve()).as_posix()
        content = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=top, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as error:
        message = (error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr or "").strip().splitlines()
        raise ManifestError(f"{path}: cannot read it at git revision {revision!r} ({message[-1] if message else 'git failed'}); check the revision") from None
    except (ValueError, FileNotFoundError):
        raise ManifestError(f"{path}: not inside a git repository; diff two files instead: modelforge diff OLD.yaml NEW.yaml") from None
    handle = tempfile.NamedTemporaryFile("wb", suffix=".yaml", prefix=f".{path.stem}.{revision[:12].replace('/', '_')}.", dir=path.parent, delete=False)
    handle.write(content)
    handle.close()
    return Path(handle.name), f"{relative}@{revision}"


def lock_at_revision(manifest_path: Path, revision: str) -> Lock | None:
    """The manifest's lockfile as it was at a git revision, or None where it had none."""
    lock_path = api.open_project(manifest_path).lock_path
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=lock_path.parent, capture_output=True, text=True, check=True).stdout.strip()
        relative = lock_path.resolve().relative_to(Path(top).resolve()).as_posix()
        content = subprocess.run(["git", "show", f"{revision}:{relative}"], cwd=top, capture_output=True, text=True, check=True).stdout
    except (subprocess.CalledProcessError, ValueError, FileNotFoundError):
        return None
    try:
        return Lock.model_validate(yaml.safe_load(content))
    except (yaml.YAMLError, ValueError):
        return None


def merge_base(path: Path) -> str:
    for branch in ("main", "origin/main", "master", "origin/master"):
        out = subprocess.run(["git", "merge-base", "HEAD", branch], cwd=Path(path).parent, capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    raise ManifestError(f"{path}: no main branch to diff against; pass --base REV")


def diff_manifests(
    old_path: Path, new_path: Path, *, old_label: str, new_label: str, store_dir: Path | None = None, source_dir: Path | None = None,
    old_lock: Lock | None = None,
) -> ManifestDiff:
    """old_lock: the lock of the old side (a revision's); default, the old manifest's lockfile."""
    old_project, new_project = api.open_project(old_path), api.open_project(new_path)
    result = ManifestDiff(old_label, new_label)
    for change in changed_fields(old_project.manifest.model_dump(mode="json"), new_project.manifest.model_dump(mode="json")):
        result.fields.append(change._asdict())
    store = Store(store_dir or default_store_dir())
    try:
        reporter = SilentReporter()
        new_gathered = api.gather(new_project, store, source_dir, reporter, need_weights=False)
        same_source = old_project.manifest.source == new_project.manifest.source
        old_gathered = new_gathered if same_source else api.gather(old_project, store, source_dir, reporter, need_weights=False)
        old_plan, new_plan = api.plan_for(old_project, old_gathered), api.plan_for(new_project, new_gathered)
        result.planned_from = new_gathered.planned_from or old_gathered.planned_from
    finally:
        store.close()
    toolchain = api.tools_of(new_plan)
    old_keys, new_keys = compute_keys(old_plan, api.tools_of(old_plan)), compute_keys(new_plan, toolchain)
    old_steps = {step.name: step for step in old_plan.steps}
    for step in new_plan.steps:
        if step.name not in old_steps:
            status = "added"
        else:
            status = "cached" if old_keys[step.name]["key"] == new_keys[step.name]["key"] else "invalidated"
        result.steps.append({"name": step.name, "kind": step.kind, "status": status})
    for name in sorted(set(old_steps) - {step.name for step in new_plan.steps}):
        result.steps.append({"name": name, "kind": old_steps[name].kind, "status": "removed"})
    statuses = {step["name"]: step["status"] for step in result.steps}
    for target in new_plan.targets:
        result.targets.append({"name": target.name, "kind": target.kind, "status": statuses.get(target.node, "added")})
    _outputs(result, old_project.manifest, old_plan, old_gathered.facts.config, new_project.manifest, new_plan, new_gathered.facts.config)
    old_lock = old_lock if old_lock is not None else read_lock_or_none(old_project.lock_path)
    _quality(result, old_lock, read_lock_or_none(new_project.lock_path), statuses)
    return result


# The figures of a check report that say how close an export is to the source, in the order shown.
QUALITY_FIGURES = (
    ("top1_agreement", "top-1"), ("mean_kl", "KL"), ("p99_kl", "p99 KL"), ("perplexity_ratio", "perplexity ratio"),
    ("max_abs_logit", "max |Δlogit|"), ("vision_cosine", "vision cosine"), ("image_token_agreement", "image answers"),
)


def _quality(result: ManifestDiff, old_lock: Lock | None, new_lock: Lock | None, statuses: Mapping[str, str]) -> None:
    """The quality figures of each check both locks record, side by side, where the change re-runs
    the check or the figures differ."""
    if old_lock is None or new_lock is None:
        return
    for name in sorted(set(old_lock.checks) & set(new_lock.checks)):
        old, new = old_lock.checks[name], new_lock.checks[name]
        figures = {key: {"old": old.get(key), "new": new.get(key)} for key, _ in QUALITY_FIGURES if old.get(key) is not None or new.get(key) is not None}
        if figures and (statuses.get(name, "cached") != "cached" or any(f["old"] != f["new"] for f in figures.values())):
            result.quality[name] = figures


def _quality_line(name: str, figures: Mapping[str, Any]) -> str:
    labels = dict(QUALITY_FIGURES)
    parts = [f"{labels[key]} {_figure(f['old'])} → {_figure(f['new'])}" for key, f in figures.items()]
    return f"{name}: {', '.join(parts)}"


def _figure(value: Any) -> str:
    return "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _weights_of(plan: Plan) -> dict[str, dict[str, str]]:
    """target → {output tensor: source tensor} from the planned transform_weights params."""
    result = {}
    for target in plan.targets:
        step = plan.node(f"{target.name}.weights") if any(s.name == f"{target.name}.weights" for s in plan.steps) else None
        if step is not None:
            result[target.name] = {out: src for shard in step.params["shards"] for out, _, src in shard["tensors"]}
    return result


def _outputs(result: ManifestDiff, old_manifest: Manifest, old_plan: Plan, old_config, new_manifest: Manifest, new_plan: Plan, new_config) -> None:
    old_text = config_bytes(apply_config_edits(old_config, old_manifest.config, "old")).decode() if old_config else ""
    new_text = config_bytes(apply_config_edits(new_config, new_manifest.config, "new")).decode() if new_config else ""
    if old_text != new_text:
        result.config["config.json"] = {"old": old_text, "new": new_text}
    old_weights, new_weights = _weights_of(old_plan), _weights_of(new_plan)
    tensors_old = {target: info for target, info in old_weights.items()}
    for target, mapping in new_weights.items():
        before = tensors_old.get(target, {})
        by_source_before = {src: out for out, src in before.items()}
        by_source_after = {src: out for out, src in mapping.items()}
        added = sorted(out for src, out in by_source_after.items() if src not in by_source_before)
        removed = sorted(out for src, out in by_source_before.items() if src not in by_source_after)
        renamed = sorted((by_source_before[src], out) for src, out in by_source_after.items() if src in by_source_before and by_source_before[src] != out)
        if added or removed or renamed:
            result.tensors[target] = {"added": added, "removed": removed, "renamed": renamed}
        old_size = sum(_nbytes(old_plan, src) for src in before.values())
        new_size = sum(_nbytes(new_plan, src) for src in mapping.values())
        if old_size != new_size:
            result.sizes[target] = {"old": old_size, "new": new_size}


def _nbytes(plan: Plan, source_tensor: str) -> int:
    return plan.facts["tensor_bytes"].get(source_tensor, 0)


def _reference_note(diff: ManifestDiff) -> str:
    return (
        f"planned offline from reference data: the Hub cannot be reached and nothing is cached, so both sides use {diff.planned_from}; "
        "which steps rebuild is exact, file hashes are stand-ins"
    )


def _field_text(change: dict[str, Any]) -> str:
    """`+ path: value` (added), `- path: value` (removed) or `~ path: old → new`."""
    if change["status"] == "added":
        return f"+ {change['path']}: {json.dumps(change['new'])}"
    if change["status"] == "removed":
        return f"- {change['path']}: {json.dumps(change['old'])}"
    return f"~ {change['path']}: {json.dumps(change['old'])} → {json.dumps(change['new'])}"


def _cell(change: dict[str, Any], side: str, absent_when: str) -> str:
    return "(absent)" if change["status"] == absent_when else f"`{json.dumps(change[side])}`"


def render_text(diff: ManifestDiff) -> str:
    lines = [f"modelforge diff {diff.old_label} → {diff.new_label}"]
    if diff.planned_from:
        lines.append(_reference_note(diff))
    if not diff.fields:
        lines.append("no manifest field changed")
    for change in diff.fields:
        lines.append(f"  {_field_text(change)}")
    lines.append("steps:")
    for step in diff.steps:
        lines.append(f"  {step['status']:<11} {step['name']} ({step['kind']})")
    for name, change in diff.config.items():
        lines.append(f"{name}:")
        lines += ["  " + line for line in difflib.unified_diff(change["old"].splitlines(), change["new"].splitlines(), "before", "after", lineterm="", n=1)]
    for target, change in diff.tensors.items():
        lines.append(f"tensors of {target}: +{len(change['added'])} -{len(change['removed'])} renamed {len(change['renamed'])}")
        lines += [f"  + {name}" for name in change["added"][:20]] + [f"  - {name}" for name in change["removed"][:20]]
        lines += [f"  ~ {old} → {new}" for old, new in change["renamed"][:20]]
    for target, size in diff.sizes.items():
        lines.append(f"size of {target} weights: {size['old']:,} → {size['new']:,} bytes")
    if diff.quality:
        lines.append("quality (the locks' checks, before → after):")
        lines += [f"  {_quality_line(name, figures)}" for name, figures in diff.quality.items()]
    lines.append("would rebuild" if diff.rebuilds else "nothing would rebuild")
    return "\n".join(lines) + "\n"


def _details(summary: str, body: list[str]) -> list[str]:
    return ["<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>", ""]


def render_markdown(diff: ManifestDiff) -> str:
    lines = [f"### modelforge diff: `{diff.old_label}` → `{diff.new_label}`", ""]
    if diff.planned_from:
        lines += [f"> {_reference_note(diff)}", ""]
    lines.append(f"**{'Rebuilds' if diff.rebuilds else 'Nothing rebuilds'}**: "
                 f"{sum(s['status'] != 'cached' for s in diff.steps)} step(s) invalidated, {sum(s['status'] == 'cached' for s in diff.steps)} cached.")
    lines.append("")
    if diff.fields:
        lines += ["| field | before | after |", "|---|---|---|"]
        lines += [f"| `{c['path']}` | {_cell(c, 'old', 'added')} | {_cell(c, 'new', 'removed')} |" for c in diff.fields]
        lines.append("")
    lines += ["| step | kind | status |", "|---|---|---|"]
    lines += [f"| `{s['name']}` | {s['kind']} | {s['status']} |" for s in diff.steps]
    lines.append("")
    for name, change in diff.config.items():
        body = ["```diff", *difflib.unified_diff(change["old"].splitlines(), change["new"].splitlines(), "before", "after", lineterm=""), "```"]
        lines += _details(f"{name} changes", body)
    for target, change in diff.tensors.items():
        body = [f"- `+ {n}`" for n in change["added"]] + [f"- `- {n}`" for n in change["removed"]] + [f"- `{o}` → `{n}`" for o, n in change["renamed"]]
        lines += _details(f"tensors of {target}: +{len(change['added'])} −{len(change['removed'])}, {len(change['renamed'])} renamed", body)
    for target, size in diff.sizes.items():
        lines.append(f"- size of `{target}` weights: {size['old']:,} → {size['new']:,} bytes")
    if diff.quality:
        labels = dict(QUALITY_FIGURES)
        lines += ["", "| check | figure | before | after |", "|---|---|---:|---:|"]
        lines += [f"| `{name}` | {labels[key]} | {_figure(f['old'])} | {_figure(f['new'])} |" for name, figures in diff.quality.items() for key, f in figures.items()]
    return "\n".join(lines).rstrip() + "\n"


def render_json(diff: ManifestDiff) -> str:
    return json.dumps(
        {"old": diff.old_label, "new": diff.new_label, "rebuilds": diff.rebuilds, "fields": diff.fields, "steps": diff.steps,
         "targets": diff.targets, "config": diff.config, "tensors": diff.tensors, "sizes": diff.sizes, "planned_from": diff.planned_from,
         "quality": diff.quality},
        indent=2, sort_keys=True,
    ) + "\n"
