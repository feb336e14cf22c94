#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md, in one run on one H100/H200 (about 6 minutes; every output under $OUT).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh      (the device tool sets $OUT)
#
# 1. the CUDA tests (pytest -m cuda), bfloat16 included;
# 2. benchmarks/selection.py --device cuda: eager and CUDA-graph selection times, ops per call, graph breaks;
# 3. benchmarks/model_stage.py --device cuda: LLaVA-1.5-7B (random weights, bfloat16), 8 frames, 5 questions,
#    16 new tokens, 8 videos, budgets full / 192 / 64 / 16.
# Each step has its own time limit, so that one hang does not cost the others; the script goes on after a
# failure and exits non-zero if any step failed.
set -u
OUT="${OUT:?set OUT to the folder that receives the outputs}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0

step() {  # step NAME SECONDS COMMAND...: run with a limit, output to $OUT/NAME.txt, its exit code to the summary
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}

{ nvidia-smi; "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"; } \
    >"$OUT/device.txt" 2>&1
step cuda_tests 140 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_selection.py tests/test_video.py \
    tests/test_compile.py tests/test_selectors.py
step selection 200 "$PY" benchmarks/selection.py --device cuda --repeats 5
step model_stage 120 "$PY" benchmarks/model_stage.py --device cuda
tail -n 1 "$OUT/selection.txt" >"$OUT/selection.json" 2>/dev/null
tail -n 1 "$OUT/model_stage.txt" >"$OUT/model_stage.json" 2>/dev/null
exit $status
