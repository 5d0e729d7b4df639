"""Versions of the tools steps use, read from package metadata (never by importing them)."""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable

import modelforge


def versions(tools: Iterable[str]) -> dict[str, str]:
    """Distribution name → installed version ('absent' if not installed), plus python and modelforge."""
    result = {"python": platform.python_version(), "modelforge": modelforge.__version__}
    for tool in sorted(set(tools)):
        try:
            result[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            result[tool] = "absent"
    return result
