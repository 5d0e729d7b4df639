"""The manifest's data model: pydantic shapes declared in YAML, strict and frozen.
No I/O here (paths are resolved by the loader, sources are fetched by the executor);
imports nothing of modelforge but `errors`."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA40 = re.compile(r"^[0-9a-f]{40}$")
NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class Spec(BaseModel):
    """One strict base: a typo in YAML is an error; a loaded manifest is never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_size(value: Any) -> Any:
    """Sizes may be written '2GB' or '512MiB'; stored as bytes."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"size {value!r} is not a number of bytes; write e.g. 2GB, 500MB or 4294967296")
        return int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
    return value


def _check_relative(path: str) -> str:
    """Paths inside an output must stay inside it: no absolute paths, no '..'."""
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"path {path!r} is absolute; write a path relative to the output directory")
    if ".." in re.split(r"[/\\]", path):
        raise ValueError(f"path {path!r} climbs out with '..'; write a path inside the output directory")
    return path


def _check_glob(pattern: str) -> str:
    if not pattern:
        raise ValueError("an empty pattern matches nothing; write a glob such as 'vision_tower.*'")
    fnmatch.translate(pattern)
    return pattern


# ----------------------------------------------------------------------------------------- source


class HubSourceSpec(Spec):
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
        return self

    _files = field_validator("files")(lambda cls, value: tuple(_check_glob(p) for p in value))


class LocalSourceSpec(Spec):
    kind: Literal["local"] = Field(description="Read a checkpoint directory on this machine.")
    path: str = Field(description="The directory, relative to the manifest file (or absolute).")
    files: tuple[str, ...] = Field(
        default=("*.safetensors", "*.json", "tokenizer.model", "*.jinja"),
        description="Glob patterns of the directory's files to take.",
    )
    _files = field_validator("files")(lambda cls, value: tuple(_check_glob(p) for p in value))


SourceSpec = Annotated[Union[HubSourceSpec, LocalSourceSpec], Field(discriminator="kind")]


# ------------------------------------------------------------------------------------- components


class ComponentSpec(Spec):
    match: tuple[str, ...] = Field(min_length=1, description="Glob patterns of source tensor names in this component.")
    description: str = Field(default="", description="What this component is, for reviewers.")
    _match = field_validator("match")(lambda cls, value: tuple(_check_glob(p) for p in value))


# ------------------------------------------------------------------------------------ weight rules


class DropRule(Spec):
    kind: Literal["drop"] = Field(description="Remove tensors from the output.")
    match: tuple[str, ...] = Field(default=(), description="Glob patterns of tensor names (as named at this rule).")
    components: tuple[str, ...] = Field(default=(), description="Drop every tensor of these components.")
    _match = field_validator("match")(lambda cls, value: tuple(_check_glob(p) for p in value))

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
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"pattern {value!r} is not a valid regular expression ({error}); fix the pattern") from None
        if re.search(r"\((?:[^()]*[+*])\)[+*{]", value):
            raise ValueError(
                f"pattern {value!r} nests a repetition inside a repetition, which can take exponential time; "
                "rewrite it without nested quantifiers"
            )
        return value


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
    _globs = field_validator("carry", "drop")(lambda cls, value: tuple(_check_glob(p) for p in value))


# ----------------------------------------------------------------------------------------- targets


class HfTextOnlyTarget(Spec):
    kind: Literal["hf_text_only"] = Field(description="A Hugging Face checkpoint: sharded safetensors, index, config, tokenizer.")
    components: tuple[str, ...] = Field(min_length=1, description="Components whose tensors make up the checkpoint.")
    max_shard_size: Annotated[int, Field(gt=0, le=2**40)] = Field(
        default=5 * 10**9, description="Largest shard in bytes (e.g. 5GB); a tensor larger than this gets a shard of its own."
    )
    _size = field_validator("max_shard_size", mode="before")(lambda cls, value: _parse_size(value))


class HoistSpec(Spec):
    """Lift a nested module to the top level of the model before tracing, so the exporter sees the
    multimodal connection points where it looks for them."""

    name: str = Field(pattern=NAME, description="Name of this hoist, for plans and reports.")
    path: str = Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Dotted attribute path of the module in the loaded model, e.g. model.vision_tower.",
    )
    to: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Top-level attribute name it becomes, e.g. vision_tower.")


# The recipes of ai-edge-quantizer 0.10.0 that need no calibration data and return a plain recipe
# (a test checks this list against the installed quantizer, so a toolchain bump cannot drift silently).
QUANTIZER_RECIPES = (
    "dynamic_legacy_wi8_afp32", "dynamic_wi2b32_afp32", "dynamic_wi2b64_afp32", "dynamic_wi2c_afp32",
    "dynamic_wi2c_hr_afp32", "dynamic_wi4_afp32", "dynamic_wi4b32_afp32", "dynamic_wi4b64_afp32", "dynamic_wi4c_afp32",
    "dynamic_wi4c_hr_afp32", "dynamic_wi8_afp32", "dynamic_wi8b32_afp32", "dynamic_wi8b64_afp32", "dynamic_wi8c_afp32",
    "dynamic_wi8c_hr_afp32", "weight_only_wi4_afp32", "weight_only_wi8_afp32",
)


def _check_recipe(value: str) -> str:
    if value != "none" and value not in QUANTIZER_RECIPES:
        import difflib

        close = difflib.get_close_matches(value, QUANTIZER_RECIPES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown quantization recipe {value!r}; {hint}valid recipes: none, {', '.join(QUANTIZER_RECIPES)}")
    return value


class RecipeOverrideSpec(Spec):
    regex: str = Field(min_length=1, description="Regular expression over op output tensor names, e.g. '.*Gemma3MLP_mlp.*'.")
    recipe: str = Field(description="ai-edge-quantizer recipe for the ops it matches (later overrides win).")
    _regex = field_validator("regex")(lambda cls, value: RenameRegexRule._compiles(value))
    _recipe = field_validator("recipe")(lambda cls, value: _check_recipe(value))


class QuantizationSpec(Spec):
    recipe: str = Field(
        default="none",
        description="ai-edge-quantizer recipe name (e.g. dynamic_wi8_afp32, weight_only_wi8_afp32, dynamic_wi4b32_afp32) or none.",
    )
    overrides: tuple[RecipeOverrideSpec, ...] = Field(default=(), description="Finer recipes scoped by regex.")
    _recipe = field_validator("recipe")(lambda cls, value: _check_recipe(value))


class SamplerSpec(Spec):
    type: Literal["top_k", "top_p", "greedy"] = Field(default="top_k", description="Sampling strategy.")
    k: int = Field(default=64, ge=1, le=1 << 20, description="Top-k.")
    p: float = Field(default=0.95, gt=0, le=1, description="Top-p.")
    temperature: float = Field(default=1.0, ge=0, le=100, description="Temperature.")


class LlmMetadataSpec(Spec):
    start_token: str = Field(default="<bos>", description="Token the runtime puts first.")
    stop_tokens: tuple[str, ...] = Field(default=("<eos>", "<end_of_turn>"), min_length=1, description="Tokens that end generation.")
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 24, description="Maximum tokens (default: cache_length).")
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Sampler defaults.")
    chat_template: str = Field(default="chat_template.jinja", description="Source file with the Jinja chat template.")


class ParitySpec(Spec):
    """A check, run as a build step and recorded in the lock: exported graphs against PyTorch."""

    prompts: tuple[str, ...] = Field(
        default=("What are the symptoms of pneumonia?", "Summarise: patient has a fever and a cough."),
        min_length=1, description="Chat prompts to compare on.",
    )
    steps: int = Field(default=24, ge=1, le=512, description="Greedy decode steps per prompt.")
    max_abs_logit: float | None = Field(default=None, gt=0, description="Fail if max |Δlogit| exceeds this (float exports).")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1, description="Fail if top-1 agreement is lower.")
    max_kl: float | None = Field(default=None, ge=0, description="Fail if the mean KL divergence exceeds this.")
    min_vision_cosine: float | None = Field(default=None, ge=-1, le=1, description="Fail if vision embedding cosine similarity is lower.")


class LitertlmTarget(Spec):
    kind: Literal["litertlm"] = Field(description="A LiteRT-LM bundle: prefill/decode graphs, tokenizer, metadata, vision encoder.")
    task: Literal["text_generation", "image_text_to_text"] = Field(description="Export the text decoder only, or the vision encoder too.")
    checkpoint: str = Field(
        default="source",
        description="What to export: 'source' (the checkpoint as fetched) or the name of an hf_text_only target of this manifest.",
    )
    file: str = Field(default="model.litertlm", description="Name of the bundle inside the target directory.")
    components: tuple[str, ...] = Field(min_length=1, description="Components this bundle contains (coverage).")
    prefill_lengths: tuple[Annotated[int, Field(ge=1, le=65536)], ...] = Field(default=(32, 128), min_length=1, description="One prefill signature per length.")
    cache_length: int = Field(default=1024, ge=8, le=1 << 20, description="KV-cache length (the longest conversation in tokens).")
    hoists: tuple[HoistSpec, ...] = Field(default=(), description="Modules lifted to the top level before tracing.")
    quantization: dict[str, QuantizationSpec] = Field(
        default_factory=dict, description="Recipe per component (text_decoder, vision_encoder…); absent means float."
    )
    metadata: LlmMetadataSpec = Field(default_factory=LlmMetadataSpec, description="LLM metadata the runtime needs.")
    parity: ParitySpec | None = Field(default=None, description="Compare against PyTorch during the build and record it.")

    _file = field_validator("file")(lambda cls, value: _check_relative(value))

    @model_validator(mode="after")
    def _consistent(self) -> "LitertlmTarget":
        too_long = [length for length in self.prefill_lengths if length > self.cache_length]
        if too_long:
            raise ValueError(
                f"prefill length {too_long[0]} is larger than cache_length {self.cache_length}; "
                "lower prefill_lengths or raise cache_length"
            )
        for component in self.quantization:
            if component not in self.components:
                raise ValueError(f"quantization names component {component!r}, which this target does not contain; add it to components")
        return self


TargetSpec = Annotated[Union[HfTextOnlyTarget, LitertlmTarget], Field(discriminator="kind")]


# ---------------------------------------------------------------------------------------- manifest


class Manifest(Spec):
    schema_version: Literal[1] = Field(default=1, description="Version of the manifest format.")
    name: str = Field(pattern=NAME, description="Name of the build; the lockfile is lock/<name>.lock.")
    description: str = Field(default="", description="What this manifest builds, for reviewers.")
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
            used += [(f"targets.{name}.components", component) for component in getattr(target, "components", ())]
            checkpoint = getattr(target, "checkpoint", "source")
            if checkpoint != "source" and getattr(self.targets.get(checkpoint), "kind", None) != "hf_text_only":
                raise ValueError(
                    f"targets.{name}.checkpoint {checkpoint!r} is neither 'source' nor an hf_text_only target of this manifest; fix it"
                )
        for where, component in used:
            if component not in known:
                raise ValueError(
                    f"{where} names component {component!r}, which is not declared; "
                    f"declare it under `components` (declared: {', '.join(sorted(known)) or 'none'})"
                )
        return self
