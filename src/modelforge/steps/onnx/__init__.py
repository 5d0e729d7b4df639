"""The ONNX toolchain's steps for onnxruntime-genai: export (the text decoder through
onnxruntime-genai's builder, genai_builder; the vision side with torch.onnx), quantize, package
(genai_config.json and the processor files) and parity in onnxruntime. Their heavy jobs run in
`worker` (python -m modelforge.steps.onnx.worker)."""
