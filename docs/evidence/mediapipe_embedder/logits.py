"""Graph A (tokens) vs graph B (embedder → embeddings): greedy along A, B teacher-forced, max |Δlogit|."""
import os, sys
from pathlib import Path
import numpy as np
import sentencepiece as spm
from modelforge.steps.parity_phases import TfliteDecoder

EXP = Path("/tmp/wt-task-exp")
sp = spm.SentencePieceProcessor(model_file=str(EXP / "tokenizer.model"))
PROMPTS = ["What are common symptoms of anemia?", "Describe the chest X-ray findings.", "List the risk factors for stroke.",
           "What is the differential diagnosis for chest pain?"]
def ids(prompt):
    return [sp.piece_to_id("<bos>")] + sp.encode(f"<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")

def model_dir(name, members):
    d = EXP / f"dir-{name}"; d.mkdir(exist_ok=True)
    for key, file in members.items():
        link = d / file
        if not link.exists(): link.symlink_to(os.path.realpath(EXP / f"{name}.{key}.tflite"))
    return d

for precision in sys.argv[1:] or ("float", "int8", "int4"):
    a = TfliteDecoder(model_dir(f"a_{precision}", {"tflite": "model.tflite"}))
    b = TfliteDecoder(model_dir(f"b_{precision}", {"tflite": "model.tflite", "embedder": "embedder.tflite"}))
    assert b.embedder is not None and a.embedder is None
    worst, agree, total = 0.0, 0, 0
    for prompt in PROMPTS:
        tokens = ids(prompt)
        for dec in (a, b): dec.reset(); dec.prefill(tokens[:-1])
        token, pos = tokens[-1], len(tokens) - 1
        for _ in range(24):
            la, lb = a.step(token, pos), b.step(token, pos)
            worst = max(worst, float(np.abs(la - lb).max()))
            agree += int(la.argmax() == lb.argmax()); total += 1
            token, pos = int(la.argmax()), pos + 1
    print(f"{precision}: max |Δlogit| A vs B = {worst:.3g}; argmax agreement {agree}/{total}")
