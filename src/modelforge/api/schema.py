"""The manifest's JSON schema (`modelforge schema`) and the registered step and target kinds.
Imports manifest and the step and target registries; no other module of the api package."""

from __future__ import annotations

import json
from typing import Any

from modelforge.manifest import Manifest
from modelforge.steps import STEPS
from modelforge.targets import TARGETS


def manifest_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelforge manifest"
    return schema


def schema_text() -> str:
    return json.dumps(manifest_schema(), indent=2, sort_keys=True) + "\n"


def registered_kinds() -> dict[str, list[str]]:
    return {"steps": sorted(STEPS), "targets": sorted(TARGETS)}
