"""What every manifest model shares: the strict frozen base (Spec), the base of target specs
(TargetSpec's members: TargetBase, which says which components a target contains and checks its
references to other targets), and the validators of values that recur across specs (sizes,
relative paths, globs, pickles, regular expressions that cannot backtrack). Imports only pydantic
and the standard library."""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, model_validator

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


def parse_size(value: Any) -> Any:
    """Sizes may be written '2GB' or '512MiB'; stored as bytes."""
    if isinstance(value, str) and len(value) > 40:
        raise ValueError(f"size {value[:20]!r}… is not a number of bytes; write e.g. 2GB, 500MB or 4294967296")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B|B)?\s*", value, flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"size {value!r} is not a number of bytes; write e.g. 2GB, 500MB or 4294967296")
        return int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
    return value


def check_relative(path: str) -> str:
    """Paths inside an output must stay inside it: no absolute paths, no '..'; and name a file."""
    if path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"path {path!r} is absolute; write a path relative to the output directory")
    parts = re.split(r"[/\\]", path)
    if ".." in parts:
        raise ValueError(f"path {path!r} climbs out with '..'; write a path inside the output directory")
    if any(part in ("", ".") for part in parts) or "\0" in path or len(path) > 255:
        raise ValueError(f"path {path!r} does not name a file; write a relative file name such as model.litertlm")
    return path


def check_glob(pattern: str) -> str:
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


def check_no_pickles(patterns: tuple[str, ...], allow_pickle: bool) -> None:
    if allow_pickle:
        return
    for pattern in patterns:
        for suffix in PICKLE_SUFFIXES:
            if _glob_can_end_with(pattern, suffix):
                raise ValueError(
                    f"files pattern {pattern!r} can take {suffix} files, which are pickles: loading one can run any code; "
                    "take *.safetensors instead, or set allow_pickle: true if you trust this source"
                )


def check_regex(value: str) -> str:
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


class TargetBase(Spec):
    """The base of a target kind's spec (manifest/targets/<kind>.py). A spec declares `kind` as a
    Literal; the manifest checks what the two methods below say."""

    def contained_components(self) -> tuple[str, ...]:
        """The components whose tensors this target contains (coverage counts them as used)."""
        return tuple(getattr(self, "components", ()))

    def check_references(self, name: str, targets: Mapping[str, "TargetBase"]) -> None:
        """Raise ValueError when this target (named `name`) refers to another target of the
        manifest (`targets`) that is not of the kind it needs. None by default."""
