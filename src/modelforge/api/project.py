"""A project: a manifest and the places that belong to it (its root, lock/ and dist/). The
bottom of the api package: imports manifest only, and no other module of the package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelforge.manifest import Manifest, load_manifest


@dataclass(frozen=True)
class Project:
    """A manifest and the places that belong to it: the project root is the parent of a
    `manifests/` directory (else the manifest's own directory); lock/ and dist/ live there."""

    manifest_path: Path
    manifest: Manifest
    root: Path

    @property
    def lock_path(self) -> Path:
        return self.root / "lock" / f"{self.manifest.name}.lock"

    @property
    def default_out(self) -> Path:
        return self.root / "dist" / self.manifest.name

    @property
    def relative_manifest(self) -> str:
        try:
            return self.manifest_path.resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return self.manifest_path.name


def open_project(manifest_path: str | Path) -> Project:
    path = Path(manifest_path)
    manifest = load_manifest(path)
    directory = path.resolve().parent
    root = directory.parent if directory.name == "manifests" else directory
    return Project(path, manifest, root)
