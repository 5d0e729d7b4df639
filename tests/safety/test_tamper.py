"""Tamper and integrity: one flipped byte in any output or source file (at its start, middle and
end) is caught by `verify`; a store object whose content no longer matches its name is detected by
`build` and rebuilt, never reused, however it was damaged (in place, with its old mtime forged
back, truncated, grown); a damaged step record is never trusted; sources are checked against the
lock (--source-dir, verify --sources). The Hub's own sha256 check of LFS files is covered by
tests/test_hub.py (test_corrupted_file_on_the_server, test_damaged_cached_file_is_detected)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from modelforge import api
from modelforge.errors import LockError, SourceError
from modelforge.store import Store
from modelforge.provenance import SIGNATURE_FILES
from safety_support import TEXT_ONLY, cli, make_project, record_figure, records, store_problems, tmp_entries, tree


def _positions(size: int) -> list[int]:
    return sorted({0, size // 2, max(size - 1, 0)}) if size else []


def _flip(path: Path, position: int) -> bytes:
    """Flip one bit at position in a private copy of path (hard links elsewhere keep the original)."""
    original = path.read_bytes()
    data = bytearray(original)
    data[position] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))
    return original


def _restore(path: Path, original: bytes) -> None:
    path.unlink()
    path.write_bytes(original)


@pytest.fixture
def built(tmp_path):
    project = make_project(tmp_path / "project")
    manifest = project / "manifests" / f"{TEXT_ONLY}.yaml"
    result = api.build(manifest, store_dir=tmp_path / "store")
    return project, manifest, tmp_path / "store", result


def test_verify_catches_one_flipped_byte_anywhere_in_any_output_or_source_file(built):
    project, manifest, store, result = built
    lock = result.project.lock_path
    assert api.verify(lock, sources=True) == []
    outputs = sorted(p for p in (result.out_dir / "text").rglob("*") if p.is_file() and p.name not in SIGNATURE_FILES)  # the lock pins these
    sources = sorted(p for p in (project / "fixtures" / "tiny-medgemma").rglob("*") if p.is_file())
    missed, tried, cli_checked = [], 0, 0
    through_cli = set(outputs[::4] + sources[::4])
    for path in outputs + sources:
        is_output = path in outputs
        label = ("text/" if is_output else "source/") + path.relative_to(result.out_dir / "text" if is_output else project / "fixtures" / "tiny-medgemma").as_posix()
        for index, position in enumerate(_positions(path.stat().st_size)):
            original = _flip(path, position)
            tried += 1
            try:
                problems = api.verify(lock, sources=not is_output)
                if [p.path for p in problems] != [label]:
                    missed.append(f"{label} @ {position}: verify said {problems}")
                if index == 0 and path in through_cli:  # through the real CLI too, for every 4th file
                    args = ["verify", str(lock)] + ([] if is_output else ["--sources"])
                    out = cli(*args, cwd=project)
                    cli_checked += 1
                    if out.returncode == 0 or f"MISMATCH {label}:" not in out.stderr or "Traceback" in out.stderr:
                        missed.append(f"{label} @ {position}: the CLI exited {out.returncode}: {out.stderr[-300:]}")
            finally:
                _restore(path, original)
    assert api.verify(lock, sources=True) == []
    record_figure("tamper_verify", {"files": len(outputs) + len(sources), "outputs": len(outputs), "sources": len(sources),
                                    "flips": tried, "cli_runs": cli_checked, "missed": missed})
    assert tried >= 3 * 20 and not missed, "\n".join(missed)


def _damage(path: Path, how: str) -> None:
    """Damage a store object in place, as a hard-linked edit would (the object's own inode)."""
    stat = path.stat()
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        if how == "truncate":
            handle.truncate(stat.st_size - 1)
        elif how == "append":
            handle.seek(0, os.SEEK_END)
            handle.write(b"\0")
        else:
            handle.seek(stat.st_size // 2)
            byte = handle.read(1)
            handle.seek(stat.st_size // 2)
            handle.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, 0o444)
    if how == "flip, old mtime forged back":
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


HOW = ("flip", "flip, old mtime forged back", "truncate", "append")


def test_build_rebuilds_a_damaged_store_object_and_never_reuses_it(built):
    project, manifest, store, result = built
    expected, lock_bytes = tree(result.out_dir / "text"), result.project.lock_path.read_bytes()
    objects = sorted({item["sha256"] for outputs in records(store).values() for item in outputs.values()})
    failures, tried = [], 0
    for sha in objects:
        for how in HOW:
            path = store / "objects" / sha[:2] / sha
            _damage(path, how)
            tried += 1
            rebuilt = api.build(manifest, store_dir=store)
            where = f"object {sha[:12]}… ({how})"
            if not rebuilt.ran:
                failures.append(f"{where}: nothing was rebuilt")
            if tree(rebuilt.out_dir / "text") != expected:
                failures.append(f"{where}: the target differs from the original build")
            if result.project.lock_path.read_bytes() != lock_bytes or api.verify(result.project.lock_path):
                failures.append(f"{where}: the lock changed or verify fails")
            failures += [f"{where}: {problem}" for problem in store_problems(store)]
    assert tmp_entries(store) == []
    record_figure("tamper_store_objects", {"objects": len(objects), "ways": list(HOW), "damaged_builds": tried, "failures": failures})
    assert not failures, "\n".join(failures)


def test_a_damaged_or_hostile_step_record_is_never_trusted(built, tmp_path):
    project, manifest, store, result = built
    expected = tree(result.out_dir / "text")
    victim = tmp_path / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("untouched\n")
    hostile = {
        "not JSON": lambda record: "{",
        "an output path climbing out": lambda record: {**record, "outputs": {f"../../../../../../..{victim}": next(iter(record["outputs"].values()))}},
        "an absolute output path": lambda record: {**record, "outputs": {str(victim): next(iter(record["outputs"].values()))}},
        "a sha256 that is a path": lambda record: {**record, "outputs": {"x": {"sha256": "../../../../../../../etc/passwd", "size": 1}}},
        "a negative size": lambda record: {**record, "outputs": {name: {**item, "size": -1} for name, item in record["outputs"].items()}},
        "another key": lambda record: {**record, "key": "0" * 64},
    }
    for what, change in hostile.items():
        for path in sorted((store / "steps").rglob("*.json")):
            record = json.loads(path.read_text())
            changed = change(record)
            path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
        rebuilt = api.build(manifest, store_dir=store)
        assert len(rebuilt.ran) == len(result.ran) == 5, what  # every step, the architecture check included
        assert tree(rebuilt.out_dir / "text") == expected, what
        assert victim.read_text() == "untouched\n", what
        assert store_problems(store) == [], what
    assert Path("/etc/passwd").exists()


def _swap_config(store: Path, content: bytes) -> tuple[str, str]:
    """Rewrite the local record of the `assemble` step (the target `text`) so that its config.json
    names other, intact bytes (adopted into the store under their hash). Returns (old, new) sha256."""
    record_path = next(p for p in (store / "steps").rglob("*.json") if json.loads(p.read_text())["kind"] == "assemble")
    record = json.loads(record_path.read_text())
    sha = hashlib.sha256(content).hexdigest()
    opened = Store(store)
    try:
        with opened.scratch("evil") as scratch:
            (scratch / "config.json").write_bytes(content)
            opened.adopt(scratch / "config.json", sha)
    finally:
        opened.close()
    old = record["outputs"]["config.json"]["sha256"]
    record["outputs"]["config.json"] = {"sha256": sha, "size": len(content)}
    record_path.write_text(json.dumps(record))
    return old, sha


def _evil_config(directory: Path) -> bytes:
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["EvilForCausalLM"]
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilForCausalLM"}
    return json.dumps(config).encode()


def test_a_record_swapped_for_other_content_is_caught_by_frozen_build_and_verify(built):
    """The store is trusted storage, but a record rewritten to name other (intact) objects must not
    reach dist/: `build --frozen` compares every target file with the lock before laying anything
    out, and refuses in one line naming the file and both hashes (exit 6)."""
    project, manifest, store, result = built
    before = tree(result.out_dir / "text")
    old, new = _swap_config(store, _evil_config(result.out_dir / "text"))
    out = cli("build", str(manifest), "--store", str(store), "--frozen", cwd=project)
    assert out.returncode == 6, out.stdout + out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert "text/config.json" in line and old[:12] in line and new[:12] in line, line
    assert tree(result.out_dir / "text") == before  # nothing reached dist/
    assert cli("verify", str(result.project.lock_path), cwd=project).returncode == 0


def test_a_plain_build_that_changes_a_pinned_output_warns_and_keeps_dist_until_the_lock_is_written(built):
    project, manifest, store, result = built
    before, lock_bytes = tree(result.out_dir / "text"), result.project.lock_path.read_bytes()
    config = json.loads((result.out_dir / "text" / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration.OtherConfig"}  # other bytes the architecture check still passes
    old, new = _swap_config(store, json.dumps(config).encode())
    # Killed right before the new lock is written: dist/ still holds what the old lock pins.
    out = cli("build", str(manifest), "--store", str(store), cwd=project, MODELFORGE_KILL_AT="build/lock:1")
    assert out.returncode == -9, out.stdout + out.stderr
    assert tree(result.out_dir / "text") == before
    assert result.project.lock_path.read_bytes() == lock_bytes
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if "text/config.json" in line]
    assert len(warnings) == 1 and "warning" in warnings[0] and f"{old[:12]}" in warnings[0] and f"{new[:12]}" in warnings[0], warnings


def test_a_check_steps_record_is_revalidated_against_the_bytes_it_is_used_with(built):
    """text.check's record says "these tensors fit the config"; once the config it is used with is
    other bytes, the record no longer speaks for them and the check runs again."""
    project, manifest, store, result = built
    config = json.loads((result.out_dir / "text" / "config.json").read_text())
    config["note"] = "other bytes, same architecture"
    _swap_config(store, json.dumps(config).encode())
    again = api.build(manifest, store_dir=store)
    assert again.ran == ["text.check"]
    assert api.build(manifest, store_dir=store).ran == []  # its new record names what it checked


def test_a_signed_record_pulled_with_other_config_bytes_is_refused_by_a_frozen_build(tmp_path, monkeypatch):
    """A fresh CI store pulls, from a file:// cache, a record signed by a trusted (leaked) key that
    names other bytes for config.json (an EvilForCausalLM with an auto_map): `build --frozen
    --cache-read-only` refuses, and nothing is written under dist/."""
    from modelforge.lock import read_lock
    from modelforge.signing import generate, load_signing_key

    project = make_project(tmp_path / "project")
    manifest = project / "manifests" / f"{TEXT_ONLY}.yaml"
    key_path = tmp_path / "keys" / "ci.key"
    monkeypatch.setenv("MODELFORGE_SIGNING_KEY", str(key_path))
    public = generate("ci-1", key_path)
    cache = tmp_path / "nfs" / "cache"
    (project / "modelforge.toml").write_text(f'[cache]\nurl = "file://{cache}"\ntrusted_keys = ["{public.text}"]\n')
    first = api.build(manifest, store_dir=tmp_path / "a" / "store", out=tmp_path / "a" / "dist")
    assert first.ran
    key = read_lock(first.project.lock_path).steps["text"].key
    record_file = cache / "steps" / key[:2] / f"{key}.json"
    document = json.loads(record_file.read_text())
    evil = _evil_config(tmp_path / "a" / "dist" / "text")
    sha = hashlib.sha256(evil).hexdigest()
    (cache / "objects" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (cache / "objects" / sha[:2] / sha).write_bytes(evil)
    old = document["record"]["outputs"]["config.json"]["sha256"]
    document["record"]["outputs"]["config.json"] = {"sha256": sha, "size": len(evil)}
    signer = load_signing_key(key_path)
    fields = json.dumps(document["record"], sort_keys=True, separators=(",", ":")).encode()
    document["signature"] = {"key": signer.public().text, "value": signer.sign(fields)}
    record_file.write_text(json.dumps(document))

    out = cli(
        "build", str(manifest), "--frozen", "--cache-read-only", "--store", str(tmp_path / "b" / "store"), "--out", str(tmp_path / "b" / "dist"),
        cwd=project,
    )
    assert out.returncode == 6, out.stdout + out.stderr
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert "text/config.json" in line and old[:12] in line and sha[:12] in line and "--frozen" in line, line
    assert not (tmp_path / "b" / "dist" / "text").exists()


def test_source_dir_and_frozen_builds_refuse_a_flipped_source_byte(built, tmp_path):
    project, manifest, store, result = built
    hub_manifest = manifest.parent / "hub-tiny.yaml"
    hub_manifest.write_text(manifest.read_text().replace(
        "source:\n  kind: local\n  path: ../fixtures/tiny-medgemma\n",
        "source:\n  kind: hub\n  repo: example/tiny-medgemma\n  revision: " + "ab" * 20 + "\n",
    ).replace(f"name: {TEXT_ONLY}", "name: hub-tiny"))
    download = tmp_path / "download"
    shutil.copytree(project / "fixtures" / "tiny-medgemma", download)
    api.build(hub_manifest, store_dir=store, source_dir=download)
    refused = 0
    for path in sorted(download.iterdir()):
        original = _flip(path, path.stat().st_size // 2)
        try:
            with pytest.raises(SourceError, match=rf"{path.name} \(sha256 differs\)"):
                api.build(hub_manifest, store_dir=store, source_dir=download)
            refused += 1
        finally:
            _restore(path, original)
    # A local source: `build --frozen` refuses a source that is no longer the locked one.
    source = project / "fixtures" / "tiny-medgemma" / "config.json"
    original = _flip(source, 10)
    try:
        with pytest.raises(LockError, match="out of date.*source"):
            api.build(manifest, store_dir=store, frozen=True)
    finally:
        _restore(source, original)
    record_figure("tamper_source_dir", {"source_files_flipped": refused})
    assert refused == len(list(download.iterdir()))
