#!/usr/bin/env bash
# One device-machine session for the CuPy backend (its first run on a GPU): the GPU tests,
# then the benchmark beside Triton.  From the repo root:
#
#     bash bench/gpu_session_cupy.sh OUTDIR
#
# Writes OUTDIR/{env.txt, gpu_tests.log, bench.log, cupy_<slug>.json}.  The first launch of
# each kernel compiles it with NVRTC (about a second each; CuPy caches the cubins under
# ~/.cupy/kernel_cache), so the tests run first and warm that cache for the benchmark.
# Time limits per step: TEST_TIMEOUT, BENCH_TIMEOUT (seconds).
set -u
out=${1:?output folder}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, cupy; print('torch', torch.__version__, 'cupy', cupy.__version__, 'cuda', torch.version.cuda)"
  $PY -c "import ttqkern; print(ttqkern.backends.status()['cupy'])"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

timeout "${TEST_TIMEOUT:-240}" $PY -m pytest -q -p no:cacheprovider -rfE -m gpu \
  tests/test_cupy_backend.py "tests/test_conformance.py" -k "cupy" > "$out/gpu_tests.log" 2>&1
echo "gpu tests exit $?"; tail -5 "$out/gpu_tests.log"

timeout "${BENCH_TIMEOUT:-300}" $PY -m pytest bench/test_gpu_cupy.py -s -q -p no:cacheprovider > "$out/bench.log" 2>&1
echo "bench exit $?"; tail -3 "$out/bench.log"
cp results/bench/cupy_*.json "$out/" 2>/dev/null
