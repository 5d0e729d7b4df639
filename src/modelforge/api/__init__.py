"""What the CLI calls, one module per verb, with no printing (a Reporter receives progress).
Imports run one way: verifying → building → locking → planning → caching, gathering → project
(schema stands alone); below them executor, planner, store, lock, manifest; never torch. This file only re-exports."""

from modelforge.api.attesting import ProvenanceReport, verify_provenance
from modelforge.api.building import BuildResult, build, build_many, describe_materialized
from modelforge.api import caching
from modelforge.api.gathering import Gathered, gather, web_runtime_facts
from modelforge.api.locking import CHECK_REPORTS, lock, make_lock
from modelforge.api.planning import PlanReport, plan, plan_for, tools_of
from modelforge.api.project import Project, open_project
from modelforge.api.schema import manifest_schema, registered_kinds, schema_text
from modelforge.api.verifying import Mismatch, check_rebuild, verify, verify_artifacts

__all__ = [
    "CHECK_REPORTS",
    "BuildResult",
    "Gathered",
    "Mismatch",
    "PlanReport",
    "ProvenanceReport",
    "Project",
    "build",
    "build_many",
    "caching",
    "check_rebuild",
    "describe_materialized",
    "gather",
    "lock",
    "make_lock",
    "manifest_schema",
    "open_project",
    "plan",
    "plan_for",
    "registered_kinds",
    "schema_text",
    "tools_of",
    "verify",
    "verify_artifacts",
    "verify_provenance",
    "web_runtime_facts",
]
