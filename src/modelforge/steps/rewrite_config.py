"""Step `rewrite_config`: config.json after the manifest's ordered edits."""

from __future__ import annotations

import json

from modelforge.errors import StepFailed
from pydantic import TypeAdapter

from modelforge.manifest.models import ConfigEdit
from modelforge.steps.base import StepContext
from modelforge.transforms import apply_config_edits, config_bytes

KIND = "rewrite_config"
VERSION = 1
TOOLS: tuple[str, ...] = ()
EDITS = TypeAdapter(tuple[ConfigEdit, ...])


def run(context: StepContext) -> None:
    """params: {"edits": [...ConfigEdit as JSON...]}."""
    try:
        config = json.loads(context.input_path("source", "config.json").read_text())
    except ValueError as error:
        raise StepFailed(f"config.json of the source is not valid JSON ({error}); fix or re-fetch the source") from None
    edits = EDITS.validate_python(context.params["edits"])
    context.output("config.json").write_bytes(config_bytes(apply_config_edits(config, edits, "rewrite_config")))
