#!/usr/bin/env bash
# One device-machine session on a CUDA GPU: tune the Triton kernels, benchmark with
# the tuned configs, run the GPU conformance tests.  From the repo root:
#
#     bash bench/gpu_session.sh OUTDIR
#
# Writes OUTDIR/{env.txt, tune.log, tune.json, tune.md, <slug>.json (tuned configs),
# bench.log, triton_<slug>.json, gpu_tests.log}.  Each step has its own time limit
# (TUNE_TIMEOUT, BENCH_TIMEOUT, TEST_TIMEOUT seconds) so one slow step cannot eat the
# others; TUNE_SECONDS is the Optuna budget per case.
set -u
out=${1:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TTQKERN_CONFIG_DIR="$out/configs"
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, triton, optuna; print('torch', torch.__version__, 'triton', triton.__version__, 'optuna', optuna.__version__, 'cuda', torch.version.cuda)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

timeout "${TUNE_TIMEOUT:-330}" $PY -m ttqkern.tune --gpu --shapes qwen3-8b --tokens 1,16,512 \
  --ops decode1,decode,prefill,quantize --bits 4,3 --trials 60 --timeout "${TUNE_SECONDS:-9}" --no-progress \
  --report "$out/tune" > "$out/tune.log" 2>&1
echo "tune exit $?"; grep -A40 "^case  " "$out/tune.log"; tail -3 "$out/tune.log"
cp "$out"/configs/*.json "$out/" 2>/dev/null

timeout "${BENCH_TIMEOUT:-110}" $PY -m pytest bench/test_gpu_triton.py -s -q -p no:cacheprovider > "$out/bench.log" 2>&1
echo "bench exit $?"; tail -3 "$out/bench.log"
cp results/bench/triton_*.json "$out/" 2>/dev/null

n=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
timeout "${TEST_TIMEOUT:-70}" $PY -m pytest -m gpu -q -p no:cacheprovider $n -rfE > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?"; tail -5 "$out/gpu_tests.log"
