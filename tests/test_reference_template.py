"""The PyTorch reference puts the parity prompts in the template the target ships: a litertlm
target's metadata.chat_template (a base model's plain-text template, say), not the tokenizer's own,
so that a gate measures the answers its users get. The default template adds no parameter, so the
reference keys of every manifest that names none are what they were."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np

from conftest import MANIFESTS, ROOT
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.planner import make_plan
from modelforge.steps import parity_phases
from modelforge.testing.reference import reference_facts

TINY = ROOT / "fixtures" / "tiny-medgemma"
PLAIN = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


def _reference_params(template: str | None) -> dict:
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-litertlm.yaml")
    bundle = manifest.targets["bundle"]
    if template is not None:
        bundle = bundle.model_copy(update={"metadata": bundle.metadata.model_copy(update={"chat_template": template})})
    files = manifest.files.model_copy(update={"drop": ("completion_template.jinja",)})
    manifest = manifest.model_copy(update={"targets": {"bundle": bundle}, "files": files})
    facts = reference_facts()
    plain = replace(facts.files[0], path="completion_template.jinja", sha256="0" * 64, size=len(PLAIN))
    files = tuple(sorted((*facts.files, plain), key=lambda item: item.path))
    plan = make_plan(manifest, replace(facts, files=files), "manifests/medgemma-1.5-litertlm.yaml", manifest_digest(manifest))
    return json.loads(next(step for step in plan.steps if step.kind == "parity_reference").params_json)


def test_the_reference_takes_the_template_the_bundle_ships():
    assert "chat_template" not in _reference_params(None)
    assert _reference_params("chat_template.jinja") == _reference_params(None)
    assert _reference_params("completion_template.jinja")["chat_template"] == "completion_template.jinja"


def test_the_prompts_are_put_in_that_template(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(TINY, checkpoint)
    (checkpoint / "plain.jinja").write_text(PLAIN)
    ids = {}
    for template in (None, "plain.jinja"):
        scratch = tmp_path / f"scratch-{template}"
        scratch.mkdir()
        request = {"checkpoint": str(checkpoint), "prompts": ["What are the symptoms of pneumonia?"], "steps": 1,
                   "scratch_dir": str(scratch), **({"chat_template": template} if template else {})}
        parity_phases.text_reference(request)
        ids[template] = np.load(scratch / "references" / "text.npz")["ids_0"].tolist()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY, trust_remote_code=False)
    assert tokenizer.decode(ids["plain.jinja"]) == "<bos>What are the symptoms of pneumonia?"
    assert "<start_of_turn>user" in tokenizer.decode(ids[None])
