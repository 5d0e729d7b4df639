"""The manifest: pydantic models and the YAML loader. Imports nothing of modelforge but `errors`."""

from modelforge.manifest.loader import changed_fields, load_manifest, manifest_digest
from modelforge.manifest.models import Manifest

__all__ = ["Manifest", "changed_fields", "load_manifest", "manifest_digest"]
