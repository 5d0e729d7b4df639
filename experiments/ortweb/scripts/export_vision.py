"""torch.onnx.export (dynamo=True) of the two graphs the genai builder does not make for Gemma 3:
vision.onnx (pixel_values [1,3,H,W], the processor's normalized pixels -> image_features [1,T,D]:
SigLIP tower + multi-modal projector) and embedding.onnx (input_ids [1,S] int64 + image_features
[N,D] -> inputs_embeds [1,S,D]: Gemma's scaled token embedding with the image features put at the
image-token positions in order, what Gemma3Model.get_placeholder_mask + masked_scatter do).

usage: python export_vision.py CHECKPOINT OUTPUT_DIR"""

import sys
import time
from pathlib import Path

import torch
import transformers


class Vision(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        features = self.model.model.get_image_features(pixel_values=pixel_values)
        features = features.pooler_output if hasattr(features, "pooler_output") else features
        return features


class Embedding(torch.nn.Module):
    def __init__(self, model, image_token: int):
        super().__init__()
        self.embed = model.model.language_model.embed_tokens  # Gemma3TextScaledWordEmbedding (scale inside)
        self.image_token = image_token

    def forward(self, input_ids, image_features):
        embeds = self.embed(input_ids)
        mask = input_ids == self.image_token
        padded = torch.cat([torch.zeros_like(image_features[:1]), image_features], dim=0)
        index = torch.cumsum(mask.to(torch.int64), dim=-1) * mask.to(torch.int64)  # 0: a text token
        return torch.where(mask.unsqueeze(-1), padded[index], embeds)


def main(checkpoint: str, output: str) -> None:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    config = transformers.AutoConfig.from_pretrained(checkpoint)
    model = transformers.Gemma3ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()
    size = config.vision_config.image_size
    hidden = config.text_config.hidden_size
    started = time.perf_counter()
    with torch.no_grad():
        pixels = torch.zeros(1, 3, size, size)
        torch.onnx.export(Vision(model), (pixels,), str(out / "vision.onnx"), dynamo=True, external_data=False,
                          input_names=["pixel_values"], output_names=["image_features"])
        ids = torch.tensor([[2, 5, config.image_token_index, config.image_token_index, 7]], dtype=torch.int64)
        features = torch.zeros(2, hidden)
        sequence = torch.export.Dim("sequence_length", min=1, max=131072)
        images = torch.export.Dim("image_tokens", min=1, max=65536)
        torch.onnx.export(Embedding(model, config.image_token_index), (ids, features), str(out / "embedding.onnx"),
                          dynamo=True, external_data=False, input_names=["input_ids", "image_features"],
                          output_names=["inputs_embeds"],
                          dynamic_shapes=({1: sequence}, {0: images}))
    print(f"exported in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
