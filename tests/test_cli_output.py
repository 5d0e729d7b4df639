"""What the command line prints where nobody watches a terminal (log files, CI), the build's last
lines (checks and the manifest's notice), the `plan` table, `check`'s only mode, the manifest's
'did you mean', and tools/setup.sh's waiting for apt and refusing to skip the browser tests in CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from modelforge.cli import RichReporter, check_lines
from modelforge.errors import ManifestError
from modelforge.manifest.loader import load_manifest


def run_cli(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "modelforge.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_a_long_line_is_not_wrapped_when_stderr_is_not_a_terminal(capsys):
    reporter = RichReporter()
    reason = "toolchain changed: " + ", ".join(f"package-{index} 1.0 → 2.0" for index in range(12))
    reporter.step_started("bundle.quantize.vision_encoder", "litert_quantize", reason)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert reason in err


def test_a_progress_bar_leaves_no_blank_line_in_a_log(capsys):
    reporter = RichReporter()
    reporter.step_started("text.weights", "transform_weights", "never built")
    reporter.step_progress("text.weights", 5, 10, "copying tensors")
    reporter.step_progress("text.weights", 10, 10, "copying tensors")
    reporter.step_finished("text.weights", True, 0.5)
    lines = capsys.readouterr().err.split("\n")
    assert lines[-1] == "" and "" not in lines[:-1], lines
    assert len(lines) == 3


def test_parity_and_architecture_checks_become_one_line_each():
    lines = check_lines({
        "bundle.parity": {
            "top1_agreement": 0.8125, "mean_kl": 0.053805207, "max_abs_logit": 5.759638906, "vision_cosine": 0.9999, "image_token_agreement": 0.2083,
            "passed": True,
            "thresholds": {"min_top1_agreement": 0.8, "max_kl": 0.1, "max_abs_logit": None, "min_vision_cosine": 0.99, "min_image_token_agreement": 0.1},
        },
        "text.check": {"architecture": "Gemma3ForCausalLM", "tensors": 28, "tied_absent": ["lm_head.weight"], "dtype": "F32"},
        "onnx.export_text": {"rope_check": {"max_abs": {"cos_cache_global": 0.0, "sin_cache_local": 3e-07}, "positions": 1024, "tolerance": 0.0001},
                             "gain_check": {"gains": 13, "max_abs": 0.0}},
    })
    assert lines == [
        "parity bundle.parity: passed: top-1 agreement 0.8125 (≥ 0.8), mean KL ≤ 0.054 (≤ 0.1), max |logit difference| ≤ 5.8, vision cosine ≥ 0.9999 (≥ 0.99), "
        "image answers through the runtime 0.2083 (≥ 0.1)",
        "checked onnx.export_text: RoPE caches equal transformers' over 1024 positions (max |difference| ≤ 1e-06, tolerance 0.0001); 13 norm gains equal its float32 ones",
        "checked text.check: 28 tensors fit Gemma3ForCausalLM; tied, so absent: lm_head.weight",
    ]


def test_build_ends_with_its_checks_and_the_manifests_notice_and_check_needs_no_flag(tmp_project, tmp_path):
    manifest = tmp_project / "manifests" / "tiny-medgemma-text-only.yaml"
    env = {"MODELFORGE_STORE": str(tmp_path / "store")}
    built = run_cli("build", str(manifest), cwd=tmp_project, env=env)
    assert built.returncode == 0, built.stderr
    lines = built.stdout.strip().split("\n")
    assert lines[1] == "checked text.check: 28 tensors fit Gemma3ForCausalLM; tied, so absent: lm_head.weight"
    assert lines[-1] == f"note: {load_manifest(manifest).notice}"
    assert "random weights" in lines[-1] and "gibberish" in lines[-1]
    assert "\n\n" not in built.stderr
    checked = run_cli("check", str(manifest), cwd=tmp_project, env=env)
    assert checked.returncode == 0, checked.stderr
    assert "reproduces every locked file" in checked.stdout
    assert "\n\n" not in checked.stderr and not checked.stderr.startswith("\n")
    assert run_cli("check", str(manifest), "--rebuild", cwd=tmp_project, env=env).returncode == 0


def test_build_takes_several_manifests_but_out_names_one_and_address_needs_ray(tmp_project):
    from click.testing import CliRunner

    from modelforge.cli import main

    manifests = [str(tmp_project / "manifests" / name) for name in ("tiny-medgemma-text-only.yaml", "tiny-medgemma-litertlm.yaml")]
    several = CliRunner().invoke(main, ["build", "--out", str(tmp_project / "out"), *manifests])
    assert several.exit_code == 2
    assert several.output == "error: --out names one directory, for one manifest; build several without it (each goes to dist/<name>/)\n"
    address = CliRunner().invoke(main, ["build", "--address", "127.0.0.1:6379", manifests[0]])
    assert address.exit_code == 2 and "--address names a Ray cluster; add --executor ray" in address.output


def test_the_plan_table_columns_fit_the_longest_step_name(tmp_project):
    out = run_cli("plan", str(tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml"), cwd=tmp_project)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.split("\n") if line.startswith(("  run", "  cached"))]
    assert any("bundle.quantize.vision_encoder " in row for row in rows)
    # The key (12 hex digits) starts in the same column on every row.
    columns = {re.search(r" [0-9a-f]{12}( |$)", row).start() for row in rows}
    assert len(columns) == 1, rows


def test_a_misspelled_manifest_key_gets_a_did_you_mean(tmp_project):
    manifest = tmp_project / "manifests" / "tiny-medgemma-litertlm.yaml"
    manifest.write_text(manifest.read_text().replace("cache_length: 256", "cache_lenght: 256"))
    with pytest.raises(ManifestError, match=r"targets\.bundle\.cache_lenght: unknown key 'cache_lenght'; did you mean 'cache_length'\?"):
        load_manifest(manifest)


def test_a_misspelled_key_in_a_list_item_is_matched_against_that_items_fields(tmp_project):
    manifest = tmp_project / "manifests" / "tiny-medgemma-text-only.yaml"
    manifest.write_text(manifest.read_text().replace("    prefix: language_model.", "    prefx: language_model."))
    with pytest.raises(ManifestError, match=r"weights\[1\]\.prefx: unknown key 'prefx'; did you mean 'prefix'\?"):
        load_manifest(manifest)


SETUP = ROOT / "tools" / "setup.sh"


def test_setup_waits_for_the_dpkg_lock_on_every_apt_call():
    calls = [line for line in SETUP.read_text().split("\n") if re.search(r"apt-get\s+\S", line) and not line.lstrip().startswith("#") and "echo" not in line]
    assert len(calls) >= 2
    assert all('"${apt_wait[@]}"' in line for line in calls), calls
    assert "apt_wait=(-o DPkg::Lock::Timeout=600)" in SETUP.read_text()


def test_setup_in_ci_fails_loudly_when_chromium_is_missing(tmp_path):
    text = SETUP.read_text()
    guard = text[text.index("# In CI a skipped browser test"):]
    script = tmp_path / "guard.sh"
    script.write_text("set -euo pipefail\n" + guard)
    bash = "/bin/bash"
    empty = tmp_path / "bin"
    empty.mkdir()
    failed = subprocess.run([bash, str(script)], env={"PATH": str(empty), "CI": "true"}, capture_output=True, text=True, timeout=30)
    assert failed.returncode == 1
    assert "chromium is not installed" in failed.stderr
    local = subprocess.run([bash, str(script)], env={"PATH": str(empty)}, capture_output=True, text=True, timeout=30)
    assert local.returncode == 0, local.stderr
