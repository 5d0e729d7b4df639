"""The manifest's data model: pydantic shapes declared in YAML, strict and frozen.
No I/O here (paths are resolved by the loader, sources are fetched by the executor);
imports nothing of modelforge but `errors`."""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

SHA40 = re.compile(r"^[0-9a-f]{40}$")
NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


class Spec(BaseModel):
    """One strict base: a typo in YAML is an error; a loaded manifest is never mutated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads true as 1: `max_shard_size: true` would silently mean one byte.
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name)
                values = value if isinstance(value, (list, tuple)) else [value]
                if any(isinstance(item, bool) for item in values) and re.search(r"\b(int|float)\b|Literal\[1\]", str(field.annotation)):
                    raise ValueError(f"{name}: {str(value).lower()} is not a number; write a number")
        return data


def _parse_size(value: Any) -> Any:
    """Sizes may be written '2GB' or '512MiB'; stored as bytes."""
    if isinstance(value, str) and len(value) > 40:
        raise ValueError(f"size {value[:20]!r}… is not a number of bytes; write e.g. 2GB, 500MB or 4294967296")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"size {value!r} is not a number of bytes; write e.g. 2GB, 500MB or 4294967296")
        return int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
    return value


def _check_relative(path: str) -> str:
    """Paths inside an output must stay inside it: no absolute paths, no '..'; and name a file."""
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"path {path!r} is absolute; write a path relative to the output directory")
    parts = re.split(r"[/\\]", path)
    if ".." in parts:
        raise ValueError(f"path {path!r} climbs out with '..'; write a path inside the output directory")
    if any(part in ("", ".") for part in parts) or "\0" in path or len(path) > 255:
        raise ValueError(f"path {path!r} does not name a file; write a relative file name such as model.litertlm")
    return path


def _check_glob(pattern: str) -> str:
    if not pattern:
        raise ValueError("an empty pattern matches nothing; write a glob such as 'vision_tower.*'")
    fnmatch.translate(pattern)
    return pattern


# Formats whose loading runs code: torch's .bin/.pt (pickles), plain pickles, joblib, Lightning checkpoints.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def _glob_can_end_with(pattern: str, suffix: str) -> bool:
    """Whether some file name this glob matches ends with suffix (compared case-insensitively):
    the glob is read backwards until a '*', which can end with anything."""
    tokens = re.findall(r"\*|\?|\[!?\]?[^\]]*\]|.", pattern, flags=re.DOTALL)
    for token, char in zip(reversed(tokens), reversed(suffix)):
        if token == "*":
            return True
        if token == "?":
            continue
        if len(token) > 1:  # a [class]
            if not (fnmatch.fnmatchcase(char, token) or fnmatch.fnmatchcase(char.upper(), token)):
                return False
        elif token.lower() != char:
            return False
    return len(tokens) >= len(suffix)


def _check_no_pickles(patterns: tuple[str, ...], allow_pickle: bool) -> None:
    if allow_pickle:
        return
    for pattern in patterns:
        for suffix in PICKLE_SUFFIXES:
            if _glob_can_end_with(pattern, suffix):
                raise ValueError(
                    f"files pattern {pattern!r} can take {suffix} files, which are pickles: loading one can run any code; "
                    "take *.safetensors instead, or set allow_pickle: true if you trust this source"
                )


def _check_regex(value: str) -> str:
    """A regular expression that compiles and cannot backtrack for exponential (or high polynomial)
    time on a tensor name: manifests come from pull requests, and `plan` must not hang on one."""
    if len(value) > 1000:
        raise ValueError(f"pattern of {len(value)} characters is too long (limit 1000); write a shorter expression")
    try:
        parsed = re.compile(value)
    except (re.error, OverflowError, RecursionError) as error:
        raise ValueError(f"pattern {value!r} is not a valid regular expression ({error}); fix the pattern") from None
    problem = _backtracking(_parser.parse(parsed.pattern, parsed.flags), inside_repeat=False)
    unbounded = _count_unbounded(_parser.parse(parsed.pattern, parsed.flags))
    if problem is None and unbounded > 4:
        problem = f"has {unbounded} unbounded repetitions (at most 4), which can take high polynomial time"
    if problem:
        raise ValueError(f"pattern {value!r} {problem}; rewrite it without nested or overlapping quantifiers")
    return value


from re import _constants as _sre, _parser  # noqa: E402  (the parser `re` itself uses)

_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT, getattr(_sre, "POSSESSIVE_REPEAT", _sre.MAX_REPEAT))


def _children(op, argument) -> list:
    """The sub-patterns of one parsed regex item."""
    if op in _REPEATS:
        return [argument[2]]
    if op == _sre.SUBPATTERN:
        return [argument[3]]
    if op == _sre.BRANCH:
        return list(argument[1])
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return [argument[1]]
    if op == getattr(_sre, "ATOMIC_GROUP", None):
        return [argument]
    if op == _sre.GROUPREF_EXISTS:
        return [branch for branch in argument[1:] if branch is not None]
    return []


def _first_literal(pattern) -> int | None:
    for op, argument in pattern:
        if op == _sre.LITERAL:
            return argument
        if op == _sre.SUBPATTERN:
            return _first_literal(argument[3])
        return None
    return None


def _backtracking(pattern, inside_repeat: bool) -> str | None:
    """Why this parsed pattern can backtrack catastrophically, or None: a variable repetition
    inside a repetition (`(a+)+`, `(\\w+\\s?)*`, `((.*))*`), or inside a repetition an alternation
    whose branches can start alike (`(.|a)*`)."""
    for op, argument in pattern:
        if op in _REPEATS:
            low, high, body = argument
            if inside_repeat and high != low:
                return "nests a repetition inside a repetition, which can take exponential time"
            found = _backtracking(body, inside_repeat or high > 1)
        elif op == _sre.BRANCH and inside_repeat:
            firsts = [_first_literal(branch) for branch in argument[1]]
            if None in firsts or len(set(firsts)) != len(firsts):
                return "repeats an alternation whose branches can match the same text, which can take exponential time"
            found = next((p for branch in argument[1] if (p := _backtracking(branch, inside_repeat))), None)
        else:
            found = next((p for child in _children(op, argument) if (p := _backtracking(child, inside_repeat))), None)
        if found:
            return found
    return None


def _count_unbounded(pattern) -> int:
    count = 0
    for op, argument in pattern:
        if op in _REPEATS and argument[1] == _sre.MAXREPEAT:
            count += 1
        count += sum(_count_unbounded(child) for child in _children(op, argument))
    return count


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
        _check_no_pickles(self.files, self.allow_pickle)
        return self

    _files = field_validator("files")(lambda cls, value: tuple(_check_glob(p) for p in value))


class LocalSourceSpec(_SourceSpec):
    kind: Literal["local"] = Field(description="Read a checkpoint directory on this machine.")
    path: str = Field(min_length=1, description="The directory, relative to the manifest file (or absolute).")
    files: tuple[str, ...] = Field(
        default=("*.safetensors", "*.json", "tokenizer.model", "*.jinja"),
        description="Glob patterns of the directory's files to take.",
    )
    _files = field_validator("files")(lambda cls, value: tuple(_check_glob(p) for p in value))

    @model_validator(mode="after")
    def _safe(self) -> "LocalSourceSpec":
        if "\0" in self.path:
            raise ValueError("source.path contains a NUL character; fix the path")
        _check_no_pickles(self.files, self.allow_pickle)
        return self


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
        return _check_regex(value)


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

    @field_validator("path", "to")
    @classmethod
    def _no_dunders(cls, value: str) -> str:
        # __class__, __globals__… lead from a model to any object of the process; modules never need them.
        if any(part.startswith("__") for part in value.split(".")):
            raise ValueError(f"{value!r} names a private attribute (__…); hoist a submodule such as model.vision_tower")
        return value


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
    _chat_template = field_validator("chat_template")(lambda cls, value: _check_relative(value))


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
    min_vision_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Fail if the cosine similarity of the vision graphs' image embeddings (fed the runtime's [0, 1] pixels) "
        "with PyTorch's (fed the image processor's pixels) is lower.",
    )
    min_image_token_agreement: float | None = Field(
        default=None, ge=0, le=1,
        description="Fail if the bundle, run in the LiteRT-LM runtime on image prompts (greedy), reproduces a smaller share of "
        "PyTorch's greedy answer tokens (counted from the first) than this; 1.0 requires identical answers (float bundles).",
    )


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


class WebVariantSpec(Spec):
    name: str = Field(pattern=NAME, description="Slug of the variant's files (models/<name>-<sha16>.task for MediaPipe).")
    label: str = Field(min_length=1, max_length=200, description="What the page shows, e.g. 'MedGemma 4B · int8'.")
    source_target: str = Field(
        alias="from", description="The target of this manifest whose graphs or export settings the variant reuses: a litertlm "
        "target (runtime mediapipe or litertjs) or an onnx target (runtime onnxruntime_web)."
    )
    runtime: Literal["mediapipe", "litertjs", "onnxruntime_web"] = Field(
        default="mediapipe",
        description="What runs the variant in the page. mediapipe: a text-only MediaPipe .task (the text fallback; the web "
        "runtime rejects float embeddings, so it needs a recipe). litertjs: the litertlm target's own graphs (embedder, "
        "prefill/decode, vision encoder and adapter) on LiteRT.js, WebGPU or its wasm CPU backend, with images; the "
        "litertlm target's task must be image_text_to_text. onnxruntime_web: the onnx target's own package (decoder, "
        "embedding and vision graphs at the onnx target's precision) on onnxruntime-web, WebGPU or its wasm CPU backend, "
        "with images when the onnx target has them: how MedGemma 4B reads images in the browser (docs/web-routes.md).",
    )
    recipe: str | None = Field(
        default=None,
        description="Quantization of the text decoder (default: the litertlm target's). MediaPipe variants need quantized "
        "embeddings (not none); a litertjs variant may be float (none). The litertlm target's recipe reuses its very steps.",
    )
    vision_recipe: str = Field(
        default="none",
        description="litertjs only: quantization of the vision encoder and projector. Default none (float): LiteRT.js 2.5.3 "
        "cannot compile int8 weight-only vision graphs on WebGPU (the page then runs them on its wasm CPU backend).",
    )
    max_tokens: int | None = Field(default=None, ge=1, le=1 << 20, description="Input + output tokens (default: the cache length).")
    stream_weights: bool = Field(
        default=False,
        description="litertjs only: ship the decoder and embedder with their quantized weights in separate files that the page "
        "streams into WebGPU buffers (loadModelAndWeights), so that only the rest of each graph enters LiteRT.js's 2 GiB wasm "
        "heap: how MedGemma 4B fits. Needs a quantized text recipe; the variant then runs on WebGPU only (the page falls back "
        "to the next variant without it). See docs/web-streamed-weights.md.",
    )

    @field_validator("recipe")
    @classmethod
    def _recipe(cls, value: str | None) -> str | None:
        return None if value is None else _check_recipe(value)

    _vision_recipe = field_validator("vision_recipe")(lambda cls, value: _check_recipe(value))

    @model_validator(mode="after")
    def _runtime(self) -> "WebVariantSpec":
        if self.runtime == "mediapipe" and self.recipe == "none":
            raise ValueError(
                "the MediaPipe web runtime rejects float embedding tables; pick a quantization recipe such as "
                "dynamic_wi8_afp32, or set runtime: litertjs for a float variant"
            )
        if self.runtime == "mediapipe" and self.vision_recipe != "none":
            raise ValueError("vision_recipe applies to runtime: litertjs variants only (a MediaPipe .task reads text only); remove it")
        if self.runtime == "mediapipe" and self.stream_weights:
            raise ValueError("stream_weights applies to runtime: litertjs variants only (MediaPipe loads a whole .task); remove it")
        if self.runtime == "onnxruntime_web" and (self.recipe is not None or self.vision_recipe != "none" or self.stream_weights):
            raise ValueError(
                "an onnxruntime_web variant ships its onnx target's graphs as they are: set their precision on the onnx target, "
                "and remove recipe, vision_recipe and stream_weights here"
            )
        if self.stream_weights and self.recipe == "none":
            raise ValueError("stream_weights streams quantized weights only (LiteRT.js reads float ones from its heap); set a quantized recipe")
        return self


class WebBundleTarget(Spec):
    kind: Literal["web_bundle"] = Field(
        description="A static page that runs the model in the browser (WebGPU; LiteRT.js variants also on its wasm CPU backend), "
        "with server configs."
    )
    title: str = Field(min_length=1, max_length=200, description="Page title.")
    variants: tuple[WebVariantSpec, ...] = Field(
        min_length=1, description="Models in priority order; the page falls back to the next one and says why."
    )

    @model_validator(mode="after")
    def _unique(self) -> "WebBundleTarget":
        names = [variant.name for variant in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique; {names} repeats one")
        return self


class OnnxPrecisionSpec(Spec):
    """The precision of one component's ONNX weights (activations stay float32)."""

    precision: Literal["fp32", "int8", "int4"] = Field(
        default="fp32",
        description="fp32, or int8 / int4 weight-only in blocks (MatMulNBits, symmetric): onnxruntime-genai's builder for "
        "the text decoder, onnxruntime's MatMulNBits quantizer for the vision graph.",
    )
    block_size: Literal[16, 32, 64, 128, 256] | None = Field(
        default=None, description="Weights per quantization block for int8 / int4 (default 32); not allowed for fp32."
    )

    @model_validator(mode="after")
    def _block(self) -> "OnnxPrecisionSpec":
        if self.precision == "fp32" and self.block_size is not None:
            raise ValueError("block_size applies to int8 and int4 only; remove it or pick precision int8 or int4")
        return self

    @property
    def blocks(self) -> int:
        return self.block_size or 32


