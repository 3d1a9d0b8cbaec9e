"""One thread count for torch and Numba.

Setting only torch's count is not enough: Numba's OpenMP threading layer shares the
OpenMP runtime with torch, and when it starts (the first parallel Numba kernel of a
process) it sets that runtime to Numba's own thread count.  Observed: after
``torch.set_num_threads(1)``, the first `TTQLinear` call on the Numba backend left
``torch.get_num_threads() == 2`` on this 2-core machine, so ``--threads 1`` ran on two
threads.  Setting Numba's count as well keeps the two equal (tests/test_threads.py).
"""

from __future__ import annotations

import torch


def set_threads(n: int) -> None:
    """Use ``n`` >= 1 threads in torch's intra-op pool and in Numba's kernels (capped at Numba's pool)."""
    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:  # numba is a dependency, but a broken install must not break torch-only runs
        return
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
