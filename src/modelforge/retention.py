"""What a build keeps in the store when the store has a budget (`build --store-budget SIZE`, or
MODELFORGE_STORE_BUDGET): the policy, as one pure function that the executor applies to the real
objects and disk.py to the predicted ones, so that `plan` says what `build` will do.

Always kept: every step record (a rebuild reads them, not the objects), every target's files and
every check's report (the lock reads them), and whatever the steps still to run will read. Over
the budget, the objects of the plan's other steps are dropped as soon as the last step reading
them has run, in this order:

  1. what a quick step makes from what stays: quantized graphs, metadata, packed parts; a recipe
     change makes them again in seconds or minutes;
  2. what is costly to make again (a step module declaring KEEP = True: the float exports a
     quantization reads, the PyTorch reference): only a full re-export, minutes with the model in
     memory, recreates them;

the largest first within each. Without a budget nothing is dropped (the default).

A build skips a step whose record stands but whose objects are gone when no step that runs, no
target and no check needs them (executor.demand, Bazel's "build without the bytes"), so a rebuild
of the same manifest runs nothing; a recipe change runs what it touches and remakes what those
steps read that was dropped. The remote cache is never touched: it can still hold everything.

Imports only `errors` and `memory` (sizes)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from modelforge.errors import ConfigError
from modelforge.memory import parse_size

ENV_BUDGET = "MODELFORGE_STORE_BUDGET"


@dataclass(frozen=True)
class Candidate:
    """A step whose objects may go: every step reading them has run, and no target or check is it."""

    name: str
    frees: int  # bytes of its objects that no kept step shares
    costly: bool  # its kind declares KEEP: only a full re-export makes it again


def choose(candidates: Iterable[Candidate], store_bytes: int, budget: int) -> list[str]:
    """The candidates to drop, in the policy's order, until the store fits the budget (as many as
    there are when it cannot)."""
    dropped = []
    for candidate in sorted(candidates, key=lambda item: (item.costly, -item.frees, item.name)):
        if store_bytes <= budget:
            break
        dropped.append(candidate.name)
        store_bytes -= candidate.frees
    return dropped


def consumers(steps: Sequence[tuple[str, Iterable[str]]]) -> dict[str, set[str]]:
    """step name → the steps that read its outputs, from (name, names of the steps it reads)."""
    readers: dict[str, set[str]] = {name: set() for name, _ in steps}
    for name, reads in steps:
        for upstream in reads:
            if upstream in readers:
                readers[upstream].add(name)
    return readers


def ready(readers: Mapping[str, set[str]], handled: set[str], protected: set[str], dropped: set[str]) -> list[str]:
    """Steps whose objects may go now: handled, every reader handled, not protected, not dropped yet."""
    return [name for name, read_by in readers.items()
            if name in handled and name not in protected and name not in dropped and read_by <= handled]


def budget_from(value: str | int | None) -> int | None:
    """The budget in bytes: `value` (a size such as 25GB or 20GiB), else $MODELFORGE_STORE_BUDGET, else none."""
    origin = "--store-budget"
    if value is None or value == "":
        value, origin = os.environ.get(ENV_BUDGET) or None, ENV_BUDGET
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError:
        raise ConfigError(f"{origin} {value!r} is not a size; write it as 25GB or 20GiB") from None
