"""Parameters of the Numba kernels: documented defaults, overridden by tuned entries.

Every call asks `params(op, **shape)`.  The answer is the op's `DEFAULTS` updated by
the entry the tuned-config store holds for the CPU (file ``cpu.json``; looked up and
validated by the shared `ttqkern.tuning.params.ConfigTable` declared here as `TABLE`)
under the key

    numba/act_scale/T=<t>/K=<k>
    numba/quantize/bits=<b>/group=<g>/N=<n>/K=<k>
    numba/qmatmul/bits=<b>/group=<g>/T=<t>/N=<n>/K=<k>

with every dimension rounded up to a power of two (`store.bucket`); ``group`` is the
resolved group size, kept as it is.  An entry may set
any subset of the op's fields; `SPACE` lists the values a tuner should try.  Entries
with unknown fields or values outside `FIELDS` are ignored with a warning
(docs/spec.md §5).

Fields
------
act_scale.BLOCK_K
    Columns of x per parallel task (column norms are independent per column).
quantize.BLOCK_N
    Rows of W per parallel task.  Each task quantizes and packs whole rows, so a
    block is ``BLOCK_N * K`` weights read once and written packed.
qmatmul.BLOCK_N
    Output rows per parallel task of the packed kernels.  Small blocks balance the
    threads; large ones amortise the per-task start.
qmatmul.FUSED_MAX_T
    Up to this many tokens the *fused* kernel is used: codes are unpacked in
    registers and multiplied straight away (one token, or two tokens per unpack).
    Above it (and below DEQUANT_MIN_T) the *buffered* kernel unpacks a row once into
    an L1-resident fp32 buffer (scales applied) and reuses it for every token.
    Default 16: on a 2-core EPYC (1 thread) the fused kernel was faster than the
    buffered one at every T, and faster than dequantize + BLAS up to T ~ 16-20.
SERIAL_MAX (every op)
    Problems with at most this many elements (``T * K`` for act_scale, ``N * K``
    otherwise) run on the calling thread only: starting a parallel region costs
    ~10-20 us on idle cores and milliseconds when the cores are shared with other
    jobs (a thread of the team waits for its time slice), far more than small
    problems gain from a second thread.
qmatmul.DEQUANT_MIN_T
    From this many tokens on (prefill), the weight is dequantized to fp32 by a
    parallel Numba kernel and multiplied with ``torch.matmul`` (BLAS): compute
    bound, so the GEMM's efficiency wins over streaming the packed weight
    (measured crossover with the fused kernel at T ~ 16-20 for 4096 x 4096 int4).
"""

from __future__ import annotations

import contextlib

import numba
import torch

from ...tuning import store
from ...tuning.params import ConfigTable, Int, OpParams

OPS = ("act_scale", "quantize", "qmatmul")
KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "group", "N", "K"),
    "qmatmul": ("bits", "group", "T", "N", "K"),
}

DEFAULTS = {
    "act_scale": {"BLOCK_K": 256, "SERIAL_MAX": 1 << 16},
    "quantize": {"BLOCK_N": 16, "SERIAL_MAX": 1 << 16},
    "qmatmul": {"BLOCK_N": 16, "FUSED_MAX_T": 16, "DEQUANT_MIN_T": 17, "SERIAL_MAX": 1 << 16},
}

_BLOCK = Int(1, 1 << 16)
_SERIAL = Int(0, 1 << 40)
_T = Int(0, 1 << 30)
FIELDS = {
    "act_scale": {"BLOCK_K": _BLOCK, "SERIAL_MAX": _SERIAL},
    "quantize": {"BLOCK_N": _BLOCK, "SERIAL_MAX": _SERIAL},
    "qmatmul": {"BLOCK_N": _BLOCK, "FUSED_MAX_T": _T, "DEQUANT_MIN_T": _T, "SERIAL_MAX": _SERIAL},
}

# What a tuner may try (every combination is correct for every shape).
SERIAL_SPACE = (0, 1 << 12, 1 << 14, 1 << 16, 1 << 18)
SPACE = {
    "act_scale": {"BLOCK_K": (64, 128, 256, 512, 1024), "SERIAL_MAX": SERIAL_SPACE},
    "quantize": {"BLOCK_N": (1, 2, 4, 8, 16, 32, 64), "SERIAL_MAX": SERIAL_SPACE},
    "qmatmul": {
        "SERIAL_MAX": SERIAL_SPACE,
        "BLOCK_N": (4, 8, 16, 32, 64, 128),
        "FUSED_MAX_T": (0, 1, 2, 4, 8, 16, 32),
        "DEQUANT_MIN_T": (8, 16, 17, 24, 32, 48, 64, 1 << 30),
    },
}


def _elements(op: str, shape: dict) -> tuple[int, int]:
    """``(elements, most elements in the shape's store bucket)`` that `threads_for` compares with SERIAL_MAX."""
    a, b = ("T", "K") if op == "act_scale" else ("N", "K")
    return shape[a] * shape[b], store.bucket(shape[a]) * store.bucket(shape[b])


def canonical(op: str):
    """The tuner's canonical form of a config of ``op`` (see `OpParams.canonical`).

    A threshold only matters through the choice it makes at a shape: SERIAL_MAX
    through serial-or-parallel, FUSED_MAX_T and DEQUANT_MIN_T through the qmatmul
    kernel (fused, buffered, dequantize + BLAS).  Candidates that make the same
    choices are one behaviour, measured once; the stored form makes that choice for
    every shape of the store bucket (T up to the bucket's top, N x K likewise), so a
    tuned entry never splits its bucket at a threshold the tuner did not measure.
    """

    def canon(cfg: dict, **shape) -> dict:
        out = dict(cfg)
        n, top = _elements(op, shape)
        out["SERIAL_MAX"] = top if n <= cfg["SERIAL_MAX"] else 0
        if op == "qmatmul":
            T, hi = shape["T"], store.bucket(shape["T"])
            lo = hi // 2 + 1 if hi > 1 else 1
            if T >= cfg["DEQUANT_MIN_T"]:  # dequantize + BLAS for the whole bucket
                out["DEQUANT_MIN_T"], out["FUSED_MAX_T"] = lo, 0
            elif T <= cfg["FUSED_MAX_T"]:  # fused kernel for the whole bucket
                out["DEQUANT_MIN_T"], out["FUSED_MAX_T"] = hi + 1, hi
            else:  # buffered kernel for the whole bucket
                out["DEQUANT_MIN_T"], out["FUSED_MAX_T"] = hi + 1, lo - 1
        return out

    return canon


TABLE = ConfigTable(
    "numba",
    {op: OpParams(KEY_FIELDS[op], FIELDS[op], SPACE[op], DEFAULTS[op], canonical=canonical(op)) for op in OPS},
)
_CPU = torch.device("cpu")


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``numba/<op>/<field>=<value>...`` (dims bucketed)."""
    return TABLE.key(op, **shape)


def params(op: str, **shape) -> dict:
    """Parameters of ``op`` for a shape: `DEFAULTS` updated by a valid tuned entry (memoised)."""
    return TABLE.params(op, _CPU, **shape)


@contextlib.contextmanager
def threads_for(elements: int, cfg: dict):
    """Run the enclosed kernels on one thread when ``elements <= cfg["SERIAL_MAX"]``."""
    if elements > cfg["SERIAL_MAX"]:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)  # thread-local in numba: other threads' settings are untouched
    try:
        yield
    finally:
        numba.set_num_threads(old)
