#!/usr/bin/env bash
# Short device session after a decode-kernel change: tune the one-token GEMV (gemv1)
# on the qwen3-8b shapes, then the full GPU benchmark with those configs.
#     bash bench/gpu_gemv1.sh OUTDIR
set -u
out=${1:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TTQKERN_CONFIG_DIR="$out/configs"
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
timeout "${TUNE_TIMEOUT:-80}" $PY -m ttqkern.tune --gpu --shapes qwen3-8b --ops gemv --decode-T 1 --bits 4,3 \
  --trials 40 --time-per-case "${TUNE_SECONDS:-7}" --report "$out/tune" > "$out/tune.log" 2>&1
echo "tune exit $?"; grep -A10 "^case  " "$out/tune.log"
cp "$out"/configs/*.json "$out/" 2>/dev/null
timeout "${BENCH_TIMEOUT:-100}" $PY -m pytest bench/test_gpu_triton.py -s -q -p no:cacheprovider > "$out/bench.log" 2>&1
echo "bench exit $?"; tail -2 "$out/bench.log"
cp results/bench/triton_*.json "$out/" 2>/dev/null
