"""``python -m ttqkern.tune --gpu``: tune a GPU backend's kernels (Triton by default, ``--backend cupy``).

The command line is `ttqkern.tune.kernels` (shared with ``--cpu``): graph-replayed,
cold-L2 timings of every candidate that matches the torch backend; the best configs
go into ``$TTQKERN_CONFIG_DIR/<device>.json`` (``--ship``: the package's folder).
"""

from __future__ import annotations

from . import kernels


def build_parser():
    return kernels.build_parser("gpu")


def main(argv=None) -> int:
    import sys

    return kernels.main(sys.argv[1:] if argv is None else argv, "gpu")
