#!/bin/bash
# Reproduces RESULTS.md from the worktree root's .exp/ (a venv made as RESULTS.md says, not committed).
# Every heavy command goes through the memory-capped wrapper of this machine; drop `$CAP` elsewhere.
set -euo pipefail
ROOT=$(git rev-parse --show-toplevel); HERE=$ROOT/experiments/ortweb; OUT=$ROOT/.exp/out; PY=$ROOT/.exp/venv/bin/python
CAP="${CAP-/work/wt/capped ortweb 2500M}"; BROWSER_PY=${BROWSER_PY:-/work/main/.venv/bin/python}
TINY=$ROOT/fixtures/tiny-medgemma
mkdir -p $OUT && cd $OUT
(cd $HERE && npm ci)
build() { name=$1; shift; rm -rf builder-$name*; /usr/bin/time -v $CAP $PY $HERE/scripts/build_decoder.py $TINY builder-$name "$@" > builder-$name.log 2>&1; }
build cpu-a cpu --extra_options exclude_embeds=true            # windowed sliding cache, unpatched local RoPE
build cpu-full cpu --extra_options exclude_embeds=true windowed_kv_cache=false
build cpu-full-fix cpu --fix-local-rope --extra_options exclude_embeds=true windowed_kv_cache=false
build cpu-full-fix2 cpu --fix-local-rope --extra_options exclude_embeds=true windowed_kv_cache=false   # determinism
build webgpu-fix webgpu --fix-local-rope --extra_options exclude_embeds=true windowed_kv_cache=false
for q in int4 int8; do build cpu-$q cpu --fix-local-rope -p $q --extra_options exclude_embeds=true windowed_kv_cache=false; done
for q in int4 int8 fp16; do build webgpu-$q webgpu --fix-local-rope -p $q --extra_options exclude_embeds=true windowed_kv_cache=false; done
for r in a b; do /usr/bin/time -v $CAP $PY $HERE/scripts/export_vision.py $TINY vision-$r > vision-$r.log 2>&1; done
sha256sum builder-*/model.onnx* vision-*/*.onnx > sha256.txt
for d in cpu-full cpu-full-fix webgpu-fix cpu-int4 cpu-int8 webgpu-int4 webgpu-int8 webgpu-fp16; do
  rm -rf graphs-$d && mkdir graphs-$d && cp vision-a/*.onnx graphs-$d/ && cp -r builder-$d graphs-$d/decoder; done
for d in cpu-full cpu-full-fix cpu-int4 cpu-int8; do $CAP $PY $HERE/scripts/parity_python.py $TINY graphs-$d py-$d; done
rm -rf ../site && mkdir -p ../site/graphs && cd ../site
ln -s $HERE/page/index.html $HERE/page/harness.mjs . && ln -s $HERE/node_modules/onnxruntime-web/dist ort && ln -s $OUT/py-cpu-full-fix/cases.json .
ln -s $OUT/graphs-cpu-full-fix graphs/cpu && ln -s $OUT/graphs-webgpu-fix graphs/webgpu
for d in cpu-int4 cpu-int8 webgpu-int4 webgpu-int8 webgpu-fp16; do ln -s $OUT/graphs-$d graphs/$d; done
$CAP $BROWSER_PY $HERE/scripts/run_browser.py . $OUT/browser_results_fp32.json
$CAP $BROWSER_PY $HERE/scripts/run_browser.py . $OUT/browser_results_half.json webgpu:graphs/webgpu-fp16:ort.webgpu.min.mjs:half=1 webgpu:graphs/webgpu-int8:ort.webgpu.min.mjs:half=1 webgpu:graphs/webgpu-int4:ort.webgpu.min.mjs:half=1
$CAP $BROWSER_PY $HERE/scripts/run_browser.py . $OUT/browser_results_quant.json webgpu:graphs/cpu-int4:ort.webgpu.min.mjs wasm:graphs/cpu-int4:ort.wasm.min.mjs webgpu:graphs/cpu-int8:ort.webgpu.min.mjs wasm:graphs/cpu-int8:ort.wasm.min.mjs
# onnxruntime-genai's own runtime, text only (builder output with embeddings, default windowed cache)
cd $OUT
for n in "genai-text-fix --fix-local-rope" "genai-text-nofix"; do set -- $n; name=$1; shift; build $name cpu "$@"
  $CAP $PY $HERE/scripts/genai_text.py builder-$name py-cpu-full-fix/cases.json; done
