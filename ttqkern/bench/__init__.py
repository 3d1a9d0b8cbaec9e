"""Benchmark helpers that ship with the package.

- `machine`: the state of the machine a benchmark runs on (streaming-read probe,
  load average, CPU share of other processes), used by the ``bench/`` suite.
- `generate`: the end-to-end decode benchmark, ``python -m ttqkern.bench.generate``.
"""
