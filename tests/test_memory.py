"""The export memory prediction (src/modelforge/memory.py): its fit against the recorded
measurements, what it says about the real MedGemma 4B manifest, and the early refusal of a build
that would not fit. Nothing here exports (fast)."""

from __future__ import annotations

import pytest

from conftest import MANIFESTS
from modelforge import api, memory
from modelforge.errors import PlanError
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.planner import make_plan
from modelforge.testing.reference import reference_facts

GIB = 2**30


@pytest.mark.parametrize("part", memory.PARTS)
def test_prediction_is_monotonic_in_both_parameter_counts(part):
    counts = [0, 10**3, 10**6, 10**8, 4 * 10**9, 3 * 10**10]
    by_part = [memory.predict_export_peak(part, count) for count in counts]
    assert by_part == sorted(by_part) and len(set(by_part)) == len(by_part)
    by_loaded = [memory.predict_export_peak(part, 10**6, count) for count in counts]
    assert by_loaded == sorted(by_loaded)
    assert memory.predict_export_peak(part, 10**6, 10**9) > memory.predict_export_peak(part, 10**6, 10**6)


def test_prediction_matches_the_recorded_measurements_within_the_stated_error():
    assert {part for _, part, *_ in memory.MEASUREMENTS} == set(memory.PARTS)
    assert len({name for name, *_ in memory.MEASUREMENTS}) >= 3  # three sizes at least
    for name, part, parameters, loaded, measured in memory.MEASUREMENTS:
        predicted = memory.predict_export_peak(part, parameters, loaded)
        assert abs(predicted / measured - 1) <= memory.STATED_ERROR, (name, part, predicted, measured)


def test_unknown_part_and_negative_counts_are_refused():
    with pytest.raises(ValueError):
        memory.predict_export_peak("audio", 10)
    with pytest.raises(ValueError):
        memory.predict_export_peak("text", -1)


def test_the_real_medgemma_manifest_records_a_plausible_prediction():
    """MedGemma 1.5 4B (3.88 B text decoder, 0.42 B vision + projector, 4.30 B loaded) planned
    against the reference data: the text export is predicted at about 72.6 GiB, the vision export at
    about 51.2 GiB. Plausible: the f32 weights alone are 16 GiB, loaded once and copied while
    converting; the largest measured checkpoint (139 M parameters) needed 3.5 GiB."""
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-litertlm.yaml")
    manifest = manifest.model_copy(update={"targets": {name: t for name, t in manifest.targets.items() if t.kind == "litertlm"}})
    plan = make_plan(manifest, reference_facts(), "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))
    predicted = plan.facts["memory"]
    assert set(predicted) == {"bundle.export_text", "bundle.export_vision"}
    f32_weights = 4_300_079_472 * 4
    assert 2 * f32_weights < predicted["bundle.export_text"] < 8 * f32_weights
    assert f32_weights < predicted["bundle.export_vision"] < predicted["bundle.export_text"]
    assert 65 * GIB < predicted["bundle.export_text"] < 80 * GIB
    assert 45 * GIB < predicted["bundle.export_vision"] < 58 * GIB
    # The prediction is a fact of the plan, never a parameter: no step key depends on it.
    assert all("memory" not in step.params_json and "peak" not in step.params_json for step in plan.steps)


def test_plan_prints_the_predicted_peak_per_export_step(tmp_project):
    from click.testing import CliRunner

    from modelforge.cli import main

    result = CliRunner().invoke(main, ["plan", str(tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip().startswith("memory")]
    assert any("bundle.export_text" in line and "GiB" in line for line in lines), result.output
    assert any("bundle.export_vision" in line for line in lines), result.output


def test_build_is_refused_before_any_step_runs_when_the_prediction_exceeds_the_limit(tmp_project, tmp_path, monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "1000000")
    from modelforge.executor import SilentReporter

    started = []

    class Recording(SilentReporter):
        def step_started(self, name, kind, reason):
            started.append(name)

    store = tmp_path / "store"
    with pytest.raises(PlanError) as caught:
        api.build(tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml", store_dir=store, out=tmp_path / "out", reporter=Recording())
    assert started == []
    message = str(caught.value)
    assert "\n" not in message
    # The largest prediction is named: the litertlm text export or the web bundle's (equal) text export.
    assert ("bundle.export_text" in message or "web.export.bundle" in message) and "GiB" in message and memory.ENV_LIMIT in message
    assert "more RAM" in message
    assert not (tmp_path / "out").exists()
    assert not any(path.is_file() for path in (store / "steps").rglob("*"))
    assert not any(path.is_file() for path in (store / "objects").rglob("*"))
    assert not list((tmp_project / "lock").iterdir())


def test_cli_memory_limit_option_refuses_with_exit_code_3(tmp_project, tmp_path):
    from click.testing import CliRunner

    from modelforge.cli import main

    result = CliRunner().invoke(main, ["build", str(tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml"),
                                       "--store", str(tmp_path / "store"), "--memory-limit", "1MB"])
    assert result.exit_code == 3, result.output
    assert "--memory-limit allows 1 MiB" in result.output


def test_refusal_counts_only_steps_that_would_run():
    predictions = {"t.export_text": 40 * GIB, "t.export_vision": 2 * GIB}
    memory.refuse_if_too_large(predictions, ["t.export_vision"], override=4 * GIB)  # the big one is cached
    with pytest.raises(PlanError, match="t.export_text"):
        memory.refuse_if_too_large(predictions, ["t.export_text", "t.export_vision"], override=4 * GIB)


@pytest.mark.parametrize("text,expected", [("1000000", 10**6), ("16GB", 16 * 10**9), ("16GiB", 16 * GIB), ("16G", 16 * GIB), ("1.5 gib", 3 * GIB // 2), ("512MiB", 512 * 2**20)])
def test_sizes_parse(text, expected):
    assert memory.parse_size(text) == expected


def test_a_bad_limit_is_a_plan_error(monkeypatch):
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(PlanError, match=memory.ENV_LIMIT):
        memory.memory_limit()
    monkeypatch.delenv(memory.ENV_LIMIT)
    assert memory.memory_limit() == (memory.machine_memory(), "physical memory")
