"""Every int4 weight and scale of a decoder built by the onnx target's text export (streamed
quantization, steps/onnx/genai_builder.py) against onnxruntime-genai's builder's own path, one weight at a
time: the builder's graph is made again (its save replaced by this comparison), each float MatMul
weight serialized as `ir.to_proto` does, read back as the quantizer does and quantized by
onnxruntime's DefaultWeightOnlyQuantizer (int4, blocks of 32, symmetric), then compared with the
bytes in DECODER/model.onnx.data. Holds one float32 weight three times at most (~8 GB for MedGemma
4B's output head): a heavy run at 4B.

Usage: python bench/check_onnx_text_weights.py CHECKPOINT DECODER SCRATCH
  (DECODER: bench_onnx_text.py's WORK/export/decoder; SCRATCH: an empty directory for the builder)
"""
import contextlib, sys, time
from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

from modelforge.steps.onnx import genai_builder

checkpoint, done, scratch = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
names = None
results = {"equal": 0, "different": []}


def compare(self, out_dir):
    import onnx
    graph = onnx.load(str(done / "model.onnx"), load_external_data=False).graph
    wanted = {item.name for item in graph.initializer}
    written = lambda name: genai_builder.read_initializers(done / "model.onnx", {name})[name]
    quantizer = DefaultWeightOnlyQuantizer(DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=1, bits=4))
    started = time.monotonic()
    for node in self.model.graph:
        if node.op_type != "MatMul" or node.inputs[1].const_value is None:
            continue
        value = node.inputs[1]
        tensor = value.const_value
        tensor.name = value.name
        proto = ir.serde.serialize_tensor(tensor)  # what ir.to_proto writes for it
        array = ir.from_proto(proto).numpy()        # what quantize_matmul reads
        del proto
        packed, scales, _ = quantizer.qbits_block_quant(array)
        del array
        ok = f"{value.name}_Q4" in wanted and np.array_equal(written(f"{value.name}_Q4"), packed) and written(f"{value.name}_scales").tobytes() == scales.tobytes()
        if ok:
            results["equal"] += 1
        else:
            results["different"].append(value.name)
    print(f"compared in {time.monotonic() - started:.0f} s: {results['equal']} weights equal, different: {results['different']}", file=sys.stderr)


with genai_builder.shims(4096, True, stream_weights=False):
    builder, _ = genai_builder._builder_modules()
    base = sys.modules["builders.base"]
    saved = base.Model.save_model
    base.Model.save_model = compare
    try:
        options = ["exclude_embeds=true", "windowed_kv_cache=false", "hf_token=false", "block_size=32", "accuracy_level=1"]
        extra = builder.parse_extra_options(None, str(checkpoint), str(scratch), "int4", "cpu", str(scratch / "cache"), options)
        with contextlib.redirect_stdout(sys.stderr):
            builder.create_model(None, str(checkpoint), str(scratch), "int4", "cpu", str(scratch / "cache"), **extra)
    finally:
        base.Model.save_model = saved
print("RESULT", results["equal"], len(results["different"]))
