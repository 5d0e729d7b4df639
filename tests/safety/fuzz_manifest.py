"""Property-based fuzzing of the manifest loader (hypothesis): random text, random bytes, YAML-ish
token soup, character-level edits and structured mutations of the real tiny manifests. The
property: load_manifest returns a Manifest or raises ManifestError, nothing else; a Manifest's
digest can be computed; and (with --plan) planning it against the tiny checkpoint returns a Plan
or raises a ModelforgeError.

    python tests/safety/fuzz_manifest.py --minutes 5 [--plan]

prints how many manifests it tried and every distinct failure (shrunk). test_fuzz_manifest.py runs
the same properties for a few hundred examples each."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "src"))

from modelforge.errors import ManifestError, ModelforgeError  # noqa: E402
from modelforge.manifest import load_manifest, manifest_digest  # noqa: E402

REAL = {name: yaml.safe_load((ROOT / "manifests" / f"{name}.yaml").read_text()) for name in ("tiny-medgemma-text-only", "tiny-medgemma-litertlm")}
REAL_TEXT = {name: (ROOT / "manifests" / f"{name}.yaml").read_text() for name in REAL}
TOKENS = [
    ":", ": ", "-", "- ", " ", "  ", "\n", "\t", "[", "]", "{", "}", ",", "&a ", "*a", "!!str ", "!!python/object:os.system ",
    "'", '"', "#", "?", "|", ">", "<<: ", "---\n", "...", "%YAML 1.1\n", "~", "null", "true", "1e999", ".nan", "0x1F",
    "name", "source", "kind", "local", "hub", "path", "../fixtures/tiny-medgemma", "/etc", "targets", "text", "hf_text_only", "\"\\ud800\"",
    "litertlm", "components", "match", "weights", "drop", "rename_regex", "pattern", "(a+)+", "config", "files", "carry",
    "max_shard_size", "400KB", "revision", "ab" * 20, "repo", "org/name", "\\u0000", "\x00", "\ud7ff", "é", "9" * 30,
]

# Keys a mutation adds: every field name of the manifest models (so that mutations reach deep, valid
# manifests), besides random text.
def _field_names() -> list[str]:
    from pydantic import BaseModel

    from modelforge.manifest import models

    names: set[str] = set()
    for value in vars(models).values():
        if isinstance(value, type) and issubclass(value, BaseModel):
            names.update(value.model_fields)
    return sorted(names)


FIELDS = _field_names()

# Values a mutation puts anywhere: every JSON type, edge numbers, hostile strings.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["../../etc/passwd", "/etc/passwd", "/dev/zero", "(a+)+b", "*", "*.bin", "", ".", "..", "C:\\x",
                     "language_model.*", "text_decoder", "hf_text_only", "litertlm", "local", "hub", "a" * 300, "2GB", "-1",
                     "dynamic_wi8_afp32", "none", "model.__class__", "0" * 40]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def _paths(data, prefix=()):
    """Every path into a nested dict/list: where a mutation can land."""
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from _paths(value, prefix + (index,))


@st.composite
def mutated(draw):
    """The real tiny manifest, with 1-4 values replaced, keys deleted, unknown keys added or lists emptied."""
    import copy

    name = draw(st.sampled_from(sorted(REAL)))
    data = copy.deepcopy(REAL[name])
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(data))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add", "empty"]))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        if not path:
            if action == "replace":
                data = draw(values)
            continue
        last = path[-1]
        if action == "replace":
            parent[last] = draw(values)
        elif action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent[last], dict):
            parent[last][draw(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)))] = draw(values)
        elif action == "empty" and isinstance(parent[last], (dict, list)):
            parent[last] = type(parent[last])()
        if not isinstance(data, (dict, list)):
            break
    return yaml.safe_dump(data, sort_keys=draw(st.booleans()), allow_unicode=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def edited(draw):
    """The real manifest's text with characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(sorted(REAL_TEXT.values())))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=3)))
        end = position + (0 if action == "insert" else draw(st.integers(1, 20)))
        text = text[:position] + ("" if action == "delete" else piece) + text[end:]
    return text.encode("utf-8", "surrogatepass")


STRATEGIES = {
    "random text": st.text(max_size=400).map(lambda text: text.encode("utf-8", "surrogatepass")),
    "random bytes": st.binary(max_size=400),
    "yaml token soup": st.lists(st.sampled_from(TOKENS), max_size=60).map(lambda tokens: "".join(tokens).encode("utf-8", "surrogatepass")),
    "character edits of the real manifests": edited(),
    "structured mutations of the real manifests": mutated(),
}


class Checker:
    """The property, with counters; `plan` also plans each valid manifest against the tiny checkpoint."""

    def __init__(self, directory: Path, plan: bool = False):
        self.path = directory / "manifests" / "fuzz.yaml"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not (directory / "fixtures").exists():
            os.symlink(ROOT / "fixtures", directory / "fixtures")
        self.tried = self.valid = self.refused = 0
        self.facts = _tiny_facts(directory) if plan else None

    def __call__(self, content: bytes) -> None:
        self.path.write_bytes(content)
        self.tried += 1
        try:
            manifest = load_manifest(self.path)
        except ManifestError as error:
            self.refused += 1
            assert str(error) and "\n" not in str(error), repr(str(error))
            return
        self.valid += 1
        manifest_digest(manifest)
        if self.facts is not None:
            from modelforge.planner import make_plan

            try:
                make_plan(manifest, self.facts, str(self.path), manifest_digest(manifest))
            except ModelforgeError:
                pass


def _tiny_facts(directory: Path):
    from modelforge import api
    from modelforge.executor import SilentReporter
    from modelforge.store import Store

    store = Store(directory / "store")
    try:
        project = api.open_project(ROOT / "manifests" / "tiny-medgemma-litertlm.yaml")
        return api.gather(project, store, None, SilentReporter(), need_weights=False).facts
    finally:
        store.close()


def run_for(seconds: float, plan: bool) -> int:
    started = time.monotonic()
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="modelforge-fuzz-") as scratch:
        checker = Checker(Path(scratch), plan=plan)
        rounds = 0
        while time.monotonic() - started < seconds:
            for label, strategy in STRATEGIES.items():
                if time.monotonic() - started >= seconds:
                    break
                def check(content: bytes) -> None:
                    checker(content)

                test = settings(max_examples=200, deadline=None, database=None, derandomize=False,
                                suppress_health_check=list(HealthCheck))(given(strategy)(check))
                try:
                    test()
                except Exception as error:  # a shrunk counterexample: keep the first of each kind
                    key = f"{label}: {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
                    if key not in failures:
                        failures[key] = traceback.format_exc()[-3000:]
                        print(f"FAILURE {key}", flush=True)
            rounds += 1
            print(f"{time.monotonic() - started:7.0f} s  {checker.tried} manifests ({checker.valid} valid, {checker.refused} refused), "
                  f"{len(failures)} failure(s)", flush=True)
    print(f"\nran {time.monotonic() - started:.0f} s: {checker.tried} manifests, {checker.valid} valid, {checker.refused} refused with a "
          f"ManifestError, {len(failures)} distinct failure(s){' (with planning)' if plan else ''}")
    for key, text in failures.items():
        print(f"\n--- {key}\n{text}")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--plan", action="store_true", help="also plan every valid manifest against the tiny checkpoint")
    arguments = parser.parse_args()
    sys.exit(run_for(arguments.minutes * 60, arguments.plan))


if __name__ == "__main__":
    main()
