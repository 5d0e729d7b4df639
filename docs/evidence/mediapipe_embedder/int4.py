import os
from pathlib import Path
from modelforge.steps.litert.worker import quantize
from modelforge.web.taskfile import gemma_params, write_task, read_task
EXP = Path("/tmp/wt-task-exp")
src = EXP / "dir-b_float"; work = EXP / "b_int4_work"; work.mkdir(exist_ok=True)
out = quantize({"recipe": "dynamic_wi4b32_afp32", "input_dir": str(src), "work_dir": str(work), "files": ["model.tflite", "embedder.tflite"]})
for key, name in (("tflite", "model.tflite"), ("embedder", "embedder.tflite")):
    link = EXP / f"b_int4.{key}.tflite"; link.unlink(missing_ok=True); link.symlink_to(work / name)
write_task(EXP / "b_int4.task", tflite=work / "model.tflite", embedder=work / "embedder.tflite", tokenizer=EXP / "tokenizer.model", params=gemma_params())
(t,) = sorted(Path("/tmp/wt-task-out/web/models").glob("tiny-int4-*.task"))
(EXP / "a_int4.tflite.tflite").write_bytes(read_task(t)["TF_LITE_PREFILL_DECODE"])
write_task(EXP / "a_int4.task", tflite=EXP / "a_int4.tflite.tflite", tokenizer=EXP / "tokenizer.model", params=gemma_params())
print("a_int4 identical to built:", (EXP / "a_int4.task").read_bytes() == t.read_bytes())
# b_int8 through the same code path, to check it equals the litertlm target's own quantize node
w8 = EXP / "b_int8_work"; w8.mkdir(exist_ok=True)
quantize({"recipe": "dynamic_wi8_afp32", "input_dir": str(src), "work_dir": str(w8), "files": ["model.tflite", "embedder.tflite"]})
for key, name in (("tflite", "model.tflite"), ("embedder", "embedder.tflite")):
    print("b_int8", name, "same as bundle.quantize.text_decoder:", (w8 / name).read_bytes() == Path(os.path.realpath(EXP / f"b_int8.{key}.tflite")).read_bytes())
