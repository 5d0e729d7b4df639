"""modelforge: reproducible builds of edge AI models from a YAML manifest."""

__version__ = "0.1.0"
