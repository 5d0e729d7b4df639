"""What `build` lays out under dist/ is for deploying: readable by anyone after `cp -a`, and never a
way to change a store object (small files are copies or reflinks; only large files that cannot be
reflinked are hard links, to read-only objects)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from modelforge import api
from modelforge.executor import materialize
from modelforge.hashing import hash_file
from modelforge.lock import read_lock
from modelforge.store import Store


@pytest.fixture
def built(tmp_project, tmp_path):
    manifest = tmp_project / "manifests" / "tiny-medgemma-text-only.yaml"
    store = tmp_path / "store"
    return manifest, store, api.build(manifest, store_dir=store)


def _tree(root: Path) -> list[Path]:
    return [root, *sorted(root.rglob("*"))]


def test_dist_is_world_readable_and_deploys_by_copying(built):
    _, _, result = built
    target = result.out_dir / "text"
    for path in _tree(target):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), f"{path}: {oct(mode)}"
    # Copy as a deployment would, into a web root any user can reach, and read it as nobody.
    webroot_parent = Path(tempfile.mkdtemp(prefix="modelforge-webroot-"))
    try:
        os.chmod(webroot_parent, 0o755)
        webroot = webroot_parent / "site"
        subprocess.run(["cp", "-a", str(target), str(webroot)], check=True)
        for path in _tree(webroot):
            mode = stat.S_IMODE(path.lstat().st_mode)
            assert mode & (0o005 if path.is_dir() else 0o004) == (0o005 if path.is_dir() else 0o004), f"{path}: {oct(mode)}"
        if os.geteuid() == 0:
            config = webroot / "config.json"
            read = subprocess.run(["cat", str(config)], user=65534, group=65534, capture_output=True, timeout=30)
            assert read.returncode == 0, read.stderr
            assert read.stdout == config.read_bytes()
    finally:
        shutil.rmtree(webroot_parent)


def test_editing_a_dist_file_leaves_the_store_intact_and_the_next_build_repairs_it(built):
    manifest, store_dir, result = built
    edited = result.out_dir / "text" / "config.json"
    locked = read_lock(result.project.lock_path).targets["text"].files["config.json"]
    assert not any(item.how == "link" for item in result.materialized["text"])
    with open(edited, "r+b") as handle:  # in place, as an editor running as the owner would
        handle.write(b"#")
    store = Store(store_dir)
    try:
        object_path = store.object_path(locked.sha256)
        assert not os.path.samefile(object_path, edited)
        assert hash_file(object_path) == locked.sha256
        assert stat.S_IMODE(object_path.stat().st_mode) == 0o444
    finally:
        store.close()
    problems = api.verify(result.project.lock_path)
    assert [problem.path for problem in problems] == ["text/config.json"]
    again = api.build(manifest, store_dir=store_dir)
    assert again.ran == []  # the store was not damaged: nothing reruns, dist is laid out anew
    assert api.verify(result.project.lock_path) == []


def test_large_files_are_hard_links_to_read_only_objects_and_the_build_says_so(built, tmp_path):
    _, store_dir, result = built
    the_lock = read_lock(result.project.lock_path)
    store = Store(store_dir)
    try:
        record = store.get_record(the_lock.steps[the_lock.targets["text"].node].key)
        sizes = sorted(item.size for item in record.outputs.values())
        threshold = sizes[-1]  # only the largest file(s) count as large
        destination = tmp_path / "out" / "text"
        placed = materialize(record.outputs, store, destination, link_from=threshold)
        for item in placed:
            path = destination / item.relative
            object_path = store.object_path(record.outputs[item.relative].sha256)
            if item.how == "link":
                assert item.size >= threshold
                assert os.path.samefile(path, object_path)
                assert stat.S_IMODE(path.stat().st_mode) == 0o444
            else:
                assert item.how in ("copy", "reflink")
                assert not os.path.samefile(path, object_path)
                assert stat.S_IMODE(path.stat().st_mode) == 0o644
        linked = [item.relative for item in placed if item.how == "link"]
        # ext4 and tmpfs cannot reflink, so the large file is linked; a reflinking filesystem copies it for free.
        assert linked or any(item.how == "reflink" for item in placed)
        if linked:
            line = api.describe_materialized(destination, placed)
            assert "hard-linked to read-only store objects" in line and linked[0] in line
    finally:
        store.close()
