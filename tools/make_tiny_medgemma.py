"""Generates fixtures/tiny-medgemma: a deterministic, seeded, few-megabyte Gemma3ForConditionalGeneration
checkpoint laid out exactly like the Hub's MedGemma repositories (legacy tensor names, two shards, index,
SentencePiece tokenizer with Gemma's special tokens, configs). Every file is byte-reproducible."""

from __future__ import annotations

import io
import json
import pathlib
import shutil
import sys
import tempfile

import safetensors.torch
import sentencepiece
import torch

SEED = 20250101
DEFAULT_OUTPUT_DIRECTORY = pathlib.Path("fixtures/tiny-medgemma")

# --- tokenizer ---------------------------------------------------------------------------------------

# SentencePiece pieces in the order that gives Gemma's fixed ids: <pad>=0, <eos>=1, <bos>=2, <unk>=3,
# then the user-defined symbols from id 4 on. The real Gemma 3 vocabulary places these symbols at
# scattered ids (105, 106, 255999, 256000); here they are packed, so code that hard-codes the real ids
# fails against this fixture instead of passing by accident.
USER_DEFINED_SYMBOLS = (
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
)
SENTENCEPIECE_VOCABULARY_SIZE = 960
# As on the Hub, <image_soft_token> is not a SentencePiece piece: it is an added token whose id is the
# SentencePiece vocabulary size (262144 for the real model, listed in added_tokens.json).
IMAGE_SOFT_TOKEN = "<image_soft_token>"
IMAGE_SOFT_TOKEN_ID = SENTENCEPIECE_VOCABULARY_SIZE
# The real embedding table has 64 rows more than the tokenizer's 262144 pieces (262208); same here.
MODEL_VOCABULARY_SIZE = SENTENCEPIECE_VOCABULARY_SIZE + 64


def token_id(symbol: str) -> int:
    """The id the tokenizer gives a special token (checked against the trained model in write_tokenizer)."""
    fixed = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, IMAGE_SOFT_TOKEN: IMAGE_SOFT_TOKEN_ID}
    if symbol in fixed:
        return fixed[symbol]
    return 4 + USER_DEFINED_SYMBOLS.index(symbol)


END_OF_TURN_ID = token_id("<end_of_turn>")


