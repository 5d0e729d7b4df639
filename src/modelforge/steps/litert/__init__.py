"""The LiteRT toolchain's steps: export with litert-torch (export), quantize with
ai-edge-quantizer (quantize), write the LiteRT-LM metadata (metadata) and the .litertlm bundle
(package), and check the graphs and the bundle against PyTorch (parity). Their heavy jobs run in
`worker` (python -m modelforge.steps.litert.worker); tflite_layout reads .tflite files."""
