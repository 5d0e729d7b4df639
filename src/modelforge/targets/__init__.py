"""The registry of target kinds, found by walking this package: a target kind is a module here
that declares KIND and plan(builder, target_name, spec) -> the name of the node whose outputs are
the target (its spec lives in manifest/targets/<kind>.py, its steps in steps/<toolchain>/). Adding
a target kind is adding its module: nothing here names it. A target built on another's nodes
reaches it through PlanBuilder.target(kind), never by importing it."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _walk() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if getattr(module, "KIND", None) is not None:
            found[module.KIND] = module
    return found


TARGETS: dict[str, ModuleType] = _walk()
