"""The registry of step kinds: one explicit dict, no import side effects. Each module declares
KIND, VERSION (enters every key) and TOOLS (distributions whose versions enter the key), and a
run(context) that does its heavy imports inside."""

from __future__ import annotations

from types import ModuleType

from modelforge.steps import (
    assemble,
    carry_files,
    check_architecture,
    litert_export,
    litert_parity,
    litert_quantize,
    litertlm_metadata,
    litertlm_package,
    onnx_export,
    onnx_package,
    onnx_parity,
    onnx_quantize,
    rewrite_config,
    transform_weights,
    web_bundle,
    web_task,
)

STEPS: dict[str, ModuleType] = {
    module.KIND: module
    for module in (
        transform_weights, rewrite_config, carry_files, assemble, check_architecture,
        litert_export, litert_quantize, litertlm_metadata, litertlm_package, litert_parity,
        onnx_export, onnx_quantize, onnx_package, onnx_parity, web_task, web_bundle,
    )
}
