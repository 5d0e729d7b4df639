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


@pytest.mark.parametrize("kind", memory.KINDS)
def test_prediction_is_monotonic_in_the_weights_and_the_cache(kind):
    sizes = [0, 10**3, 10**6, 10**8, 16 * 10**9, 10**11]
    by_weights = [memory.predict(kind, size) for size in sizes]
    assert by_weights == sorted(by_weights) and len(set(by_weights)) == len(by_weights)
    by_cache = [memory.predict(kind, 10**9, size) for size in sizes]
    assert by_cache == sorted(by_cache) and len(set(by_cache)) == len(by_cache)


def test_prediction_matches_the_recorded_measurements_within_the_stated_error():
    """Anonymous peaks measured at three sizes up to MedGemma 4B's 3.88 B text parameters."""
    text_sizes = {f32 for _, kind, f32, _, _ in memory.MEASUREMENTS if kind == "export_text"}
    assert len(text_sizes) >= 3 and max(text_sizes) >= 2.5e9 * memory.F32_BYTES
    for name, kind, f32, kv, measured in memory.MEASUREMENTS:
        predicted = memory.predict(kind, f32, kv)
        assert abs(predicted / measured - 1) <= memory.STATED_ERROR, (name, kind, predicted, measured)


def test_the_constants_are_the_least_squares_fit_of_the_measurements():
    assert memory.fit() == {kind: memory.FIT[kind] for kind in memory.fit()}
    # A kind measured at one size only is held to what is known from below: never predicted under
    # a peak at which the step was killed.
    for name, kind, f32, kv, at_least in memory.LOWER_BOUNDS:
        assert memory.predict(kind, f32, kv) >= at_least * (1 - 0.001), (name, kind)


def test_unknown_kind_and_negative_counts_are_refused():
    with pytest.raises(ValueError, match="unknown step kind"):
        memory.predict("export_audio", 10)
    with pytest.raises(ValueError, match="negative"):
        memory.predict("export_text", -1)


def test_the_kv_cache_follows_the_manifests_cache_length_and_the_real_head_layout():
    facts = reference_facts()
    owner = {name: "text_decoder" for name in facts.tensors if name.startswith("language_model.")}
    # MedGemma 4B: 34 layers × 4 KV heads × 256, K and V, float32.
    assert memory.kv_cache_bytes(facts.tensors, owner, ["text_decoder"], 4096) == 34 * 2 * 4096 * 4 * 256 * 4
    assert memory.kv_cache_bytes(facts.tensors, owner, ["text_decoder"], 8192) == 2 * memory.kv_cache_bytes(facts.tensors, owner, ["text_decoder"], 4096)


def _with_the_web_runtime(facts, store_dir):
    """The vendored runtime's facts as `plan` gathers them (web/node_modules: tools/setup.sh)."""
    from dataclasses import replace

    from modelforge.api.gathering import web_runtime_facts
    from modelforge.store import Store

    store = Store(store_dir)
    try:
        return replace(facts, web_runtime=web_runtime_facts(store))
    finally:
        store.close()


def test_the_real_medgemma_manifest_fits_this_machine_size(tmp_path):
    """MedGemma 1.5 4B (3.88 B text decoder, 0.42 B vision + projector) planned against the
    reference data: every heavy step is predicted; the text export near 1.2× the 14.5 GiB of float32
    decoder weights (one: the web bundle's MediaPipe variant packs the bundle's own graphs); every step under 20 GiB. The PyTorch reference every parity
    step reads (one step, `reference`, for the bundle's and the onnx target's gates) near the float32
    multimodal model it holds (16 GiB), not the 22 GiB at which the one-process check was killed."""
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-litertlm.yaml")
    plan = make_plan(manifest, _with_the_web_runtime(reference_facts(), tmp_path / "store"), "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))
    predicted = plan.facts["memory"]
    heavy = {"bundle.export_text", "bundle.export_vision", "bundle.quantize.text_decoder", "bundle.quantize.vision_encoder",
             "bundle.quantize.projector", "reference", "web.quantize.medgemma-int4",
             # the onnx target the web bundle's image variant runs (tests/test_onnx_plan.py has its figures)
             "onnx.export_text", "onnx.export_vision", "onnx.quantize.vision", "onnx.quantize.embedding"}
    assert heavy == set(predicted)
    text_f32 = 3_880_263_168 * 4
    assert 1.1 * text_f32 < predicted["bundle.export_text"] < 1.3 * text_f32
    assert predicted["bundle.export_vision"] < predicted["bundle.export_text"]
    assert max(predicted.values()) < 20 * GIB
    multimodal_f32 = 17_200_317_888
    assert multimodal_f32 < predicted["reference"] < 1.1 * multimodal_f32
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
    # The step with the largest prediction is named.
    predicted = api.plan(tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml", store_dir=tmp_path / "plan-store").plan.facts["memory"]
    largest = max(predicted.values())
    assert any(f"step {name} " in message for name, peak in predicted.items() if peak == largest), message
    assert ("GiB" in message or "MiB" in message) and memory.ENV_LIMIT in message
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