class OnnxParitySpec(Spec):
    """A check, run as a build step and recorded in the lock: the ONNX graphs in onnxruntime (CPU) against PyTorch."""

    prompts: tuple[str, ...] = Field(
        default=("What are the symptoms of pneumonia?", "Summarise: patient has a fever and a cough."),
        min_length=1, description="Chat prompts to compare on.",
    )
    steps: int = Field(default=24, ge=1, le=512, description="Greedy decode steps per prompt (teacher-forced along PyTorch's tokens).")
    max_abs_logit: float | None = Field(default=None, gt=0, description="Fail if max |Δlogit| exceeds this (float graphs).")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1, description="Fail if the top-1 agreement with PyTorch is lower (quantized graphs).")
    max_kl: float | None = Field(default=None, ge=0, description="Fail if the mean KL divergence from PyTorch's next-token distribution exceeds this.")
    min_vision_cosine: float | None = Field(
        default=None, ge=-1, le=1,
        description="Fail if the cosine similarity of vision.onnx's image embeddings with PyTorch's (both fed the image "
        "processor's pixels, two generated test cards, worst card) is lower.",
    )


class OnnxTarget(Spec):
    kind: Literal["onnx"] = Field(
        description="ONNX graphs in onnxruntime-genai's layout: the text decoder with its KV cache (model.onnx + external "
        "data, genai_config.json, tokenizer files) and, for image_text_to_text, vision.onnx and embedding.onnx."
    )
    task: Literal["text_generation", "image_text_to_text"] = Field(description="Export the text decoder only, or the vision graphs too.")
    components: tuple[str, ...] = Field(min_length=1, description="Components this target contains (coverage).")
    context_length: int = Field(
        default=4096, ge=8, le=131072,
        description="Longest conversation in tokens: the rows of the decoder's RoPE caches and genai_config's max_length.",
    )
    precision: dict[str, OnnxPrecisionSpec] = Field(
        default_factory=dict,
        description="Precision per component (text_decoder, vision_encoder, projector); absent means fp32. vision_encoder "
        "and projector are one graph (vision.onnx) and take one precision.",
    )
    parity: OnnxParitySpec | None = Field(default=None, description="Compare against PyTorch during the build and record it.")

    @model_validator(mode="after")
    def _consistent(self) -> "OnnxTarget":
        for component in self.precision:
            if component not in self.components:
                raise ValueError(f"precision names component {component!r}, which this target does not contain; add it to components")
        default = OnnxPrecisionSpec()
        vision = {name: self.precision.get(name, default) for name in ("vision_encoder", "projector") if name in self.components}
        if len(set(vision.values())) > 1:
            raise ValueError(
                "vision_encoder and projector are one graph (vision.onnx) and need one precision; give them the same precision"
            )
        return self


TargetSpec = Annotated[Union[HfTextOnlyTarget, LitertlmTarget, OnnxTarget, WebBundleTarget], Field(discriminator="kind")]


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
            used += [(f"targets.{name}.components", component) for component in getattr(target, "components", ())]
            for variant in getattr(target, "variants", ()):
                wanted = "an onnx" if variant.runtime == "onnxruntime_web" else "a litertlm"
                if getattr(self.targets.get(variant.source_target), "kind", None) != wanted.split()[1]:
                    raise ValueError(
                        f"targets.{name}.variants: 'from: {variant.source_target}' is not {wanted} target of this manifest "
                        f"(runtime {variant.runtime} runs {wanted} target's graphs); name one of its {wanted.split()[1]} targets"
                    )
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
