"""``python -m ttqkern.tune --cpu``: tune the CPU backend's kernels (Numba) on this machine.

The command line is `ttqkern.tune.kernels` (shared with ``--gpu``).  Every candidate
is timed interleaved with the default config and checked for contention (other
processes on the machine); the run records the load average and a bandwidth probe
before and after, and says whether the machine was quiet.  The best configs go
into ``$TTQKERN_CONFIG_DIR/cpu.json``.
"""

from __future__ import annotations

from . import kernels


def build_parser():
    return kernels.build_parser("cpu")


def main(argv=None) -> int:
    import sys

    return kernels.main(sys.argv[1:] if argv is None else argv, "cpu")
