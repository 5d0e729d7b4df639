"""Step `cast_weights`: a Hugging Face checkpoint with every floating-point weight cast to one
dtype, one tensor at a time (memory: the largest tensor, twice), with torch's round-to-nearest
conversion. Integer tensors, the tokenizer and the other files pass through; config.json's dtype
and the index's total size follow the new weights. Cast to float16 refuses a weight whose
magnitude is above float16's largest finite value, naming it, instead of writing infinity."""

from __future__ import annotations

import json

from modelforge.errors import StepFailed
from modelforge.safetensors_io import read_header, tensor_nbytes, write_tensors
from modelforge.steps.base import StepContext

KIND = "cast_weights"
VERSION = 1
TOOLS = ("torch",)

SAFETENSORS_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def run(context: StepContext) -> None:
    """params: {dtype: float16|bfloat16|float32}; input `checkpoint`: a Hugging Face checkpoint."""
    dtype = context.params["dtype"]
    files = context.inputs["checkpoint"]
    sizes = {}
    shards = sorted(name for name in files if name.endswith(".safetensors"))
    for number, relative in enumerate(shards):
        context.progress(number, len(shards), f"casting {relative} to {dtype}")
        sizes[relative] = _cast_shard(context, relative, dtype)
    for relative in sorted(files):
        if relative == "config.json":
            config = json.loads(context.input_path("checkpoint", relative).read_text())
            for key in [key for key in ("torch_dtype", "dtype") if key in config] or ["dtype"]:
                config[key] = dtype
            context.output(relative).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        elif relative == "model.safetensors.index.json":
            index = json.loads(context.input_path("checkpoint", relative).read_text())
            index["metadata"] = {**index.get("metadata", {}), "total_size": sum(sizes.values())}
            context.output(relative).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        elif relative not in sizes:
            context.pass_through("checkpoint", relative)


def _cast_shard(context: StepContext, relative: str, dtype: str) -> int:
    """Write the cast shard; returns the bytes of its tensors."""
    import torch

    path = context.input_path("checkpoint", relative)
    tensors, metadata = read_header(path, relative)
    target = getattr(torch, dtype)
    torch_dtypes = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
    limit = torch.finfo(torch.float16).max if dtype == "float16" else None
    entries = []
    with open(path, "rb") as source:

        def cast(info):
            def make() -> bytes:
                source.seek(info.begin)
                data = bytearray(source.read(info.nbytes))
                tensor = torch.frombuffer(data, dtype=torch_dtypes[info.dtype]).reshape(info.shape) if data else torch.empty(info.shape, dtype=torch_dtypes[info.dtype])
                if limit is not None and tensor.numel():
                    largest = tensor.abs().max().item()
                    if largest > limit:
                        raise StepFailed(
                            f"{relative}: tensor {info.name!r} holds {largest:.6g}, above float16's largest value {limit:.0f}; "
                            "cast to bfloat16 instead, or fix the weights"
                        )
                return tensor.to(target).contiguous().view(torch.uint8).numpy().tobytes()
            return make

        for name, info in sorted(tensors.items(), key=lambda item: item[1].begin):
            if info.dtype in FLOAT_DTYPES:
                entries.append((name, SAFETENSORS_DTYPES[dtype], info.shape, cast(info)))
            else:
                entries.append((name, info.dtype, info.shape, _copy(source, info)))
        context.known_hashes[relative] = write_tensors(context.output(relative), entries, metadata)
    return sum(tensor_nbytes(dtype_name, shape) for _, dtype_name, shape, _ in entries)


def _copy(source, info):
    def read() -> bytes:
        source.seek(info.begin)
        return source.read(info.nbytes)
    return read
