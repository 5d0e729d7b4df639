"""The onnx steps' jobs, run in a fresh interpreter with PYTHONHASHSEED=0 through steps/workers.py's
launch() and main() (the same process discipline: peak memory measured, torch and onnxruntime kept
out of modelforge's own process). Actions: export (the text decoder through onnxruntime-genai's
builder, steps/onnx/genai_builder.py; the vision tower + projector and the embedding graph through
torch.onnx.export with dynamo), quantize (MatMulNBits on the vision graph) and the parity phases.

Usage: python -m modelforge.steps.onnx.worker REQUEST.json   (writes result.json beside it)
"""

from __future__ import annotations

import json
from pathlib import Path

MODULE = "modelforge.steps.onnx.worker"
# The vision side of Gemma3ForConditionalGeneration, plus the token embedding the embedding graph holds.
EMBEDDING = "model.language_model.embed_tokens.weight"


def export(request: dict) -> dict:
    work = Path(request["work_dir"])
    if request["part"] == "text":
        from modelforge.steps.onnx import genai_builder

        out = work / "decoder"
        report = genai_builder.build(
            Path(request["checkpoint"]), out, work / "builder-cache", precision=request["precision"],
            block_size=request["block_size"], context_length=request["context_length"],
            exclude_embeds=request["exclude_embeds"], fix_local_rope=request.get("fix_local_rope", True),
        )
        files = {path.name: str(path) for path in sorted(out.iterdir()) if path.is_file()}
        return {"files": files, "report": report}
    return export_vision(Path(request["checkpoint"]), work, request["attention_heads_per_group"])


# The vision tower's attention as transformers' eager attention, computed a group of heads at a time:
# one MatMul/Softmax/MatMul per group, so no tensor of the graph holds more than a group's scores.
ATTENTION_BY_HEAD_GROUPS = "modelforge_head_groups"


def attention_by_head_groups(heads_per_group: int):
    """An attention function for transformers' AttentionInterface: SigLIP's eager attention (the same
    operations per head: scores, softmax in float32, weighted values) over `heads_per_group` heads at
    a time, concatenated in head order."""
    from transformers.models.siglip.modeling_siglip import eager_attention_forward

    def forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        import torch

        heads = query.shape[1]
        if heads_per_group >= heads:
            return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
        outputs = []
        for start in range(0, heads, heads_per_group):
            group = slice(start, start + heads_per_group)
            mask = attention_mask if attention_mask is None or attention_mask.shape[1] == 1 else attention_mask[:, group]
            output, _ = eager_attention_forward(module, query[:, group], key[:, group], value[:, group], mask, scaling, dropout, **kwargs)
            outputs.append(output)  # [batch, patches, group, head_dim]
        return torch.cat(outputs, dim=2), None

    return forward


def _vision_model(checkpoint: Path, heads_per_group: int):
    """Gemma3ForConditionalGeneration with only the vision tower, projector and token embedding read;
    its vision attention computed `heads_per_group` heads at a time."""
    import torch
    import transformers

    from modelforge.steps import partial_load

    config = transformers.AutoConfig.from_pretrained(checkpoint, trust_remote_code=False)
    with partial_load.meta_parameters():
        model = transformers.Gemma3ForConditionalGeneration._from_config(config, dtype=torch.float32)
    shards = partial_load.Shards(checkpoint)
    try:
        partial_load.materialize(model, shards, lambda name: name.startswith(partial_load.VISION_MODULES) or name == EMBEDDING)
    finally:
        shards.close()
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_BY_HEAD_GROUPS, attention_by_head_groups(heads_per_group))
    model.model.vision_tower.set_attn_implementation(ATTENTION_BY_HEAD_GROUPS)
    return model.eval(), config


