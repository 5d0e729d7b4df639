"""onnxruntime-genai's own runtime on the builder's text decoder (with embeddings, the genai layout):
greedy answer to the chat prompt of cases.json against PyTorch's tokens.
usage: python genai_text.py MODEL_DIR CASES_JSON"""

import json
import sys

import onnxruntime_genai as og

model_dir, cases_path = sys.argv[1:]
chat = next(c for c in json.load(open(cases_path)) if c["name"] == "chat")
reference = chat["reference"]["causal"]["tokens"]
model = og.Model(model_dir)
params = og.GeneratorParams(model)
params.set_search_options(do_sample=False, max_length=len(chat["input_ids"]) + len(reference), min_length=len(chat["input_ids"]) + len(reference))
generator = og.Generator(model, params)
generator.append_tokens(chat["input_ids"])
tokens = []
while not generator.is_done():
    generator.generate_next_token()
    tokens.append(int(generator.get_next_tokens()[0]))
identical = next((i for i, (a, b) in enumerate(zip(reference, tokens)) if a != b), min(len(reference), len(tokens)))
print(json.dumps({"onnxruntime_genai": og.__version__, "tokens": tokens, "reference": reference, "identical_leading_tokens": identical}))
