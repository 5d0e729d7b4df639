"""The registry of target kinds (one explicit dict). Each module has KIND and
plan(builder, target_name, spec) -> name of the node whose outputs are the target."""

from __future__ import annotations

from types import ModuleType

from modelforge.targets import hf_text_only, litertlm, onnx, web_bundle

TARGETS: dict[str, ModuleType] = {module.KIND: module for module in (hf_text_only, litertlm, onnx, web_bundle)}
