"""The safetensors header validator under hypothesis (strategies in fuzz_header.py): whatever the
damage, read_header accepts a file the reference parser also loads, with the same tensors, or
refuses it with a one-line SourceError; never another exception. For long runs use the script:
`python tests/safety/fuzz_header.py --minutes 5`."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from fuzz_header import Checker, damaged_files, valid_files
from checkpoint_support import shard_bytes


def test_a_damaged_header_is_accepted_as_the_reference_parser_would_or_refused_with_a_source_error(tmp_path):
    checker = Checker(tmp_path)

    @settings(max_examples=600, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(damaged_files())
    def check(content: bytes) -> None:
        checker(content)

    check()
    assert checker.refused > 0


def test_every_undamaged_file_is_accepted(tmp_path):
    checker = Checker(tmp_path)

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(valid_files())
    def check(layout) -> None:
        checker(shard_bytes(*layout))

    check()
    assert checker.refused == 0 and checker.accepted > 0
