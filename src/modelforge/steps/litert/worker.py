"""Runs one litert-torch / ai-edge-quantizer / ai-edge-litert job in a fresh interpreter, started by
the litert steps with PYTHONHASHSEED=0: litert-torch and transformers iterate Python sets while
tracing, so only a fixed hash seed gives byte-identical graphs. A separate process also keeps
TensorFlow and torch out of modelforge's own process and lets the step measure peak memory.

Usage: python -m modelforge.steps.litert.worker REQUEST.json   (writes RESULT.json beside it)
"""

from __future__ import annotations

from pathlib import Path

from modelforge.faults import fault_point  # the safety tests' hook; imports nothing heavy

MODULE = "modelforge.steps.litert.worker"



def _resolve(root, dotted: str):
    node = root
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise LookupError(f"the model has no module at {dotted!r} (stopped at {part!r})")
        node = getattr(node, part)
    return node


def apply_hoists(model, hoists: list[dict]) -> dict:
    """Lift nested modules to top-level attributes; returns what ended up where, for the report."""
    import torch

    report = {}
    for hoist in hoists:
        module = _resolve(model, hoist["path"])
        if not isinstance(module, torch.nn.Module):
            raise LookupError(f"hoist {hoist['name']!r}: {hoist['path']!r} is a {type(module).__name__}, not a module")
        setattr(model, hoist["to"], module)
        report[hoist["name"]] = {
            "path": hoist["path"],
            "to": hoist["to"],
            "class": type(getattr(model, hoist["to"])).__name__,
            "same_object": getattr(model, hoist["to"]) is module,
        }
    return report


def load_part(checkpoint: Path, config, part: str):
    """litert-torch's load_model with every parameter on the meta device, then only the tensors
    `part` traces read from the checkpoint (modelforge.steps.partial_load): the text decoder for
    'text', the vision tower and projector (and the end-of-image embedding rows) for 'vision'.
    The shards are closed before returning, so no file pages stay mapped."""
    import dataclasses

    from litert_torch.generative.export_hf.core import export_lib

    from modelforge.steps import partial_load

    with partial_load.meta_parameters():
        source = export_lib.load_model(str(checkpoint), dataclasses.replace(config, use_random_weights=True),
                                       trust_remote_code=False, task=config.task)
    source.model.eval()
    shards = partial_load.Shards(checkpoint)
    try:
        partial_load.materialize(source.model, shards, partial_load.wants(part))
        eoi_rows = _eoi_embedding_rows(source.model, source.tokenizer, shards) if part == "vision" else None
    finally:
        shards.close()
    return source, eoi_rows


def _eoi_embedding_rows(model, tokenizer, shards):
    """The scaled embedding rows of the end-of-image token(s), the only part of the 262k-row table
    the vision adapter uses: read as a slice instead of loading the table."""
    import torch

    embedder = model.get_input_embeddings()
    ids = tokenizer.encode(tokenizer.special_tokens_map["eoi_token"], add_special_tokens=False)
    name = next(name for name, parameter in model.named_parameters(remove_duplicate=False) if parameter is embedder.weight)
    rows = shards.rows(name, ids).to(torch.float32)
    # Gemma3TextScaledWordEmbedding.forward: embedding(ids) * embed_scale in the weight's dtype.
    return rows * embedder.embed_scale.to(torch.float32)


def _vision_holder(model, eoi_rows):
    """An nn.Module that answers the attributes litert-torch's Gemma 3 vision exportables use
    (model.vision_tower, model.multi_modal_projector, get_input_embeddings()) and holds nothing
    else: no text decoder, no 262k-row embedding table, only the end-of-image rows."""
    import torch

    class Rows(torch.nn.Module):
        def __init__(self, rows):
            super().__init__()
            self.register_buffer("rows", rows, persistent=False)

        def forward(self, ids):  # the adapter asks for exactly the end-of-image ids
            return self.rows[None]

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.vision_tower = model.model.vision_tower
            self.model.multi_modal_projector = model.model.multi_modal_projector
            self.end_of_image = Rows(eoi_rows)

        def get_input_embeddings(self):
            return self.end_of_image

    holder = Holder()
    holder.model.vision_tower.set_attn_implementation("eager")  # as export_vision_encoder_models does
    return holder


