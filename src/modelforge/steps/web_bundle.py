"""Step `web_bundle`: the static app, the vendored runtime (checked against the hashes the plan was
made with), the `.task` models under content-hashed names, bundle.json and the server configs."""

from __future__ import annotations

from modelforge.errors import StepFailed
from modelforge.steps.base import StepContext

KIND = "web_bundle"
VERSION = 1
TOOLS: tuple[str, ...] = ()


def run(context: StepContext) -> None:
    """params: {title, notice, variants: [{name, label, max_tokens, input}], runtime: {version, files}}."""
    from modelforge.hashing import hash_file
    from modelforge.web.bundle import Variant, write_bundle
    from modelforge.web.vendor import runtime_files, web_dir

    params = context.params
    runtime = runtime_files(web_dir())
    for name, expected in params["runtime"]["files"].items():
        if hash_file(runtime[name]) != expected["sha256"]:
            raise StepFailed(f"the vendored web runtime file {name} changed since the plan was made; run the build again")
    variants = []
    for variant in params["variants"]:
        (task_name,) = context.inputs[variant["input"]]
        variants.append(Variant(
            name=variant["name"], task=context.input_path(variant["input"], task_name), label=variant["label"],
            max_tokens=variant["max_tokens"],
        ))
    write_bundle(
        context.out_dir, variants=variants, runtime=runtime, title=params["title"],
        runtime_version=params["runtime"]["version"], notice=params.get("notice", ""),
    )
