"""The registry of step kinds, found by walking this package: a step kind is a module in a
toolchain's subpackage (checkpoint/, litert/, onnx/, web/, …) that declares KIND, VERSION (enters
every key), TOOLS (distributions whose versions enter the key) and run(context), doing its heavy
imports inside run. A step whose report the lock records under `checks` declares REPORT (the
report's file name); one whose outputs only a full re-export makes again (a float export a
quantization reads, the PyTorch reference) declares KEEP = True, which a store budget drops last
(retention.py). Adding a step kind is adding its module: nothing here names it.

The modules beside the subpackages are what toolchains share: base (StepContext), workers (the
child-process plumbing), parity (figures, phases, gate), parity_phases (the comparisons run in the
workers), partial_load and image_input."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _walk() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for package in sorted(info.name for info in pkgutil.iter_modules(__path__) if info.ispkg):
        group = importlib.import_module(f"{__name__}.{package}")
        for info in sorted(pkgutil.iter_modules(group.__path__), key=lambda info: info.name):
            module = importlib.import_module(f"{group.__name__}.{info.name}")
            kind = getattr(module, "KIND", None)
            if kind is None:
                continue  # a toolchain's helper (its worker, a layout module), not a step
            if kind in found:
                raise RuntimeError(f"step kind {kind!r} is declared by both {found[kind].__name__} and {module.__name__}")
            found[kind] = module
    return found


STEPS: dict[str, ModuleType] = _walk()
# step kind → the report file the lock records under `checks`.
CHECK_REPORTS: dict[str, str] = {kind: module.REPORT for kind, module in STEPS.items() if hasattr(module, "REPORT")}
# step kinds a store budget drops last: only a full re-export makes their outputs again.
KEPT: frozenset[str] = frozenset(kind for kind, module in STEPS.items() if getattr(module, "KEEP", False))
# The toolchain (subpackage) each step kind belongs to.
TOOLCHAINS: dict[str, str] = {kind: module.__name__.split(".")[-2] for kind, module in STEPS.items()}
