"""The manifest's data model: pydantic shapes declared in YAML, strict and frozen: the source,
components, weight rules, config edits, files and the manifest itself. Each target kind's spec
lives in manifest/targets/<kind>.py (TargetSpec is derived there), the parts several targets share
in manifest/parts.py, the base and shared validators in manifest/base.py. No I/O here (paths are
resolved by the loader, sources are fetched by the executor); imports only `manifest.*` and pydantic."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_serializer, model_validator

from modelforge.manifest.base import NAME, SHA40, Spec, check_glob, check_no_pickles, check_regex
from modelforge.manifest.targets import TargetSpec


# ----------------------------------------------------------------------------------------- source


class _SourceSpec(Spec):
    """What every source kind has: the safety opt-ins."""

    allow_pickle: bool = Field(
        default=False,
        description="Take pickle files (.bin, .pt, .pth, .pkl, .ckpt) that `files` matches. Off: loading a pickle can run any code.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Must stay false: modelforge never runs Python code shipped inside a checkpoint.",
    )
    non_finite_weights: Literal["refuse", "allow"] = Field(
        default="refuse",
        description=(
            "What to do with a weight tensor that holds NaN or infinity, checked as its bytes are copied: "
            "refuse (the default: the build fails naming the tensor) or allow (ship it as the source has it)."
        ),
    )

    @field_validator("trust_remote_code")
    @classmethod
    def _no_remote_code(cls, value: bool) -> bool:
        if value:
            raise ValueError(
                "trust_remote_code: true would run Python code shipped inside the checkpoint; modelforge builds only "
                "architectures built into transformers, so remove it"
            )
        return value

    @model_serializer(mode="wrap")
    def _omit_unset_opt_ins(self, handler):
        # The opt-ins enter the manifest's digest and the lock only when set: adding them changed no lock.
        data = handler(self)
        for key in ("allow_pickle", "trust_remote_code"):
            if data.get(key) is False:
                del data[key]
        if data.get("non_finite_weights") == "refuse":
            del data["non_finite_weights"]
        return data


class HubSourceSpec(_SourceSpec):
    kind: Literal["hub"] = Field(description="Fetch from the Hugging Face Hub.")
    repo: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Hub repository id, e.g. google/medgemma-1.5-4b-it.",
    )
    revision: str = Field(description="The 40-hex commit to build from. Branch names are not reproducible.")
    allow_branch: bool = Field(
        default=False, description="Accept a branch or tag name as revision (resolved at build time; not reproducible)."
    )
    files: tuple[str, ...] = Field(
        default=("*.safetensors", "*.json", "tokenizer.model", "*.jinja"),
        description="Glob patterns of the repository files to take.",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_shorthand(cls, data: Any) -> Any:
        # `repo: org/name@<sha>` is shorthand for repo + revision.
        if isinstance(data, dict) and isinstance(data.get("repo"), str) and "@" in data["repo"]:
            if "revision" in data:
                raise ValueError("write the revision either after '@' in repo or as revision, not both")
            repo, revision = data["repo"].split("@", 1)
            data = {**data, "repo": repo, "revision": revision}
        return data

    @field_validator("revision", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, (int, float)):
            raise ValueError("revision was read as a number; quote it: revision: \"<40-hex commit>\"")
        return value

    @model_validator(mode="after")
    def _pinned(self) -> "HubSourceSpec":
        if not self.allow_branch and not SHA40.match(self.revision):
            raise ValueError(
                f"revision {self.revision!r} is not a commit; pin `revision` to a 40-hex commit "
                "(branch names are not reproducible), or set allow_branch: true"
            )
        # A branch name becomes a path in the Hub cache (refs/<name>): no climbing out of it.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}", self.revision) or ".." in self.revision:
            raise ValueError(f"revision {self.revision!r} is not a valid branch, tag or commit name; fix it")
        check_no_pickles(self.files, self.allow_pickle)
        return self

    _files = field_validator("files")(lambda cls, value: tuple(check_glob(p) for p in value))


class LocalSourceSpec(_SourceSpec):
    kind: Literal["local"] = Field(description="Read a checkpoint directory on this machine.")
    path: str = Field(min_length=1, description="The directory, relative to the manifest file (or absolute).")
    files: tuple[str, ...] = Field(
        default=("*.safetensors", "*.json", "tokenizer.model", "*.jinja"),
        description="Glob patterns of the directory's files to take.",
    )
    _files = field_validator("files")(lambda cls, value: tuple(check_glob(p) for p in value))

    @model_validator(mode="after")
    def _safe(self) -> "LocalSourceSpec":
        if "\0" in self.path:
            raise ValueError("source.path contains a NUL character; fix the path")
        check_no_pickles(self.files, self.allow_pickle)
        return self


SourceSpec = Annotated[Union[HubSourceSpec, LocalSourceSpec], Field(discriminator="kind")]


# ------------------------------------------------------------------------------------- components


class ComponentSpec(Spec):
    match: tuple[str, ...] = Field(min_length=1, description="Glob patterns of source tensor names in this component.")
    description: str = Field(default="", description="What this component is, for reviewers.")
    _match = field_validator("match")(lambda cls, value: tuple(check_glob(p) for p in value))


# ------------------------------------------------------------------------------------ weight rules


class DropRule(Spec):
    kind: Literal["drop"] = Field(description="Remove tensors from the output.")
    match: tuple[str, ...] = Field(default=(), description="Glob patterns of tensor names (as named at this rule).")
    components: tuple[str, ...] = Field(default=(), description="Drop every tensor of these components.")
    _match = field_validator("match")(lambda cls, value: tuple(check_glob(p) for p in value))

    @model_validator(mode="after")
    def _something(self) -> "DropRule":
        if not self.match and not self.components:
            raise ValueError("a drop rule needs `match` patterns or `components`")
        return self


class RenamePrefixRule(Spec):
    kind: Literal["rename_prefix"] = Field(description="Replace a leading prefix of tensor names.")
    prefix: str = Field(min_length=1, description="The prefix to replace, e.g. 'language_model.'.")
    to: str = Field(default="", description="What to put in its place (empty strips it).")


class RenameRegexRule(Spec):
    kind: Literal["rename_regex"] = Field(description="Rename tensor names that fully match a regular expression.")
    pattern: str = Field(min_length=1, description="Python regular expression matched against the whole name.")
    to: str = Field(description=r"Replacement, with \1 or \g<name> for groups.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        return check_regex(value)


WeightRule = Annotated[Union[DropRule, RenamePrefixRule, RenameRegexRule], Field(discriminator="kind")]


# ----------------------------------------------------------------------------------- config edits


class HoistEdit(Spec):
    kind: Literal["hoist"] = Field(description="Replace the config by one of its sub-configs, e.g. text_config.")
    key: str = Field(min_length=1, description="The sub-config to lift to the top level.")
    keep: tuple[str, ...] = Field(
        default=(), description="Top-level keys to carry over into the hoisted config when it lacks them."
    )


class SetEdit(Spec):
    kind: Literal["set"] = Field(description="Set keys (dotted paths reach into nested objects).")
    values: dict[str, Any] = Field(min_length=1, description="Key (dotted path) → JSON value.")


class DeleteEdit(Spec):
    kind: Literal["delete"] = Field(description="Delete keys (dotted paths reach into nested objects).")
    keys: tuple[str, ...] = Field(min_length=1, description="Keys to delete; a key that is absent is an error.")


ConfigEdit = Annotated[Union[HoistEdit, SetEdit, DeleteEdit], Field(discriminator="kind")]


class FilesSpec(Spec):
    carry: tuple[str, ...] = Field(
        default=(), description="Globs of non-weight source files copied unchanged (tokenizer, generation config)."
    )
    drop: tuple[str, ...] = Field(default=(), description="Globs of source files deliberately left out (processor files).")
    _globs = field_validator("carry", "drop")(lambda cls, value: tuple(check_glob(p) for p in value))


# ---------------------------------------------------------------------------------------- manifest


class Manifest(Spec):
    schema_version: Literal[1] = Field(default=1, description="Version of the manifest format.")
    name: str = Field(pattern=NAME, description="Name of the build; the lockfile is lock/<name>.lock.")
    description: str = Field(default="", description="What this manifest builds, for reviewers.")
    notice: str = Field(
        default="",
        max_length=300,
        description="One sentence everyone who runs the outputs must know, e.g. that the weights are random and the "
        "answers gibberish. `build` prints it last, and the web page shows it on its model line.",
    )
    source: SourceSpec = Field(description="Where the checkpoint comes from.")
    components: dict[str, ComponentSpec] = Field(
        default_factory=dict, description="Named groups of source tensors that rules and targets refer to."
    )
    weights: tuple[WeightRule, ...] = Field(default=(), description="Ordered weight-key rules: drop and rename.")
    config: tuple[ConfigEdit, ...] = Field(default=(), description="Ordered edits of config.json.")
    files: FilesSpec = Field(default_factory=FilesSpec, description="Which non-weight files travel with the outputs.")
    targets: dict[str, TargetSpec] = Field(min_length=1, description="Named outputs to build.")

    @field_validator("components", "targets")
    @classmethod
    def _names(cls, value: dict) -> dict:
        for name in value:
            if not re.match(NAME, name):
                raise ValueError(f"name {name!r} must be lower-case letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _references(self) -> "Manifest":
        known = set(self.components)
        used: list[tuple[str, str]] = []
        for index, rule in enumerate(self.weights):
            if isinstance(rule, DropRule):
                used += [(f"weights[{index}].components", name) for name in rule.components]
        for name, target in self.targets.items():
            used += [(f"targets.{name}.components", component) for component in target.contained_components()]
            target.check_references(name, self.targets)
        for where, component in used:
            if component not in known:
                raise ValueError(
                    f"{where} names component {component!r}, which is not declared; "
                    f"declare it under `components` (declared: {', '.join(sorted(known)) or 'none'})"
                )
        return self
