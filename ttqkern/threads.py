"""One thread count for torch and Numba.

Setting only torch's count is not enough: Numba's OpenMP threading layer shares the
OpenMP runtime with torch, and the Numba backend's ``threads_for`` (one thread for
small problems, then back to what Numba had) restores *Numba's* count into that
runtime, so torch's count silently went back to the core count after the first
small kernel (``--threads 1`` ran on 2 threads).  Setting both keeps them equal.
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
