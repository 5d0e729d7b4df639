"""The registry of target specs, found by walking this package: a module here declares SPEC, the
pydantic model of one target kind (a TargetBase whose `kind` is a Literal). TargetSpec, the union
the manifest's `targets` takes, is derived in module order; adding a target kind is adding its
module (and its planner in modelforge/targets/): nothing here names it."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Union

from pydantic import Field

SPECS = {}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
    _spec = importlib.import_module(f"{__name__}.{_info.name}").SPEC
    SPECS[_spec.model_fields["kind"].annotation.__args__[0]] = _spec

TargetSpec = Annotated[Union[tuple(SPECS.values())], Field(discriminator="kind")]