def _export_vision(source, config, holder, work_dir: str) -> dict:
    """export_lib.export_vision_encoder_models (litert-torch 0.10.0) for Gemma 3, with its float
    path only (quantization is our own step), traced on `holder` and converted with the
    lightweight conversion the text export gets from its config flag (the function itself passes
    no flag: `Converter.convert(lightweight_conversion=...)` is the same switch)."""
    import gc

    from litert_torch._convert import interface as converter_interface
    from litert_torch.generative.export_hf.model_ext import exportables

    encoder_class, adapter_class, eoi_class = exportables.get_vision_exportables(source.model_config)
    if eoi_class is not None:
        raise LookupError(f"{source.model_config.model_type}: a separate end-of-image graph is not supported here")
    paths = {}
    for name, module in (("vision_encoder", encoder_class(holder, config)), ("vision_adapter", adapter_class(holder, config, source.tokenizer))):
        converter = converter_interface.Converter()
        samples = module.get_sample_inputs(source.model_config, image_processor=source.image_processor, **config.extra_kwargs)
        for signature, (inputs, _) in samples.items():
            converter.add_signature(signature, module.eval(), sample_kwargs=inputs)
        lite = converter.convert(strict_export=False, lightweight_conversion=config.experimental_lightweight_conversion)
        paths[name] = str(Path(work_dir) / f"{name}.tflite")
        lite.export(paths[name])
        del lite, converter, module
        gc.collect()
    return paths


def export(request: dict) -> dict:
    import gc

    from litert_torch.generative.export_hf.core import export_lib, exportable_module

    from modelforge.steps import partial_load
    from modelforge.steps.litert import tflite_layout

    work_dir = request["work_dir"]
    multimodal = request["task"] == "image_text_to_text"
    config = exportable_module.ExportableModuleConfig(
        model=request["checkpoint"],
        output_dir=work_dir,
        work_dir=work_dir,
        task=request["task"],
        prefill_lengths=list(request["prefill_lengths"]),
        cache_length=request["cache_length"],
        quantization_recipe="none",
        vision_encoder_quantization_recipe="none",
        bundle_litert_lm=False,
        externalize_embedder=multimodal,
        single_token_embedder=multimodal,
        export_vision_encoder=multimodal and request["part"] == "vision",
        trust_remote_code=False,
        # MLIR constants share the PyTorch tensors instead of copying them (≈ half the peak).
        experimental_lightweight_conversion=True,
    )
    source, eoi_rows = load_part(Path(request["checkpoint"]), config, request["part"])
    hoists = apply_hoists(source.model, request.get("hoists", []))
    image_input = _take_runtime_pixels(source, request) if request["part"] == "vision" else None
    config = export_lib.update_export_config(config, source)
    fault_point("worker/export/convert")  # inside litert-torch: the model loaded, its graphs not yet converted
    artifacts = export_lib.ExportedModelArtifacts()
    if request["part"] == "text":
        partial_load.strip_unloaded(source.model)
        tasks = ([export_lib.export_embedder_model] if multimodal else []) + [export_lib.export_text_prefill_decode_model]
        for task in tasks:
            artifacts = task(source, config, artifacts)
        files = {"model.tflite": artifacts.prefill_decode_model_path, "embedder.tflite": artifacts.embedder_model_path}
    else:
        holder = _vision_holder(source.model, eoi_rows)
        source.model = None
        gc.collect()
        paths = _export_vision(source, config, holder, work_dir)
        files = {"vision_encoder.tflite": paths["vision_encoder"], "vision_adapter.tflite": paths["vision_adapter"]}
    del source
    gc.collect()
    files = {name: path for name, path in files.items() if path}
    for path in files.values():
        tflite_layout.normalize(Path(path))
    result = {"files": files, "hoists": hoists}
    if image_input is not None:
        result["image_input"] = image_input
    return result


def _take_runtime_pixels(source, request: dict) -> dict | None:
    """Vision export, image_input 'runtime': the graph takes the LiteRT-LM runtime's [0, 1] pixels
    and applies the source processor's normalization itself (see image_input.py)."""
    if request.get("image_input") != "runtime":
        return None
    from modelforge.steps.image_input import normalize_runtime_pixels, processor_affine

    affine = processor_affine(source.image_processor)
    normalize_runtime_pixels(source.model.model.vision_tower, affine)
    return {"pixel_range": [0.0, 1.0], **affine}


def quantize(request: dict) -> dict:
    from ai_edge_quantizer import quantizer, recipe as recipes

    plan = list(getattr(recipes, request["recipe"])())
    for override in request.get("overrides", []):
        entries = getattr(recipes, override["recipe"])()
        for entry in entries:
            entry = dict(entry)
            entry["regex"] = override["regex"]
            plan.append(entry)
    outputs = {}
    for name in request["files"]:
        job = quantizer.Quantizer(str(Path(request["input_dir"]) / name))
        job.load_quantization_recipe(plan)
        target = Path(request["work_dir"]) / name
        job.quantize().export_model(str(target), overwrite=True)
        outputs[name] = str(target)
    return {"files": outputs}


def parity(request: dict) -> dict:
    from modelforge.steps.parity_phases import PHASES

    return PHASES[request["phase"]](request)


ACTIONS = {"export": export, "quantize": quantize, "parity": parity}



if __name__ == "__main__":
    from modelforge.steps.workers import serve

    serve(ACTIONS)