# Training text. Chat-formatted samples teach the tokenizer the turn markers and newline pieces that the
# chat template produces; the rest is short clinical prose.
CORPUS = (
    "The patient presented with acute chest pain radiating to the left arm.",
    "An electrocardiogram showed ST segment elevation in the inferior leads.",
    "Blood pressure was 142/88 mmHg and heart rate was 96 beats per minute.",
    "The chest X-ray demonstrates a right lower lobe consolidation consistent with pneumonia.",
    "No pleural effusion or pneumothorax is identified.",
    "The cardiac silhouette is within normal limits.",
    "Start amoxicillin 500 mg orally three times daily for seven days.",
    "The patient has a history of type 2 diabetes mellitus and hypertension.",
    "Hemoglobin A1c was 8.2 percent at the last visit.",
    "She reports shortness of breath on exertion and a dry cough for two weeks.",
    "Lung auscultation reveals crackles at the right base.",
    "The CT scan of the abdomen shows no evidence of appendicitis.",
    "Liver enzymes are mildly elevated; repeat the panel in four weeks.",
    "The MRI of the brain shows a small lacunar infarct in the left thalamus.",
    "Dermoscopy shows an asymmetric pigmented lesion with irregular borders.",
    "A biopsy is recommended to exclude melanoma.",
    "The fundus photograph shows dot and blot hemorrhages suggestive of diabetic retinopathy.",
    "Histopathology reveals invasive ductal carcinoma, grade 2.",
    "The radiologist recommends a follow-up CT in six months.",
    "The white blood cell count is 14,200 per microliter with neutrophilia.",
    "Serum creatinine increased from 0.9 to 1.6 mg/dL over 48 hours.",
    "Acute kidney injury is likely due to dehydration.",
    "Administer intravenous fluids and monitor urine output.",
    "The child has a fever of 39.2 degrees Celsius and a rash on the trunk.",
    "Vaccination history is up to date.",
    "Allergies: penicillin causes hives.",
    "Medications: metformin, lisinopril, atorvastatin.",
    "The patient denies nausea, vomiting, or diarrhea.",
    "Physical examination is notable for tenderness in the right upper quadrant.",
    "Ultrasound shows gallstones with gallbladder wall thickening.",
    "The findings are consistent with acute cholecystitis.",
    "Surgical consultation was requested.",
    "Oxygen saturation is 91 percent on room air.",
    "Chronic obstructive pulmonary disease exacerbation is suspected.",
    "Start nebulized bronchodilators and oral corticosteroids.",
    "The pathology slide shows normal lymph node architecture.",
    "There is no fracture or dislocation of the wrist.",
    "Mild degenerative changes are seen in the lumbar spine.",
    "The knee radiograph shows joint space narrowing and osteophytes.",
    "Recommend physical therapy and weight loss.",
    "Thyroid stimulating hormone is low and free T4 is elevated.",
    "The clinical picture suggests hyperthyroidism.",
    "Schedule a follow-up appointment in two weeks.",
    "The wound edges are clean and there is no erythema.",
    "Continue daily dressing changes.",
    "Patient education was provided about warning signs.",
    "Return to the emergency department if symptoms worsen.",
    "Headache, dizziness, and blurred vision began this morning.",
    "Neurological examination is otherwise unremarkable.",
    "The echocardiogram shows an ejection fraction of 35 percent.",
    "Heart failure with reduced ejection fraction is diagnosed.",
    "Initiate a beta blocker and an ACE inhibitor.",
    "The patient is a 67-year-old man with a 40 pack-year smoking history.",
    "A 2.3 cm spiculated nodule is seen in the right upper lobe.",
    "Further evaluation with PET-CT is advised.",
    "Glucose 212 mg/dL, sodium 134 mmol/L, potassium 4.1 mmol/L.",
    "The mammogram shows scattered fibroglandular densities.",
    "No suspicious mass or calcification is present.",
    "BI-RADS category 1: negative.",
    "Pain is rated 7 out of 10 and is worse at night.",
    "The abdomen is soft and non-tender with normal bowel sounds.",
    "Pulses are palpable in all four extremities.",
    "There is bilateral pitting edema of the lower legs.",
    "<start_of_turn>user\nYou are a helpful medical assistant.\n\nDescribe the findings in this chest"
    " radiograph.\n\n<start_of_image><end_of_turn>\n<start_of_turn>model\nThe lungs are clear. There is no"
    " focal consolidation.<end_of_turn>\n",
    "<start_of_turn>user\nWhat is the most likely diagnosis?<end_of_turn>\n<start_of_turn>model\n"
    "The most likely diagnosis is community acquired pneumonia.<end_of_turn>\n",
    "<start_of_turn>user\nSummarize the discharge note for the patient in plain language.<end_of_turn>\n"
    "<start_of_turn>model\nYou were treated for an infection. Take your medicine every day.<end_of_turn>\n",
    "<start_of_turn>user\nIs there any sign of infection in this image?\n\n<start_of_image><end_of_turn>\n"
    "<start_of_turn>model\nNo. The wound edges are clean.<end_of_turn>\n",
    "<start_of_turn>user\nPlease answer the question concisely: what does the model see?<end_of_turn>\n"
    "<start_of_turn>model\nA skin lesion on the forearm.<end_of_turn>\n",
)


def train_sentencepiece() -> bytes:
    """Trains the BPE SentencePiece model and returns its serialized ModelProto."""
    model_buffer = io.BytesIO()
    # Training from an iterator into a writer keeps file paths out of the ModelProto's trainer_spec,
    # which would otherwise make the bytes depend on where the script ran. One thread, no sampling and
    # no shuffling make the BPE merges a pure function of the corpus.
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model_buffer,
        model_type="bpe",
        vocab_size=SENTENCEPIECE_VOCABULARY_SIZE,
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=list(USER_DEFINED_SYMBOLS),
        # Gemma's normalization: no NFKC, whitespace kept as written, no leading "▁", digits split,
        # unknown characters as UTF-8 byte pieces.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        minloglevel=2,
    )
    return model_buffer.getvalue()


