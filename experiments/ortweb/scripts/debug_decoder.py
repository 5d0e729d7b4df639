"""Where does the builder's decoder part from PyTorch? Compares, on one prompt: the embedding graph
with PyTorch's scaled embeddings; the decoder fed PyTorch's embeddings with PyTorch's logits; the
decoder's RoPE caches with transformers' rotary embeddings for each layer type.
usage: python debug_decoder.py CHECKPOINT GRAPHS_DIR"""

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers
from onnx import numpy_helper

checkpoint, graphs = sys.argv[1], Path(sys.argv[2])
model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
ids = torch.tensor([[2, 105, 2364, 107, 3689, 659, 506, 11171, 106, 107, 105, 4368, 107]]) % 1024
with torch.no_grad():
    embeds = model.get_input_embeddings()(ids)
    out = model(input_ids=ids)
    torch_logits = out.logits[0].double().numpy()
embedding = ort.InferenceSession(str(graphs / "embedding.onnx"))
mine = embedding.run(None, {"input_ids": ids.numpy(), "image_features": np.zeros((1, 64), np.float32)})[0]
print("embedding graph vs torch:", np.abs(mine - embeds.numpy()).max())
decoder = ort.InferenceSession(str(graphs / "decoder" / "model.onnx"))
past = {i.name: np.zeros((1, 1, 0, 32), np.float32) for i in decoder.get_inputs() if i.name.startswith("past")}
logits = decoder.run(["logits"], {"inputs_embeds": embeds.numpy(), "attention_mask": np.ones((1, ids.shape[1]), np.int64), **past})[0][0]
print("decoder (torch embeds) vs torch logits per position:", np.abs(logits - torch_logits).max(axis=-1).round(3))
graph = onnx.load(str(graphs / "decoder" / "model.onnx"))
caches = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer if "cache" in i.name}
rotary = model.model.language_model.rotary_emb
positions = torch.arange(8)[None]
for layer_type, name in (("full_attention", "global"), ("sliding_attention", "local")):
    cos, sin = rotary(embeds, positions, layer_type=layer_type)
    print(layer_type, "cos max|d|:", np.abs(cos[0, :, :16].numpy() - caches[f"cos_cache_{name}"][:8]).max())
