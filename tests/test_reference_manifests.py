"""The real MedGemma manifests, planned against the real 4B tensor list and reference configs
from src/modelforge/reference_data/ (no weights exist here): coverage, the exact key set Gemma3ForCausalLM
expects, and snapshots of the rewritten config.json."""

from __future__ import annotations

import json

import pytest

from conftest import MANIFESTS, REFERENCE
from modelforge.manifest import load_manifest, manifest_digest
from modelforge.planner import make_plan
from modelforge.testing.reference import facts_from_shapes, load_tensor_shapes, reference_files
from modelforge.transforms import apply_config_edits, config_bytes

CARRIED = reference_files()


@pytest.fixture(scope="module")
def config_4b():
    return json.loads((REFERENCE / "mlx-community_gemma-3-4b-it-bf16-config.json").read_text())


@pytest.fixture(scope="module")
def text_only_plan(config_4b):
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-text-only.yaml")
    shapes, dtype = load_tensor_shapes()
    facts = facts_from_shapes(shapes, dtype, config_4b, CARRIED)
    return manifest, make_plan(manifest, facts, "manifests/medgemma-1.5-text-only.yaml", manifest_digest(manifest)), shapes


def test_every_4b_tensor_is_consumed_or_dropped(text_only_plan):
    _, plan, shapes = text_only_plan
    coverage = plan.facts["coverage"]
    assert coverage["tensors"] == 883
    assert coverage["kept"] == 444
    assert coverage["dropped"] == 439
    assert coverage["kept"] + coverage["dropped"] == len(shapes)
    assert coverage["files"]["dropped"] == ["preprocessor_config.json", "processor_config.json"]


def test_4b_output_keys_are_exactly_what_gemma3_for_causal_lm_expects(text_only_plan, config_4b):
    torch = pytest.importorskip("torch")
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    manifest, plan, shapes = text_only_plan
    weights = plan.node("text.weights").params
    produced = {out: src for shard in weights["shards"] for out, _, src in shard["tensors"]}
    config = apply_config_edits(config_4b, manifest.config, "test")
    config = {key: value for key, value in config.items() if key not in ("architectures", "model_type")}
    with torch.device("meta"):
        model = Gemma3ForCausalLM(Gemma3TextConfig(**config))
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    # lm_head is tied to the embeddings: the Hub checkpoint has no lm_head and neither do we.
    assert model.config.tie_word_embeddings
    expected.pop("lm_head.weight")
    assert set(produced) == set(expected)
    assert {out: shapes[src] for out, src in produced.items()} == expected


def test_4b_text_only_shards_fit_the_declared_size(text_only_plan):
    manifest, plan, shapes = text_only_plan
    shards = plan.node("text.weights").params["shards"]
    assert [shard["file"] for shard in shards] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    sizes = [sum(2 * _numel(shapes[src]) for _, _, src in shard["tensors"]) for shard in shards]
    assert all(size <= manifest.targets["text"].max_shard_size for size in sizes)


def _numel(shape):
    count = 1
    for dimension in shape:
        count *= dimension
    return count


@pytest.mark.parametrize(
    "config_file",
    ["mlx-community_gemma-3-4b-it-bf16-config.json", "medgemma-27b-it-config.json"],
)
def test_rewritten_reference_config(config_file, snapshot):
    manifest = load_manifest(MANIFESTS / "medgemma-1.5-text-only.yaml")
    config = json.loads((REFERENCE / config_file).read_text())
    rewritten = apply_config_edits(config, manifest.config, "test")
    assert rewritten["architectures"] == ["Gemma3ForCausalLM"]
    assert rewritten["model_type"] == "gemma3_text"
    assert "vision_config" not in rewritten
    assert config_bytes(rewritten).decode() == snapshot
