#!/bin/bash
# Reproduces RESULTS.md: MedGemma 4B's onnx target graphs (synthetic 4B checkpoint of
# bench/bench_medgemma_4b.py) in onnxruntime-web 1.30.0, headless Chromium, software WebGPU.
# Heavy: each run holds ~10 GiB and takes 5-35 minutes on 2 cores; run them one at a time.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel); HERE=$ROOT/experiments/ortweb_4b; PY=$ROOT/.venv/bin/python
CHECKPOINT=${CHECKPOINT:-$ROOT/bench/out/medgemma_4b/checkpoint-full}; WORK=${WORK:-/tmp/ortweb_4b}
mkdir -p $WORK/site/graphs && cd $WORK
(cd $HERE && npm ci --no-audit --no-fund)
# The onnx target's package (stop it once onnx.package is done: its parity step is not needed here)
$ROOT/.venv/bin/modelforge build $ROOT/manifests/medgemma-1.5-onnx.yaml --source-dir $CHECKPOINT --store $WORK/store --out $WORK/out --memory-limit 1024GiB || true
# copies (onnx refuses linked external data); where the build stopped at the parity gate (random
# weights), take the files onnx.package recorded (store/steps/*/<key>.json) from store/objects instead
cp $WORK/out/onnx/* $WORK/site/graphs/
ln -sfn $HERE/page/index.html site/index.html; ln -sfn $HERE/page/harness.mjs site/harness.mjs
ln -sfn $HERE/node_modules/onnxruntime-web/dist site/ort
$PY $HERE/scripts/make_cases.py $CHECKPOINT site/graphs site/cases.json 4          # onnxruntime CPU reference
$PY $HERE/scripts/run_browser.py site webgpu_all_on_gpu.json "ep=webgpu&steps=3" 2400
$PY $HERE/scripts/run_browser.py site webgpu_vision_on_cpu.json "ep=webgpu&vision_ep=wasm&only=image&steps=3" 3000
# The float embedding (onnx.export_vision's embedding.onnx, before onnx.quantize.embedding existed):
# put it in site/graphs and session creation fails (results/webgpu_float_embedding.json).
