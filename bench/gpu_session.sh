#!/usr/bin/env bash
# One device-machine session on a CUDA GPU for both GPU backends (Triton, CuPy), sized
# for an H200 in under 10 minutes of device time.  From the repo root:
#
#     bash bench/gpu_session.sh OUTDIR            # OUTDIR defaults to $OUT
#     DRY_RUN=1 bash bench/gpu_session.sh /tmp/x  # on a CPU: the same steps, nothing measured
#
# Steps, each under its own time limit (seconds) so one slow step cannot eat the others:
#   1. env.txt          GPU, driver, versions, ttqkern.backends.status()
#   2. gpu_tests.log    pytest -m gpu (every backend's GPU tests)             TEST_TIMEOUT=170
#   3. bench.log        bench/test_gpu_triton.py -> triton_<slug>.json, .md   BENCH_TIMEOUT=170
#                       (decode T = 1, 4, 16 and prefill T = 128, 512, 2048 against cuBLAS
#                       fp16 and installed peers; the JSON is rewritten after every layer,
#                       so a run cut short keeps what it measured)
#   4. bench_cupy.log   bench/test_gpu_cupy.py -> cupy_<slug>.json (when cupy imports)
#                                                                             CUPY_BENCH_TIMEOUT=100
#   5. tune.log         Optuna on the Triton decode ops, qwen3-8b 4-bit, CUDA-graph timings
#                       -> tune.json/.md and configs/<slug>.json               TUNE_TIMEOUT=100
# 170 + 170 + 100 + 100 = 540 s plus start-up.  TRITON_BITS / CUPY_BITS (default 4,3,2 / 4)
# restrict the benches' bit widths; TUNE_SECONDS is the Optuna budget per case.
# The static figures (results/inspect/) need no GPU: python -m ttqkern.backends.triton.inspect.
set -u
out=${1:-${OUT:?give an output folder or set OUT}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TTQKERN_CONFIG_DIR="$out/configs"
PY=${PYTHON:-python3}
dry=${DRY_RUN:-}
if [ -n "$dry" ]; then
  # CPU: GPU tests collected only, the Triton bench on the interpreter at 1/64 scale, no tuning
  export TRITON_INTERPRET=1 TTQKERN_BENCH_DRY_RUN="$out/triton_dry-run.json"
  export TTQKERN_BENCH_LAYERS=${TTQKERN_BENCH_LAYERS:-qwen3-8b/q_proj}
  collect="--collect-only"
else
  unset TRITON_INTERPRET
  collect=""
fi
n=$($PY -c "import xdist" 2>/dev/null && [ -z "$dry" ] && echo "-n 8")
has_cupy=$($PY -c "import cupy" 2>/dev/null && echo 1)

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -1
  $PY -c "import ttqkern.backends as b; [print(k, v) for k, v in b.status().items()]"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

t0=$SECONDS
timeout "${TEST_TIMEOUT:-170}" $PY -m pytest tests -m gpu -q -p no:cacheprovider -rfE $n $collect \
  > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $? ($((SECONDS - t0)) s)"; tail -5 "$out/gpu_tests.log"

t0=$SECONDS
TTQKERN_BENCH_BITS=${TRITON_BITS:-4,3,2} timeout "${BENCH_TIMEOUT:-170}" \
  $PY -m pytest bench/test_gpu_triton.py -s -q -p no:cacheprovider > "$out/bench.log" 2>&1
echo "triton bench exit $? ($((SECONDS - t0)) s)"; tail -3 "$out/bench.log"
for f in results/bench/triton_*.json "$out"/triton_dry-run.json; do
  case $f in *untuned*) continue ;; esac
  [ -f "$f" ] && [ "$f" -nt "$out/env.txt" ] || continue
  [ "$(dirname "$f")" = "$out" ] || cp "$f" "$out/"
  $PY bench/report_gpu.py "$f" > "$out/$(basename "${f%.json}").md" 2>&1
done

if [ -n "$has_cupy" ] && [ -z "$dry" ]; then
  t0=$SECONDS
  TTQKERN_BENCH_BITS=${CUPY_BITS:-4} timeout "${CUPY_BENCH_TIMEOUT:-100}" \
    $PY -m pytest bench/test_gpu_cupy.py -s -q -p no:cacheprovider > "$out/bench_cupy.log" 2>&1
  echo "cupy bench exit $? ($((SECONDS - t0)) s)"; tail -3 "$out/bench_cupy.log"
  cp results/bench/cupy_*.json "$out/" 2>/dev/null
elif [ -n "$dry" ]; then
  echo "cupy bench skipped (dry run)"
else
  echo "cupy bench skipped (cupy not importable)"
fi

if [ -z "$dry" ]; then
  t0=$SECONDS
  timeout "${TUNE_TIMEOUT:-100}" $PY -m ttqkern.tune --gpu --shapes qwen3-8b --tokens 1,16 --ops decode1,decode \
    --bits 4 --trials 40 --timeout "${TUNE_SECONDS:-12}" --no-progress --report "$out/tune" > "$out/tune.log" 2>&1
  echo "tune exit $? ($((SECONDS - t0)) s)"; tail -3 "$out/tune.log"
  cp "$out"/configs/*.json "$out/" 2>/dev/null
else
  $PY -m ttqkern.tune --gpu --shapes qwen3-8b --tokens 1,16 --ops decode1,decode --bits 4 --device cpu --list \
    > "$out/tune.log" 2>&1
  echo "tune (--list only, dry run) exit $?"; tail -3 "$out/tune.log"
fi
