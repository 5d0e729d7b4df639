"""Hostile and broken manifests (tests/safety/corpus/, written by make_corpus.py): through the real
CLI, `plan` and `build` each give one `error:` line that names the problem (the pattern in
corpus/EXPECTED.json), a non-zero exit, no traceback, no internal error, and write nothing outside
the test's tmp store and output: not the repository's lock/ and dist/, not $HOME.

Each case runs in a forked child of this process through modelforge.cli.main (see
safety_support.forked_cli); every 10th case also runs as a fresh `python -m modelforge.cli`."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

import make_corpus
from safety_support import FIXTURES, ROOT, cli, forked_cli, record_figure, snapshot

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTED = json.loads((CORPUS / "EXPECTED.json").read_text())
SENTINELS = [Path("/tmp/modelforge-pwned"), Path("/tmp/modelforge-escaped.litertlm")]


def test_the_corpus_is_what_make_corpus_writes_and_has_over_100_cases():
    cases = make_corpus.cases()
    assert len(cases) >= 100 and sorted(cases) == sorted(EXPECTED)
    for name, (content, pattern) in cases.items():
        path = CORPUS / name
        assert EXPECTED[name] == pattern, name
        if isinstance(content, Path):
            assert path.is_symlink() and Path(os.readlink(path)) == content, name
        else:
            expected = content if isinstance(content, bytes) else content.encode()
            assert path.read_bytes() == expected, f"{name}: run `python tests/safety/make_corpus.py`"


@pytest.fixture(scope="module")
def arena(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    project = base / "project"
    (project / "manifests").mkdir(parents=True)
    (project / "lock").mkdir()
    shutil.copytree(FIXTURES, project / "fixtures")
    for name in EXPECTED:
        shutil.copy2(CORPUS / name, project / "manifests" / name, follow_symlinks=False)
    fifo = project / "manifests" / "fifo.yaml"  # git cannot hold one: made here
    os.mkfifo(fifo)
    home = base / "home"
    home.mkdir()
    return project, home, base / "store", base / "out"


def _check(result, name: str, pattern: str) -> str | None:
    lines = result.stderr.strip().splitlines()
    if result.returncode <= 0:
        return f"exit {result.returncode}"
    if "Traceback" in result.stderr + result.stdout:
        return "a traceback"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return f"not one error line: {result.stderr[-300:]!r}"
    if "internal error" in lines[0]:
        return f"an internal error: {lines[0]}"
    if not re.search(pattern, lines[0]):
        return f"the error does not say /{pattern}/: {lines[0][:300]}"
    return None


def test_every_hostile_manifest_fails_with_one_clear_line_and_writes_nothing(arena):
    project, home, store, out = arena
    watched = (ROOT / "lock", ROOT / "dist", CORPUS, home, project / "fixtures", project / "manifests", project / "lock")
    before = snapshot(*watched)
    assert not any(path.exists() for path in SENTINELS)
    cases = {**EXPECTED, "fifo.yaml": r"not a regular file"}
    failures, runs, fresh = [], 0, 0
    for index, (name, pattern) in enumerate(sorted(cases.items())):
        for command in ("plan", "build"):
            args = [command, f"manifests/{name}", "--store", str(store)] + (["--out", str(out)] if command == "build" else [])
            runner = cli if index % 10 == 0 else forked_cli
            result = runner(*args, cwd=project, timeout=60, HOME=str(home))
            runs += 1
            fresh += runner is cli
            problem = _check(result, name, pattern)
            if problem:
                failures.append(f"{command} {name}: {problem}")
    assert snapshot(*watched) == before, "something was written outside the store and the output directory"
    assert not any(path.exists() for path in SENTINELS)
    assert not out.exists() or not any(out.rglob("*")), "a hostile manifest built something"
    assert not list((store / "objects").rglob("*")) and not list((store / "steps").rglob("*"))
    record_figure("hostile_manifests", {"manifests": len(cases), "cli_runs": runs, "fresh_interpreters": fresh, "failures": failures})
    assert not failures, "\n".join(failures)


def test_a_chat_template_the_source_lacks_is_a_plan_error(arena):
    project, home, store, _ = arena
    manifest = project / "manifests" / "chat-template-missing.yaml"
    manifest.write_text(make_corpus.LITERTLM.replace("    quantization:", "    metadata: {chat_template: nothere.jinja}\n    quantization:"))
    result = forked_cli("plan", str(manifest), "--store", str(store), cwd=project, HOME=str(home))
    assert _check(result, manifest.name, r"chat_template 'nothere.jinja'") is None, result.stderr
