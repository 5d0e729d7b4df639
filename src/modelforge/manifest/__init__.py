"""The manifest: pydantic models and the YAML loader. Imports nothing of modelforge but `errors`."""

from modelforge.manifest.loader import flatten_fields, load_manifest, manifest_digest
from modelforge.manifest.models import Manifest

__all__ = ["Manifest", "flatten_fields", "load_manifest", "manifest_digest"]
