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


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def run(context: StepContext) -> None:
    """params: {"edits": [...ConfigEdit as JSON...]}."""
    try:
        config = json.loads(context.input_path("source", "config.json").read_text(), object_pairs_hook=_unique_keys)
    except _DuplicateKey as duplicate:
        # json.loads keeps the last of two equal keys: which `text_config` the edits hoist would be a guess.
        raise StepFailed(f"config.json of the source has the key {duplicate.key!r} twice; keep one and re-run") from None
    except ValueError as error:
        raise StepFailed(f"config.json of the source is not valid JSON ({error}); fix or re-fetch the source") from None
    edits = EDITS.validate_python(context.params["edits"])
    context.output("config.json").write_bytes(config_bytes(apply_config_edits(config, edits, "rewrite_config")))
