"""`ttqkern.threads.set_threads`: torch's thread count survives the Numba backend's kernels."""

import pytest
import torch

from ttqkern import ops
from ttqkern.threads import set_threads

numba = pytest.importorskip("numba")


@pytest.fixture
def restore_threads():
    torch_n, numba_n = torch.get_num_threads(), numba.get_num_threads()
    yield
    torch.set_num_threads(torch_n)
    numba.set_num_threads(numba_n)


@pytest.mark.parametrize("n", [1, 2])
def test_thread_count_holds_after_small_and_large_numba_kernels(restore_threads, n):
    if n > numba.config.NUMBA_NUM_THREADS:
        pytest.skip(f"Numba's pool has {numba.config.NUMBA_NUM_THREADS} thread(s)")
    set_threads(n)
    g = torch.Generator().manual_seed(0)
    for N, K in [(8, 64), (512, 1024)]:  # below and above the serial threshold (threads_for)
        W, x = torch.randn(N, K, generator=g), torch.randn(3, K, generator=g)
        D = ops.act_scale(x, backend="numba")
        ops.qmatmul(x, ops.quantize(W, D, bits=4, group_size=32, backend="numba"), D, backend="numba")
        assert torch.get_num_threads() == n
        assert numba.get_num_threads() == n
