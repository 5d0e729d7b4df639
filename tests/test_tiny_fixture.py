"""Checks fixtures/tiny-medgemma: it is byte for byte what tools/make_tiny_medgemma.py generates, it is
in the Hub's legacy MedGemma layout, and transformers loads its model, tokenizer and processor."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = REPOSITORY_ROOT / "fixtures" / "tiny-medgemma"
GENERATOR = REPOSITORY_ROOT / "tools" / "make_tiny_medgemma.py"

# Gemma's fixed ids for the first four pieces, and this fixture's ids for the rest (the real model has
# <start_of_turn>=105, <end_of_turn>=106, <start_of_image>=255999, <end_of_image>=256000,
# <image_soft_token>=262144).
EXPECTED_TOKEN_IDS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<mask>": 4,
    "[multimodal]": 5,
    "<start_of_turn>": 6,
    "<end_of_turn>": 7,
    "<start_of_image>": 8,
    "<end_of_image>": 9,
    "<image_soft_token>": 960,
}


@pytest.fixture(scope="module")
def generator_module():
    specification = importlib.util.spec_from_file_location("make_tiny_medgemma", GENERATOR)
    module = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(module)
    return module


def file_names(directory: pathlib.Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_regenerated_fixture_is_byte_identical(generator_module, tmp_path):
    generator_module.generate(tmp_path)
    assert file_names(tmp_path) == file_names(FIXTURE)
    for name in file_names(FIXTURE):
        assert (tmp_path / name).read_bytes() == (FIXTURE / name).read_bytes(), (
            f"{name} differs from the committed fixture; rerun `python tools/make_tiny_medgemma.py` "
            "if the change is intended"
        )


def test_fixture_has_the_hubs_file_set():
    assert file_names(FIXTURE) == [
        "added_tokens.json",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "preprocessor_config.json",
        "processor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    assert sum(path.stat().st_size for path in FIXTURE.iterdir()) < 3 * 1024 * 1024


def test_weights_use_the_legacy_key_layout_in_float32():
    from safetensors import safe_open

    index = json.loads((FIXTURE / "model.safetensors.index.json").read_text())
    weight_map = index["weight_map"]
    assert list(weight_map) == sorted(weight_map)
    total_size = 0
    for shard_name in sorted(set(weight_map.values())):
        with safe_open(FIXTURE / shard_name, framework="pt") as shard:
            assert shard.metadata() == {"format": "pt"}
            names = list(shard.keys())
            assert all(weight_map[name] == shard_name for name in names)
            for name in names:
                tensor = shard.get_tensor(name)
                assert str(tensor.dtype) == "torch.float32", name
                total_size += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total_size
    assert not [name for name in weight_map if "lm_head" in name]
    prefixes = ("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector.")
    assert all(name.startswith(prefixes) for name in weight_map)
    for name in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
        "language_model.model.layers.1.self_attn.k_norm.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.bias",
        "vision_tower.vision_model.post_layernorm.weight",
        "multi_modal_projector.mm_input_projection_weight",
        "multi_modal_projector.mm_soft_emb_norm.weight",
    ):
        assert name in weight_map
    assert len(weight_map) == 51


def test_model_loads_with_no_missing_or_unexpected_keys_and_runs_on_an_image():
    import torch
    from transformers import Gemma3ForConditionalGeneration

    model, loading_info = Gemma3ForConditionalGeneration.from_pretrained(FIXTURE, output_loading_info=True)
    assert loading_info["missing_keys"] == set()
    assert loading_info["unexpected_keys"] == set()
    assert loading_info["mismatched_keys"] == set()
    assert model.dtype == torch.float32
    # Tied: the output projection is the embedding table.
    assert model.lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()

    config = model.config
    image_ids = [config.boi_token_index] + [config.image_token_index] * config.mm_tokens_per_image
    input_ids = torch.tensor([[2, 6, 376, 917] + image_ids + [config.eoi_token_index, 269, 7, 917]])
    token_type_ids = (input_ids == config.image_token_index).long()
    size = config.vision_config.image_size
    pixels = torch.rand((1, 3, size, size), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        with_image = model(input_ids=input_ids, pixel_values=pixels, token_type_ids=token_type_ids).logits
        other_image = model(input_ids=input_ids, pixel_values=-pixels, token_type_ids=token_type_ids).logits
    assert with_image.shape == (1, input_ids.shape[1], config.text_config.vocab_size)
    assert torch.isfinite(with_image).all()
    # The vision tower and projector are wired in: the image changes what follows it.
    assert not torch.allclose(with_image[0, -1], other_image[0, -1])


def test_tokenizer_special_token_ids_match_the_config():
    import sentencepiece
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in EXPECTED_TOKEN_IDS}
    assert ids == EXPECTED_TOKEN_IDS
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token_id == 3
    assert (tokenizer.boi_token_id, tokenizer.eoi_token_id, tokenizer.image_token_id) == (8, 9, 960)
    assert len(tokenizer) == 961

    config = json.loads((FIXTURE / "config.json").read_text())
    assert config["boi_token_index"] == EXPECTED_TOKEN_IDS["<start_of_image>"]
    assert config["eoi_token_index"] == EXPECTED_TOKEN_IDS["<end_of_image>"]
    assert config["image_token_index"] == EXPECTED_TOKEN_IDS["<image_soft_token>"]
    assert config["text_config"]["vocab_size"] > max(EXPECTED_TOKEN_IDS.values())
    generation_config = json.loads((FIXTURE / "generation_config.json").read_text())
    assert generation_config["eos_token_id"] == [1, EXPECTED_TOKEN_IDS["<end_of_turn>"]]
    added_tokens = json.loads((FIXTURE / "added_tokens.json").read_text())
    assert added_tokens == {"<image_soft_token>": 960}

    # As on the Hub, the image soft token is outside the SentencePiece model; everything else is in it.
    processor = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURE / "tokenizer.model"))
    assert processor.get_piece_size() == 960
    for token, token_id in EXPECTED_TOKEN_IDS.items():
        if token != "<image_soft_token>":
            assert processor.piece_to_id(token) == token_id

    # tokenizer.json is a faithful conversion of tokenizer.model.
    for text in ("The patient presented with chest pain.", "Hb 8.2 g/dL\n\n  two  spaces\ttab é 💊"):
        assert tokenizer(text).input_ids == [2] + processor.encode(text)
        assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text


def test_chat_template_renders_gemma_turns():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(FIXTURE)
    messages = [
        {"role": "system", "content": "You are a radiologist."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the X-ray."}]},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<bos><start_of_turn>user\nYou are a radiologist.\n\n<start_of_image>Describe the X-ray."
        "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_processor_expands_the_image_into_soft_tokens():
    import numpy
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(FIXTURE)
    image = Image.fromarray(numpy.zeros((80, 100, 3), dtype=numpy.uint8))
    inputs = processor(text="<start_of_image>Describe.", images=[image], return_tensors="pt")
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 56, 56)
    assert inputs["input_ids"][0].tolist().count(960) == 4
