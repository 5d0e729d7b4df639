"""What a step sees while it runs: its params, its inputs (files with known hashes), an empty
output directory, and a progress callback. Imports only `plan`, `store` and `errors`."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from modelforge.outputs import link_or_copy
from modelforge.store import FileRecord


@dataclass(frozen=True)
class InputFile:
    path: Path  # where the bytes are (a source directory or a store object)
    record: FileRecord
    in_store: bool = False  # store objects may be hard-linked; a user's source files never are


@dataclass
class StepContext:
    params: Any
    inputs: Mapping[str, Mapping[str, InputFile]]  # input name → relative path → file
    out_dir: Path
    scratch_dir: Path
    progress: Callable[[int, int, str], None] = lambda done, total, message: None
    known_hashes: dict[str, str] = field(default_factory=dict)  # out relative path → sha256 the step computed
    measurements: dict[str, Any] = field(default_factory=dict)  # seconds, peak memory: reported, never in outputs
    name: str = ""  # the step's node name, for messages only: a label is never a parameter (it changes no byte)

    def input_path(self, name: str, relative: str) -> Path:
        return self.inputs[name][relative].path

    def output(self, relative: str) -> Path:
        path = self.out_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def pass_through(self, name: str, relative: str, out_relative: str | None = None) -> None:
        """Make an input file an output unchanged, without copying bytes or hashing again."""
        item = self.inputs[name][relative]
        destination = self.output(out_relative or relative)
        if item.in_store:
            link_or_copy(item.path, destination)
        else:
            # Linking would let the store chmod, and later see edits to, the user's own files.
            shutil.copyfile(item.path, destination)
        self.known_hashes[out_relative or relative] = item.record.sha256

    def input_dir(self, name: str) -> Path:
        """A directory of symlinks presenting one input as a checkpoint folder (for libraries
        such as transformers that want a path)."""
        directory = self.scratch_dir / f"input-{name}"
        for relative, item in self.inputs[name].items():
            link = directory / relative
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(item.path.resolve(), link)
        return directory


class Step(Protocol):
    KIND: str
    VERSION: int
    TOOLS: tuple[str, ...]

    def run(self, context: StepContext) -> None: ...
