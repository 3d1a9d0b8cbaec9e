"""Parameters of the Numba kernels: documented defaults, overridden by tuned entries.

Every call asks `params(op, **shape)` (a prepared layer asks once per token count).
The answer is the op's defaults for that shape (`defaults`) updated by the entry the
tuned-config store holds for the CPU (file ``cpu.json``; looked up and validated by
the shared `ttqkern.tuning.params.ConfigTable` declared here as `TABLE`) under the key

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
SERIAL_MAX (every op)
    Problems with at most this many elements (``T * K`` for act_scale, ``N * K``
    otherwise) run a serial build of the kernel on the calling thread: starting a
    parallel region costs ~3-10 us on idle cores and up to milliseconds when the
    cores are shared with other jobs (a thread of the team waits for its time
    slice), more than a small layer gains from a second thread.  qmatmul's default
    (2^20) keeps every layer of a 135M-parameter model (at most 1536 x 576) serial.
qmatmul.DEQUANT_MIN_T
    Portable word-plane paths: from this many tokens on (prefill), the weight is
    dequantized to fp32 by a parallel Numba kernel and multiplied with
    ``torch.matmul`` (BLAS); below it the word-plane kernels stream the packed
    weight (measured crossover T ~ 16-20 for 4096 x 4096 int4).
qmatmul.PACKED_MAX_T
    AVX-512 / blocked kernels: up to this many tokens they run, above it dequantize +
    BLAS as for DEQUANT_MIN_T.  Default: always the packed kernels.  Measured on one
    thread of the Zen 5 here (CPU time): 4096 x 4096 int4 at T = 32 / 128 / 512 took
    5.7 / 30 / 124 ms in the blocked kernel against 27 / 64 / 212 ms for dequantize +
    BLAS (fp32 ``F.linear`` alone: 20 / 59 / 215 ms); 3-bit (lut) 8.9 / 67 / 324 ms
    against 49 / 129 / 418 ms.

qmatmul, AVX-512 kernels (`gemv_blocked` for bits 4 and 8, `gemv_lut` for bits 2 and 3;
`gemv_blocked`'s portable 4-bit form uses the same fields):

TILE_ROWS
    Rows of the register tile: blocked kernels, rows of a block handled together
    (4 or 8, dividing the layout's 8); lut kernels, 16-row blocks handled together.
TILE_TOKENS
    Most tokens per register tile; T is split into ``ceil(T / TILE_TOKENS)`` equal
    chunks (e.g. T = 6 -> 2 x 3), so little of a tile is padding.
PARTIALS
    Partial sums per (row, token): 2 halves the FMA / add dependency chain when a
    tile has one token (more independent work per cycle), 1 otherwise.
TASK_BLOCKS
    Row blocks (of 8 rows, or 16 for lut) per parallel task.  lut kernels reuse a
    group's tables across the blocks of a task, so more blocks per task means fewer
    table reloads for T > 1.
K_TILE
    Blocked kernels: chunks of 128 codes per K tile when a tile has several tokens
    (0: untiled).  Tiled, a task walks K in tiles and, per tile, all its row blocks,
    so the tile's activations stay in L1.  Default 0: on the Zen 5 here (1 MB L2)
    tiles of 4 / 8 / 16 chunks were not faster for T = 4 and 16 (4096 x 4096: 0.72 ms
    untiled, 0.73-0.80 tiled; 4096 x 11008: 1.90 against 2.55-2.76), and one-token
    tiles are never tiled (one sequential stream: 1.4-1.6x torch int4 against
    1.0-1.1x with tiles of 16 chunks).
PREFETCH
    Software prefetch distance: bytes ahead in the weight stream (blocked) or groups
    ahead in each row block's stream (lut).

qmatmul, portable word-plane kernels (`gemv_words`, `gemm`, `generic`):

BLOCK_N
    Output rows per parallel task.
FUSED_MAX_T
    Up to this many tokens the *fused* kernel is used (codes unpacked in registers,
    one token or two per unpack); above it (and below DEQUANT_MIN_T) the
    *buffered* kernel unpacks a row once into an L1-resident fp32 buffer and reuses
    it for every token.
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
    "qmatmul": {
        "BLOCK_N": 16, "FUSED_MAX_T": 16, "DEQUANT_MIN_T": 17, "PACKED_MAX_T": 1 << 30, "SERIAL_MAX": 1 << 20,
        "TILE_ROWS": 8, "TILE_TOKENS": 4, "PARTIALS": 2, "TASK_BLOCKS": 4, "K_TILE": 0, "PREFETCH": 65536,
    },
}  # fmt: skip

_BLOCK = Int(1, 1 << 16)
_SERIAL = Int(0, 1 << 40)
_T = Int(0, 1 << 30)
FIELDS = {
    "act_scale": {"BLOCK_K": _BLOCK, "SERIAL_MAX": _SERIAL},
    "quantize": {"BLOCK_N": _BLOCK, "SERIAL_MAX": _SERIAL},
    "qmatmul": {
        "BLOCK_N": _BLOCK, "FUSED_MAX_T": _T, "DEQUANT_MIN_T": _T, "PACKED_MAX_T": _T, "SERIAL_MAX": _SERIAL,
        # register-tile shapes the kernels are compiled for (each value is a specialisation)
        "TILE_ROWS": Int(1, 8), "TILE_TOKENS": Int(1, 4), "PARTIALS": Int(1, 2),
        "TASK_BLOCKS": Int(1, 1 << 16), "K_TILE": Int(0, 1 << 16), "PREFETCH": Int(1, 1 << 24),
    },
}  # fmt: skip

# What a tuner may try (every combination is correct for every shape).
SERIAL_SPACE = (0, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22)
SPACE = {
    "act_scale": {"BLOCK_K": (64, 128, 256, 512, 1024), "SERIAL_MAX": SERIAL_SPACE},
    "quantize": {"BLOCK_N": (1, 2, 4, 8, 16, 32, 64), "SERIAL_MAX": SERIAL_SPACE},
    "qmatmul": {
        "SERIAL_MAX": SERIAL_SPACE,
        "BLOCK_N": (4, 8, 16, 32, 64, 128),
        "FUSED_MAX_T": (0, 1, 2, 4, 8, 16, 32),
        "DEQUANT_MIN_T": (8, 16, 17, 24, 32, 48, 64, 128, 1 << 30),
        "PACKED_MAX_T": (16, 32, 64, 128, 256, 1 << 30),
        "TILE_ROWS": (1, 2, 4, 8),
        "TILE_TOKENS": (1, 2, 3, 4),
        "PARTIALS": (1, 2),
        "TASK_BLOCKS": (1, 2, 4, 8, 16),
        "K_TILE": (0, 2, 4, 8, 16, 32),
        "PREFETCH": (2, 4, 8, 16384, 32768, 65536, 131072),
    },
}


def defaults(op: str, device=None, **shape) -> dict:
    """The documented defaults of ``op`` for a shape (before any tuned entry).

    qmatmul: the register tile depends on the bit width (which kernel family runs)
    and on T (a one-token tile keeps x in registers and splits the sums; wider
    token tiles take fewer rows so that the tile stays in the 32 zmm registers).
    Measured on a 2-core EPYC (Zen 5), one thread, interleaved with torch's int4
    kernel: see ``docs/cpu-kernels.md``.
    """
    base = dict(DEFAULTS[op])
    if op != "qmatmul":
        return base
    bits, T = shape.get("bits", 4), shape.get("T", 1)
    if bits in (2, 3):  # lut: 16-row blocks
        base.update(TILE_ROWS=4, PARTIALS=2 if T == 1 else 1, TASK_BLOCKS=4 if T == 1 else 8, PREFETCH=2)
    else:  # blocked (4, 8) and the portable 4-bit form
        base.update(TILE_ROWS=8 if T <= 2 else 4, PARTIALS=2 if T == 1 else 1)
    return base


def _elements(op: str, shape: dict) -> tuple[int, int]:
    """``(elements, most elements in the shape's store bucket)`` that `threads_for` compares with SERIAL_MAX."""
    a, b = ("T", "K") if op == "act_scale" else ("N", "K")
    return shape[a] * shape[b], store.bucket(shape[a]) * store.bucket(shape[b])


def canonical(op: str):
    """The tuner's canonical form of a config of ``op`` (see `OpParams.canonical`).

    A threshold only matters through the choice it makes at a shape: SERIAL_MAX
    through serial-or-parallel, FUSED_MAX_T and DEQUANT_MIN_T through the word-plane
    kernel (fused, buffered, dequantize + BLAS), PACKED_MAX_T through packed tiles or
    dequantize + BLAS for the blocked / lut families.  Candidates that make the same
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
            # blocked / lut families: packed tiles up to PACKED_MAX_T, for the whole bucket
            out["PACKED_MAX_T"] = hi if T <= cfg["PACKED_MAX_T"] else lo - 1
        return out

    return canon


TABLE = ConfigTable(
    "numba",
    {
        op: OpParams(
            KEY_FIELDS[op],
            FIELDS[op],
            SPACE[op],
            (lambda d, _op=op, **s: defaults(_op, d, **s)),
            canonical=canonical(op),
        )
        for op in OPS
    },
)
_CPU = torch.device("cpu")


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``numba/<op>/<field>=<value>...`` (dims bucketed)."""
    return TABLE.key(op, **shape)


def params(op: str, **shape) -> dict:
    """Parameters of ``op`` for a shape: `defaults` updated by a valid tuned entry (memoised; do not modify)."""
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
