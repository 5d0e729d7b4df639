"""The loader under hypothesis (strategies in fuzz_manifest.py): whatever the bytes, a Manifest or
a one-line ManifestError, never another exception. For long runs use the script:
`python tests/safety/fuzz_manifest.py --minutes 5` (docs/safety.md has the figures)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_manifest import STRATEGIES, Checker


@pytest.fixture(scope="module")
def checker(tmp_path_factory):
    return Checker(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("label", sorted(STRATEGIES))
def test_the_loader_returns_a_manifest_or_a_manifest_error(label, checker):
    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[label])
    def load(content: bytes) -> None:
        checker(content)

    load()