def build_tokenizer_json(sentencepiece_model_path: pathlib.Path) -> str:
    """Converts the SentencePiece model with transformers' own converter; returns tokenizer.json text."""
    import tokenizers
    from transformers import GemmaTokenizer

    # transformers 5.23's GemmaConverter is broken (its extractor reads a missing `sp` attribute);
    # GemmaTokenizer.from_pretrained on a directory holding only tokenizer.model is the conversion path
    # transformers itself takes for such repositories: vocabulary and merges from the ModelProto, Gemma's
    # normalizer, pre-tokenizer and byte-fallback decoder from GemmaTokenizer.
    with tempfile.TemporaryDirectory() as directory:
        shutil.copyfile(sentencepiece_model_path, pathlib.Path(directory) / "tokenizer.model")
        converted = GemmaTokenizer.from_pretrained(directory)
    backend = converted.backend_tokenizer
    # The conversion marks only control pieces and the named tokens special; on the Hub every Gemma
    # symbol is special (decode(skip_special_tokens=True) drops it), and the image soft token is an added
    # token just past the SentencePiece vocabulary.
    for symbol in (*USER_DEFINED_SYMBOLS, IMAGE_SOFT_TOKEN):
        backend.add_special_tokens([tokenizers.AddedToken(symbol, normalized=False)])
    if backend.token_to_id(IMAGE_SOFT_TOKEN) != IMAGE_SOFT_TOKEN_ID:
        raise RuntimeError(f"{IMAGE_SOFT_TOKEN} got id {backend.token_to_id(IMAGE_SOFT_TOKEN)}")
    # Gemma prepends <bos>; the Hub's tokenizer.json carries that as its post-processor.
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", 2)]
    )
    return backend.to_str(pretty=True)


def added_token_entry(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def tokenizer_config() -> dict:
    """tokenizer_config.json with the keys of the Hub's Gemma 3 ones (written by transformers 4.5x; no
    verbatim copy is in src/modelforge/reference_data/, so this follows the published files' key set)."""
    special_tokens = ("<pad>", "<eos>", "<bos>", "<unk>", *USER_DEFINED_SYMBOLS, IMAGE_SOFT_TOKEN)
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {str(token_id(token)): added_token_entry(token) for token in special_tokens},
        "boi_token": "<start_of_image>",
        "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False,
        "eoi_token": "<end_of_image>",
        "eos_token": "<eos>",
        "extra_special_tokens": {
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": IMAGE_SOFT_TOKEN,
        },
        "image_token": IMAGE_SOFT_TOKEN,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "processor_class": "Gemma3Processor",
        "sp_model_kwargs": None,
        "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer",
        "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }


def special_tokens_map() -> dict:
    """special_tokens_map.json, the same shape as the reference medgemma-27b-it one."""

    def special(content: str) -> dict:
        entry = added_token_entry(content)
        del entry["special"]
        return entry

    return {
        "boi_token": "<start_of_image>",
        "bos_token": special("<bos>"),
        "eoi_token": "<end_of_image>",
        "eos_token": special("<eos>"),
        "image_token": IMAGE_SOFT_TOKEN,
        "pad_token": special("<pad>"),
        "unk_token": special("<unk>"),
    }


# --- model configuration ----------------------------------------------------------------------------

TEXT_HIDDEN_SIZE = 64
TEXT_INTERMEDIATE_SIZE = 128
TEXT_LAYERS = 2
TEXT_ATTENTION_HEADS = 2
TEXT_KEY_VALUE_HEADS = 1
TEXT_HEAD_DIMENSION = 32
SLIDING_WINDOW = 32
VISION_HIDDEN_SIZE = 32
VISION_INTERMEDIATE_SIZE = 64
VISION_LAYERS = 1
VISION_ATTENTION_HEADS = 2
IMAGE_SIZE = 56
PATCH_SIZE = 14
# 56 / 14 = 4 patches a side; the projector average-pools them to 2 a side, i.e. 4 soft tokens.
MM_TOKENS_PER_IMAGE = 4


def model_config() -> dict:
    """config.json in the Hub's form (medgemma-27b-it: transformers 4.54 writer), shrunk and in float32."""
    return {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "boi_token_index": token_id("<start_of_image>"),
        "eoi_token_index": token_id("<end_of_image>"),
        "eos_token_id": [1, END_OF_TURN_ID],
        "image_token_index": IMAGE_SOFT_TOKEN_ID,
        "initializer_range": 0.02,
        "mm_tokens_per_image": MM_TOKENS_PER_IMAGE,
        "model_type": "gemma3",
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "head_dim": TEXT_HEAD_DIMENSION,
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": TEXT_HIDDEN_SIZE,
            "initializer_range": 0.02,
            "intermediate_size": TEXT_INTERMEDIATE_SIZE,
            # One local (sliding) and one global layer: the real pattern is five sliding then one full.
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 131072,
            "model_type": "gemma3_text",
            "num_attention_heads": TEXT_ATTENTION_HEADS,
            "num_hidden_layers": TEXT_LAYERS,
            "num_key_value_heads": TEXT_KEY_VALUE_HEADS,
            "query_pre_attn_scalar": TEXT_HEAD_DIMENSION,
            "rms_norm_eps": 1e-06,
            "rope_local_base_freq": 10000,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
            "rope_theta": 1000000,
            "sliding_window": SLIDING_WINDOW,
            "torch_dtype": "float32",
            "use_cache": True,
            "vocab_size": MODEL_VOCABULARY_SIZE,
        },
        "torch_dtype": "float32",
        "transformers_version": "4.54.0.dev0",
        "vision_config": {
            "attention_dropout": 0.0,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": VISION_HIDDEN_SIZE,
            "image_size": IMAGE_SIZE,
            "intermediate_size": VISION_INTERMEDIATE_SIZE,
            "layer_norm_eps": 1e-06,
            "model_type": "siglip_vision_model",
            "num_attention_heads": VISION_ATTENTION_HEADS,
            "num_channels": 3,
            "num_hidden_layers": VISION_LAYERS,
            "patch_size": PATCH_SIZE,
            "torch_dtype": "float32",
            "vision_use_head": False,
        },
    }


