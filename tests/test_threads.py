"""`ttqkern.threads.set_threads`: torch's thread count survives the Numba backend's kernels.

The reset it guards against happens once per process, when Numba's threading layer
starts, so each case runs in a fresh interpreter.
"""

import subprocess
import sys
from pathlib import Path

import pytest

numba = pytest.importorskip("numba")

SCRIPT = """
import torch
from ttqkern.threads import set_threads
set_threads({n})
import ttqkern, numba
layer = ttqkern.TTQLinear.from_linear(torch.nn.Linear(576, 576), r=4, bits=4, group_size=64,
                                      mode="prompt", backend="numba")
layer(torch.randn(1, 64, 576))   # a prompt: act_scale, quantize, qmatmul
layer(torch.randn(1, 1, 576))    # a decode step
big = torch.randn(2048, 2048)    # above the serial threshold: a parallel kernel
ttqkern.ops.quantize(big, None, bits=4, group_size=128, backend="numba")
print(torch.get_num_threads(), numba.get_num_threads())
"""


@pytest.mark.parametrize("n", [1, 2])
def test_thread_count_holds_after_numba_kernels_in_a_fresh_process(n):
    if n > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba's pool has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(n=n)], cwd=root, capture_output=True, text=True,
                         check=True, timeout=600)  # fmt: skip
    assert out.stdout.split()[-2:] == [str(n), str(n)], out.stdout + out.stderr
