"""Experiment: A = text_generation export (tokens input) vs B = litertlm export (embeddings input + embedder)."""
import json, glob, sys, zipfile
from pathlib import Path
from modelforge.web.taskfile import gemma_params, write_task, read_task, task_layout

STORE = Path("/tmp/wt-task-store"); OUT = Path("/tmp/wt-task-exp")
def obj(sha): return STORE / "objects" / sha[:2] / sha
recs = [json.loads(Path(p).read_text()) for p in glob.glob(str(STORE / "steps/*/*.json"))]
def pick(kind, names):
    found = [r for r in recs if r["kind"] == kind and set(r["outputs"]) - {"export_report.json", "quantize_report.json"} == set(names)]
    return found
export_b = pick("litert_export", ["model.tflite", "embedder.tflite"]); export_a = pick("litert_export", ["model.tflite"])
quant_b = pick("litert_quantize", ["model.tflite", "embedder.tflite"])
print(len(export_a), len(export_b), len(quant_b))
[export_a], [export_b], [quant_b] = export_a, export_b, quant_b
if not obj(export_a["outputs"]["model.tflite"]["sha256"]).exists():
    print("no object path", obj(export_a["outputs"]["model.tflite"]["sha256"])); sys.exit(1)
(task_a8,) = sorted(Path("/tmp/wt-task-out/web/models").glob("tiny-int8-*.task"))
entries = read_task(task_a8)
tok = OUT / "tokenizer.model"; tok.write_bytes(entries["TOKENIZER_MODEL"])
a8 = OUT / "a8_model.tflite"; a8.write_bytes(entries["TF_LITE_PREFILL_DECODE"])
assert entries["METADATA"] == gemma_params().to_proto_bytes(), "metadata differs"
files = {
    "a_float": dict(tflite=obj(export_a["outputs"]["model.tflite"]["sha256"])),
    "b_float": dict(tflite=obj(export_b["outputs"]["model.tflite"]["sha256"]), embedder=obj(export_b["outputs"]["embedder.tflite"]["sha256"])),
    "a_int8": dict(tflite=a8),
    "b_int8": dict(tflite=obj(quant_b["outputs"]["model.tflite"]["sha256"]), embedder=obj(quant_b["outputs"]["embedder.tflite"]["sha256"])),
}
for name, members in files.items():
    write_task(OUT / f"{name}.task", tokenizer=tok, params=gemma_params(), **members)
    print(name, [(e["name"], e["size"]) for e in task_layout(OUT / f"{name}.task")])
    for k, v in members.items():
        link = OUT / f"{name}.{k}.tflite"
        link.unlink(missing_ok=True); link.symlink_to(v)
print("a_int8 task identical to built:", (OUT / "a_int8.task").read_bytes() == task_a8.read_bytes())
