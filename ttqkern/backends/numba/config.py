"""Parameters of the Numba kernels: documented defaults, overridden by tuned entries.

Every call asks `params(op, **shape)`.  The answer is the op's `DEFAULTS` updated by
the entry the tuned-config store holds for the CPU (`ttqkern.tuning.store.lookup`,
file ``cpu.json``) under the key

    numba/act_scale/T=<t>/K=<k>
    numba/quantize/bits=<b>/N=<n>/K=<k>
    numba/qmatmul/bits=<b>/T=<t>/N=<n>/K=<k>

with every dimension rounded up to a power of two (`store.bucket`).  An entry may set
any subset of the op's fields; `SPACE` lists the values a tuner should try.  Entries
with unknown fields or invalid values are ignored with a warning (spec §5).

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
import warnings

import numba

from ...tuning import store

OPS = ("act_scale", "quantize", "qmatmul")
KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "N", "K"),
    "qmatmul": ("bits", "T", "N", "K"),
}

DEFAULTS = {
    "act_scale": {"BLOCK_K": 256, "SERIAL_MAX": 1 << 16},
    "quantize": {"BLOCK_N": 16, "SERIAL_MAX": 1 << 16},
    "qmatmul": {"BLOCK_N": 16, "FUSED_MAX_T": 16, "DEQUANT_MIN_T": 17, "SERIAL_MAX": 1 << 16},
}

# What a tuner may try (every combination is correct for every shape).
SERIAL_SPACE = [0, 1 << 12, 1 << 14, 1 << 16, 1 << 18]
SPACE = {
    "act_scale": {"BLOCK_K": [64, 128, 256, 512, 1024], "SERIAL_MAX": SERIAL_SPACE},
    "quantize": {"BLOCK_N": [1, 2, 4, 8, 16, 32, 64], "SERIAL_MAX": SERIAL_SPACE},
    "qmatmul": {
        "SERIAL_MAX": SERIAL_SPACE,
        "BLOCK_N": [4, 8, 16, 32, 64, 128],
        "FUSED_MAX_T": [0, 1, 2, 4, 8, 16, 32],
        "DEQUANT_MIN_T": [8, 16, 17, 24, 32, 48, 64, 1 << 30],
    },
}

SLUG = "cpu"  # `ttqkern.tuning.devices.device_slug` of every CPU


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``numba/<op>/<field>=<value>...`` (dims bucketed)."""
    fields = {f: (shape[f] if f == "bits" else store.bucket(shape[f])) for f in KEY_FIELDS[op]}
    return store.make_key("numba", op, **fields)


def _valid(op: str, cfg: dict) -> bool:
    for name, v in cfg.items():
        if name not in DEFAULTS[op] or not isinstance(v, int) or isinstance(v, bool):
            return False
        if name.startswith("BLOCK_") and not 1 <= v <= 1 << 16:
            return False
        if (name.endswith("_T") or name == "SERIAL_MAX") and v < 0:
            return False
    return True


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


def params(op: str, **shape) -> dict:
    """Parameters of ``op`` for a shape: `DEFAULTS` updated by the tuned entry, if any.

    Memoised per (op, bucketed shape, store generation, defaults): a decode step
    asks once per layer and call, and building the key and merging the entry cost
    ~15 us.  The store's generation is the identity of its loaded entries (a new
    dict whenever a file is saved or the cache cleared; the memo keeps a reference,
    so the identity cannot be reused), so a new or reloaded config is always seen.
    """
    entries = store.load(SLUG)
    fields = tuple((f, shape[f] if f == "bits" else store.bucket(shape[f])) for f in KEY_FIELDS[op])
    memo_key = (op, fields, id(entries), tuple(DEFAULTS[op].items()))
    hit = _memo.get(memo_key)
    if hit is None:
        if len(_memo) > 4096:  # bounded: shapes x config generations
            _memo.clear()
        hit = _memo[memo_key] = (_params(op, **shape), entries)
    return hit[0]


_memo: dict = {}


def _params(op: str, **shape) -> dict:
    base = DEFAULTS[op]
    k = key(op, **shape)
    cfg = store.lookup(SLUG, k, base)
    if cfg is not base and cfg != base and not _valid(op, cfg):
        warnings.warn(f"ttqkern: tuned config {k} for {SLUG} has invalid values {cfg}; using defaults", stacklevel=2)
        return dict(base)
    return cfg