def export_vision(checkpoint: Path, work: Path, heads_per_group: int) -> dict:
    """vision.onnx: pixel_values [1, 3, H, W] (the processor's normalized pixels) → image_features
    [T, D] (SigLIP tower + multi-modal projector; rank 2 because onnxruntime-genai allocates the
    vision output with the rank of the graph's output and hands that buffer unchanged to the
    embedding graph's image_features input). embedding.onnx: input_ids [1, S] int64 and
    image_features [N, D] → inputs_embeds [1, S, D]: Gemma's scaled token embedding with the image
    features put at the image-token positions in order (Gemma3Model.get_placeholder_mask +
    masked_scatter), the input the builder's decoder takes when built with exclude_embeds.
    `heads_per_group`: the vision attention's heads computed together (targets/onnx.py bounds one
    group's scores to what every WebGPU adapter can bind); all of them: one MatMul a layer, eager."""
    import torch

    model, config = _vision_model(checkpoint, heads_per_group)

    class Vision(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            features = self.model.model.get_image_features(pixel_values=pixel_values)
            features = features.pooler_output if hasattr(features, "pooler_output") else features
            return features.reshape(-1, features.shape[-1])

    class Embedding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = model.model.language_model.embed_tokens  # Gemma3TextScaledWordEmbedding: the scale is inside
            self.image_token = config.image_token_index

        def forward(self, input_ids, image_features):
            embeds = self.embed(input_ids)
            mask = input_ids == self.image_token
            padded = torch.cat([torch.zeros_like(image_features[:1]), image_features], dim=0)
            index = torch.cumsum(mask.to(torch.int64), dim=-1) * mask.to(torch.int64)  # 0: a text token
            return torch.where(mask.unsqueeze(-1), padded[index], embeds)

    size = config.vision_config.image_size
    out = work / "graphs"
    out.mkdir(parents=True)
    with torch.no_grad():
        torch.onnx.export(Vision(), (torch.zeros(1, 3, size, size),), str(out / "vision.onnx"), dynamo=True, external_data=True,
                          input_names=["pixel_values"], output_names=["image_features"], verbose=False)
        ids = torch.tensor([[2, 5, config.image_token_index, config.image_token_index, 7]], dtype=torch.int64)
        sequence = torch.export.Dim("sequence_length", min=1, max=1 << 20)
        images = torch.export.Dim("image_tokens", min=1, max=1 << 16)
        torch.onnx.export(Embedding(), (ids, torch.zeros(2, config.text_config.hidden_size)), str(out / "embedding.onnx"),
                          dynamo=True, external_data=True, input_names=["input_ids", "image_features"], output_names=["inputs_embeds"],
                          dynamic_shapes=({1: sequence}, {0: images}), verbose=False)
    for graph in ("vision.onnx", "embedding.onnx"):
        strip_stack_traces(out / graph)
    return {"files": {path.name: str(path) for path in sorted(out.iterdir()) if path.is_file()}, "report": {}}


def strip_stack_traces(path: Path) -> None:
    """torch.onnx.export records each node's Python stack trace (absolute paths and line numbers of
    the exporting code and of the installed transformers) in its metadata: the same model from
    another checkout or virtualenv would differ in bytes. The traces go; the weights (external
    data) are not read or rewritten."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            kept = [entry for entry in node.metadata_props if entry.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
            graphs += [attribute.g for attribute in node.attribute if attribute.HasField("g")]
    for function in model.functions:
        for node in function.node:
            kept = [entry for entry in node.metadata_props if entry.key != "pkg.torch.onnx.stack_trace"]
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
    onnx.save_model(model, str(path))


def quantize(request: dict) -> dict:
    """MatMulNBits (onnxruntime's weight-only quantizer) on every MatMul with a constant weight of
    `file`: int8 or int4, symmetric, in blocks of block_size, fp32 activations (accuracy level 1).
    embedding.onnx has no MatMul: its token table is quantized for a GatherBlockQuantized instead
    (quantize_embedding)."""
    import onnx

    if request["file"] == "embedding.onnx":
        return quantize_embedding(request)
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    source = Path(request["input_dir"]) / request["file"]
    bits = {"int8": 8, "int4": 4}[request["precision"]]
    model = onnx.load(str(source), load_external_data=True)
    config = DefaultWeightOnlyQuantConfig(block_size=request["block_size"], is_symmetric=True, accuracy_level=1, bits=bits)
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=request["block_size"], is_symmetric=True, accuracy_level=1, algo_config=config)
    quantizer.process()
    quantized = quantizer.model.model
    count = sum(node.op_type == "MatMulNBits" for node in quantized.graph.node)
    if count == 0:
        raise RuntimeError(f"{request['file']}: no MatMul with a constant weight to quantize")
    out = Path(request["work_dir"]) / "quantized"
    out.mkdir(parents=True)
    target = out / request["file"]
    onnx.save_model(quantized, str(target), save_as_external_data=True, all_tensors_to_one_file=True, location=request["file"] + ".data", size_threshold=1024)
    return {"files": {path.name: str(path) for path in sorted(out.iterdir())}, "report": {"quantized_matmuls": count}}


def quantize_embedding(request: dict) -> dict:
    """embedding.onnx's token table (vocabulary × hidden, float32: 2.69 GB at MedGemma 4B) in int4
    blocks of block_size along the hidden axis, read by com.microsoft GatherBlockQuantized: the form
    onnxruntime-genai's builder gives a tied int4 embedding, quantized by the kernel that quantizes
    the decoder's tied output head (symmetric, zero point 8, float32 scales), so a token's embedding
    dequantizes as its row of the head does. The table is read from the data file a block of rows
    at a time (memory-mapped), so the step never holds it whole. One float32 table is also more
    than onnxruntime-web can load (a tensor above 2 GiB overflows its 32-bit sizes)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    if request["precision"] != "int4":
        raise RuntimeError(f"embedding.onnx: GatherBlockQuantized takes int4 tables here, not {request['precision']}")
    source = Path(request["input_dir"]) / request["file"]
    block = request["block_size"]
    model = onnx.load(str(source), load_external_data=False)
    initializers = {item.name: item for item in model.graph.initializer}
    gathers = [node for node in model.graph.node if node.op_type == "Gather" and node.input[0] in initializers
               and len(initializers[node.input[0]].dims) == 2]
    if len(gathers) != 1:
        raise RuntimeError(f"embedding.onnx: expected one Gather over a constant table, found {len(gathers)}")
    gather = gathers[0]

    def stored(item) -> np.ndarray:
        """An initializer's values, memory-mapped from the data file where it lives there."""
        if item.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(item)
        where = {entry.key: entry.value for entry in item.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(item.data_type)
        return np.memmap(source.parent / where["location"], dtype=dtype, mode="r", offset=int(where.get("offset", 0)), shape=tuple(item.dims))

    table = stored(initializers[gather.input[0]])
    if table.dtype != np.float32 or table.shape[1] % block:
        raise RuntimeError(f"embedding.onnx: the table is {table.dtype} {table.shape}; expected float32 with whole blocks of {block}")
    vocab, hidden = table.shape
    blocks = hidden // block
    packed = np.zeros((vocab, blocks, block // 2), np.uint8)
    scales = np.zeros((vocab, blocks), np.float32)
    for start in range(0, vocab, 8192):
        rows = np.ascontiguousarray(table[start:start + 8192].T)  # [hidden, rows]: the head's MatMul B layout
        count = rows.shape[1]
        chunk_packed = np.zeros((count, blocks, block // 2), np.uint8)
        chunk_scales = np.zeros(count * blocks, np.float32)
        unused_zero_points = np.zeros(count * ((blocks + 1) // 2), np.uint8)  # symmetric: none written to the graph
        quantize_matmul_4bits(chunk_packed, rows, chunk_scales, unused_zero_points, block, count, hidden, True)
        packed[start:start + count], scales[start:start + count] = chunk_packed, chunk_scales.reshape(count, blocks)
    name = gather.input[0]
    kept = []
    for item in model.graph.initializer:
        if item.name == name:
            continue
        value = numpy_helper.from_array(np.array(stored(item)), item.name)
        kept.append(value)
    del model.graph.initializer[:]
    model.graph.initializer.extend([*kept, numpy_helper.from_array(packed.reshape(vocab, blocks * block // 2), f"{name}_Q4"),
                                    numpy_helper.from_array(scales, f"{name}_scales")])
    index = list(model.graph.node).index(gather)
    replacement = helper.make_node(
        "GatherBlockQuantized", [f"{name}_Q4", gather.input[1], f"{name}_scales"], list(gather.output),
        name=f"{gather.name}/GatherBlockQuantized", domain="com.microsoft", bits=4, block_size=block, gather_axis=0, quantize_axis=1)
    model.graph.node.remove(gather)
    model.graph.node.insert(index, replacement)
    if not any(entry.domain == "com.microsoft" for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    out = Path(request["work_dir"]) / "quantized"
    out.mkdir(parents=True)
    onnx.save_model(model, str(out / request["file"]), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=request["file"] + ".data", size_threshold=1024)
    return {"files": {path.name: str(path) for path in sorted(out.iterdir())},
            "report": {"quantized_table": name, "rows": int(vocab), "float32_bytes": int(table.nbytes), "int4_bytes": int(packed.nbytes + scales.nbytes)}}


# --- parity --------------------------------------------------------------------------------------

class OnnxGemma:
    """The target's graphs in onnxruntime (CPU): the decoder with its KV cache driven by hand, and
    for a multimodal target the embedding and vision graphs in front of it."""

    def __init__(self, models: Path):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # one thread: the float reductions repeat from run to run
        self.decoder = onnxruntime.InferenceSession(str(models / "model.onnx"), options, providers=["CPUExecutionProvider"])
        names = {item.name for item in self.decoder.get_inputs()}
        self.embedding = onnxruntime.InferenceSession(str(models / "embedding.onnx"), options) if "inputs_embeds" in names else None
        self.vision = onnxruntime.InferenceSession(str(models / "vision.onnx"), options) if (models / "vision.onnx").exists() else None
        self.past = [item.name for item in self.decoder.get_inputs() if item.name.startswith("past_key_values")]
        decoder = json.loads((models / "genai_config.json").read_text())["model"]["decoder"]
        self.kv_heads, self.head_size = decoder["num_key_value_heads"], decoder["head_size"]  # symbolic in the graph
        self.outputs = [item.name for item in self.decoder.get_outputs()]
        self.hidden = int(self.embedding.get_outputs()[0].shape[-1]) if self.embedding else 0

    def features(self, pixel_values):
        import numpy as np

        return self.vision.run(None, {"pixel_values": pixel_values.astype(np.float32)})[0]

    def start(self):
        import numpy as np

        self.cache = {name: np.zeros((1, self.kv_heads, 0, self.head_size), np.float32) for name in self.past}
        self.length = 0

    def step(self, tokens: list[int], features=None):
        """Feed `tokens` (a prompt, or one token); the last position's logits, float64."""
        import numpy as np

        ids = np.array([tokens], np.int64)
        self.length += len(tokens)
        feeds = {"attention_mask": np.ones((1, self.length), np.int64), **self.cache}
        if self.embedding is not None:
            image = features if features is not None else np.zeros((1, self.hidden), np.float32)
            feeds["inputs_embeds"] = self.embedding.run(None, {"input_ids": ids, "image_features": image})[0]
        else:
            feeds["input_ids"] = ids
        result = dict(zip(self.outputs, self.decoder.run(None, feeds)))
        self.cache = {name: result[name.replace("past_key_values", "present")] for name in self.past}
        return result["logits"][0, -1].astype(np.float64)


def onnx_graphs(request: dict) -> dict:
    """Phase `onnx_graphs`: the decoder teacher-forced along PyTorch's greedy tokens (next-token
    logits compared step by step, as parity_phases.text_parity does for LiteRT), how many of PyTorch's
    greedy tokens it reproduces free-running, and the vision graph's embeddings by cosine."""
    import numpy as np

    from modelforge.steps.parity import references_dir
    from modelforge.steps.parity_phases import LogitComparison

    models, references = Path(request["models_dir"]), references_dir(request)
    runner = OnnxGemma(models)
    saved = np.load(references / "text.npz")
    comparison = LogitComparison()
    for index in range(len(request["prompts"])):
        ids, reference_tokens = saved[f"ids_{index}"].tolist(), saved[f"tokens_{index}"].tolist()
        reference_logits = saved[f"logits_{index}"].astype(np.float64)
        runner.start()
        comparison.start_prompt()
        logits = runner.step(ids)
        for step, reference_token in enumerate(reference_tokens):
            comparison.add(logits, reference_logits[step], reference_token)
            if step + 1 < len(reference_tokens):
                logits = runner.step([reference_token])  # teacher forcing keeps the two aligned
    report = comparison.report()
    if runner.vision is not None and request.get("cards"):
        from PIL import Image
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(Path(request["checkpoint"]), trust_remote_code=False)
        saved_vision = np.load(references / "vision.npz")
        cosines = []
        for index, card in enumerate(request["cards"]):
            with Image.open(card) as image:
                pixels = processor.image_processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"]
            got = runner.features(pixels).reshape(-1).astype(np.float64)
            want = saved_vision[f"arr_{index}"].reshape(-1)
            cosines.append(float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
        report["vision_cosine"] = min(cosines)
    return {"report": report}


def parity(request: dict) -> dict:
    from modelforge.steps.parity_phases import PHASES

    phases = {**PHASES, "onnx_graphs": onnx_graphs}
    return phases[request["phase"]](request)


ACTIONS = {"export": export, "quantize": quantize, "parity": parity}


if __name__ == "__main__":
    from modelforge.steps.workers import serve

    serve(ACTIONS)