def generation_config() -> dict:
    return {
        "_from_model_config": True,
        "bos_token_id": 2,
        "eos_token_id": [1, END_OF_TURN_ID],
        "pad_token_id": 0,
        "transformers_version": "4.54.0.dev0",
    }


def preprocessor_config() -> dict:
    return {
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_pan_and_scan": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": MM_TOKENS_PER_IMAGE,
        "image_std": [0.5, 0.5, 0.5],
        "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }


def processor_config() -> dict:
    return {"image_seq_length": MM_TOKENS_PER_IMAGE, "processor_class": "Gemma3Processor"}


# --- weights ----------------------------------------------------------------------------------------


def legacy_tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, under the Hub's legacy names, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    text = "language_model.model."
    shapes[text + "embed_tokens.weight"] = (MODEL_VOCABULARY_SIZE, TEXT_HIDDEN_SIZE)
    shapes[text + "norm.weight"] = (TEXT_HIDDEN_SIZE,)
    query_width = TEXT_ATTENTION_HEADS * TEXT_HEAD_DIMENSION
    key_value_width = TEXT_KEY_VALUE_HEADS * TEXT_HEAD_DIMENSION
    for layer in range(TEXT_LAYERS):
        prefix = f"{text}layers.{layer}."
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            shapes[prefix + norm + ".weight"] = (TEXT_HIDDEN_SIZE,)
        shapes[prefix + "self_attn.q_proj.weight"] = (query_width, TEXT_HIDDEN_SIZE)
        shapes[prefix + "self_attn.k_proj.weight"] = (key_value_width, TEXT_HIDDEN_SIZE)
        shapes[prefix + "self_attn.v_proj.weight"] = (key_value_width, TEXT_HIDDEN_SIZE)
        shapes[prefix + "self_attn.o_proj.weight"] = (TEXT_HIDDEN_SIZE, query_width)
        shapes[prefix + "self_attn.q_norm.weight"] = (TEXT_HEAD_DIMENSION,)
        shapes[prefix + "self_attn.k_norm.weight"] = (TEXT_HEAD_DIMENSION,)
        shapes[prefix + "mlp.gate_proj.weight"] = (TEXT_INTERMEDIATE_SIZE, TEXT_HIDDEN_SIZE)
        shapes[prefix + "mlp.up_proj.weight"] = (TEXT_INTERMEDIATE_SIZE, TEXT_HIDDEN_SIZE)
        shapes[prefix + "mlp.down_proj.weight"] = (TEXT_HIDDEN_SIZE, TEXT_INTERMEDIATE_SIZE)
    vision = "vision_tower.vision_model."
    patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    shapes[vision + "embeddings.patch_embedding.weight"] = (VISION_HIDDEN_SIZE, 3, PATCH_SIZE, PATCH_SIZE)
    shapes[vision + "embeddings.patch_embedding.bias"] = (VISION_HIDDEN_SIZE,)
    shapes[vision + "embeddings.position_embedding.weight"] = (patches, VISION_HIDDEN_SIZE)
    for layer in range(VISION_LAYERS):
        prefix = f"{vision}encoder.layers.{layer}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[prefix + norm + ".weight"] = (VISION_HIDDEN_SIZE,)
            shapes[prefix + norm + ".bias"] = (VISION_HIDDEN_SIZE,)
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[prefix + f"self_attn.{projection}.weight"] = (VISION_HIDDEN_SIZE, VISION_HIDDEN_SIZE)
            shapes[prefix + f"self_attn.{projection}.bias"] = (VISION_HIDDEN_SIZE,)
        shapes[prefix + "mlp.fc1.weight"] = (VISION_INTERMEDIATE_SIZE, VISION_HIDDEN_SIZE)
        shapes[prefix + "mlp.fc1.bias"] = (VISION_INTERMEDIATE_SIZE,)
        shapes[prefix + "mlp.fc2.weight"] = (VISION_HIDDEN_SIZE, VISION_INTERMEDIATE_SIZE)
        shapes[prefix + "mlp.fc2.bias"] = (VISION_HIDDEN_SIZE,)
    shapes[vision + "post_layernorm.weight"] = (VISION_HIDDEN_SIZE,)
    shapes[vision + "post_layernorm.bias"] = (VISION_HIDDEN_SIZE,)
    # The projector's matrix is stored input-by-output (vision width × text width), with no dot before
    # "weight": it is a bare nn.Parameter, not an nn.Linear.
    shapes["multi_modal_projector.mm_input_projection_weight"] = (VISION_HIDDEN_SIZE, TEXT_HIDDEN_SIZE)
    shapes["multi_modal_projector.mm_soft_emb_norm.weight"] = (VISION_HIDDEN_SIZE,)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A seeded tensor. The scales are chosen so that the random model does not just repeat its last
    token (a tied embedding otherwise dominates the residual stream and predicts itself) and so that the
    top two logits stay apart (greedy decoding of an export must not hinge on float rounding): with
    these scales, 20 greedy steps from five prompts give 17 to 20 distinct tokens each, with top-two
    logit margins of at least 0.018 (float32 export error is around 1e-4)."""
    # Uniform, not normal: torch.randn's CPU kernel has a vectorized and a scalar Box-Muller (with
    # different log/cos) chosen by CPU capability, so its bytes differ between machines; torch.rand only
    # scales integers from the Mersenne Twister, which is exact everywhere. Scaled to unit variance.
    noise = (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * 3.0**0.5
    if name.endswith("embed_tokens.weight"):
        # Gemma multiplies embeddings by sqrt(hidden size) = 8: this gives the stream unit scale.
        return noise * 0.125
    if name.startswith("vision_tower.") and ("layer_norm" in name or "layernorm" in name):
        # SigLIP's nn.LayerNorm multiplies by its weight directly: keep the weight near one.
        return 1.0 + noise * 0.1 if name.endswith(".weight") else noise * 0.1
    # Gemma RMS norms multiply by (1 + weight), so weight 0 is the identity.
    if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
        # Gain about 6: attention and MLP outputs outweigh the token's own embedding.
        return 5.0 + noise * 0.1
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        # Gain about 3: sharper attention, so the output depends on the context.
        return 2.0 + noise * 0.1
    if name == "language_model.model.norm.weight":
        # Gain about 4: spreads the logits.
        return 3.0 + noise * 0.1
    if len(shape) == 1:
        # The other norms near identity; biases small.
        return noise * 0.1
    if name.endswith("position_embedding.weight"):
        return noise * 0.1
    # Matrices: unit-variance outputs for unit-variance inputs.
    if name == "multi_modal_projector.mm_input_projection_weight":
        fan_in = shape[0]  # stored input-by-output
    else:
        fan_in = 1
        for size in shape[1:]:
            fan_in *= size
    return noise / fan_in**0.5


def build_weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    # Drawn in sorted-name order so the stream of random numbers each tensor gets does not depend on
    # the insertion order of legacy_tensor_shapes.
    shapes = legacy_tensor_shapes()
    return {name: random_tensor(name, shapes[name], generator).contiguous() for name in sorted(shapes)}


def shard_of(name: str) -> int:
    """Shard 1 holds the text decoder layers; shard 2 holds embeddings, final norm, vision and projector."""
    return 1 if name.startswith("language_model.model.layers.") else 2


# --- writing ----------------------------------------------------------------------------------------


def json_text(value: dict) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_weights(out_dir: pathlib.Path) -> None:
    weights = build_weights()
    shard_names = {number: f"model-0000{number}-of-00002.safetensors" for number in (1, 2)}
    weight_map = {}
    for number, shard_name in shard_names.items():
        shard = {name: tensor for name, tensor in weights.items() if shard_of(name) == number}
        # save_file writes tensors sorted by name with a header that depends only on names, dtypes and
        # shapes, so equal dictionaries give equal bytes.
        safetensors.torch.save_file(shard, str(out_dir / shard_name), metadata={"format": "pt"})
        weight_map.update({name: shard_name for name in shard})
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in weights.values())
    total_parameters = sum(tensor.numel() for tensor in weights.values())
    index = {
        "metadata": {"total_parameters": total_parameters, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out_dir / "model.safetensors.index.json").write_text(json_text(index), encoding="utf-8")


def write_tokenizer(out_dir: pathlib.Path) -> None:
    model_bytes = train_sentencepiece()
    trained = sentencepiece.SentencePieceProcessor(model_proto=model_bytes)
    # The config's token indices come from token_id(); fail here rather than ship a mismatch.
    piece_count = trained.get_piece_size()
    if piece_count != SENTENCEPIECE_VOCABULARY_SIZE:
        raise RuntimeError(f"trained {piece_count} pieces, wanted {SENTENCEPIECE_VOCABULARY_SIZE}")
    for symbol in ("<pad>", "<eos>", "<bos>", "<unk>", *USER_DEFINED_SYMBOLS):
        trained_id = trained.piece_to_id(symbol)
        if trained_id != token_id(symbol):
            raise RuntimeError(f"{symbol} got id {trained_id}, the config says {token_id(symbol)}")
    sentencepiece_model_path = out_dir / "tokenizer.model"
    sentencepiece_model_path.write_bytes(model_bytes)
    # Hub tokenizer.json files are tokenizers' own pretty output, which has no trailing newline.
    tokenizer_json = build_tokenizer_json(sentencepiece_model_path)
    (out_dir / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (out_dir / "tokenizer_config.json").write_text(json_text(tokenizer_config()), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json_text(special_tokens_map()), encoding="utf-8")
    added_tokens = {IMAGE_SOFT_TOKEN: IMAGE_SOFT_TOKEN_ID}
    (out_dir / "added_tokens.json").write_text(json_text(added_tokens), encoding="utf-8")


# The Gemma 3 chat template, verbatim from google/medgemma-27b-it (kept in the script so that the
# generator does not depend on files outside the repository).
CHAT_TEMPLATE = r'''{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '

' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '

' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '
' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>
' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model
'}}
{%- endif -%}
'''


def generate(out_dir: pathlib.Path) -> None:
    """Writes the whole fixture into out_dir (created if missing; existing files are overwritten)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_weights(out_dir)
    write_tokenizer(out_dir)
    (out_dir / "config.json").write_text(json_text(model_config()), encoding="utf-8")
    (out_dir / "generation_config.json").write_text(json_text(generation_config()), encoding="utf-8")
    (out_dir / "preprocessor_config.json").write_text(json_text(preprocessor_config()), encoding="utf-8")
    (out_dir / "processor_config.json").write_text(json_text(processor_config()), encoding="utf-8")
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    out_dir = pathlib.Path(arguments[0]) if arguments else DEFAULT_OUTPUT_DIRECTORY
    generate(out_dir)
    for path in sorted(out_dir.iterdir()):
        print(f"{path.stat().st_size:>10}  {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
