"""Launch parameters of the Triton kernels: defaults, overridden by tuned entries.

Every launch asks `params(op, device, interpret, **shape)`.  The answer is the op's
defaults (`defaults`) updated by the entry the tuned-config store holds for this
device (file ``<device_slug>.json``; looked up and validated by the shared
`ttqkern.tuning.params.ConfigTable` declared here as `TABLE`) under the key

    triton/act_scale/T=<t>/K=<k>
    triton/quantize/bits=<b>/N=<n>/K=<k>
    triton/lowrank/T=<t>/K=<k>
    triton/gemv/bits=<b>/T=<t>/N=<n>/K=<k>          (decode, T <= DECODE_MAX_T)
    triton/gemm/bits=<b>/T=<t>/N=<n>/K=<k>          (prefill)

with every dimension rounded up to a power of two (`store.bucket`), see `key`.
An entry may set any subset of the op's fields; `SPACE` lists the values a tuner
should try and `FIELDS` the values an entry may hold.  ``SPLIT_K = 0`` /
``SPLIT_T = 0`` mean "enough programs to fill the device" (`auto_split`).  A tuned
entry with invalid values is ignored with a warning.  The kernels adapt what they must (block sizes to tiny shapes, BLOCK_K to
the group size, the minimum tile of ``tl.dot``) at launch, so every value in SPACE
is valid for every shape.
"""

from __future__ import annotations

import functools

import torch

from ...tuning.params import ConfigTable, Int, OpParams

# qmatmul takes the decode kernel (gemv.py) up to this many tokens, the GEMM above.
DECODE_MAX_T = 16
# tl.dot needs every tile dimension >= 16 on GPUs.
DOT_MIN = 16

OPS = ("act_scale", "quantize", "lowrank", "gemv", "gemm")
KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "N", "K"),
    "lowrank": ("T", "K"),
    "gemv": ("bits", "T", "N", "K"),
    "gemm": ("bits", "T", "N", "K"),
}

# What a tuner may try per op (every combination launches correctly).
SPACE = {
    "act_scale": {
        "BLOCK_T": [8, 16, 32, 64],
        "BLOCK_K": [32, 64, 128, 256],
        "SPLIT_T": [0, 1, 2, 4, 8],
        "num_warps": [2, 4, 8],
    },
    "quantize": {"BLOCK_N": [1, 2, 4, 8, 16, 32], "BLOCK_K": [64, 128, 256, 512, 1024], "num_warps": [1, 2, 4, 8]},
    "lowrank": {
        "BLOCK_T": [1, 2, 4, 8, 16, 32, 64],
        "BLOCK_R": [16, 32, 64],
        "BLOCK_K": [32, 64, 128, 256],
        "SPLIT_K": [0, 1, 2, 4, 8, 16],
        "USE_DOT": [0, 1],
        "num_warps": [2, 4, 8],
    },
    "gemv": {
        "BLOCK_N": [8, 16, 32, 64, 128],
        "BLOCK_K": [16, 32, 64, 128, 256],
        "SPLIT_K": [0, 1, 2, 4, 8, 16],
        "USE_DOT": [0, 1],
        "BLOCK_R": [16, 32, 64],
        "num_warps": [1, 2, 4, 8],
        "num_stages": [1, 2, 3, 4],
    },
    "gemm": {
        "BLOCK_T": [16, 32, 64, 128],
        "BLOCK_N": [32, 64, 128, 256],
        "BLOCK_K": [16, 32, 64, 128],
        "GROUP_T": [1, 4, 8, 16],
        "BLOCK_R": [16, 32, 64],
        "num_warps": [2, 4, 8],
        "num_stages": [1, 2, 3, 4, 5],
    },
}


def defaults(op: str, interpret: bool, *, T: int = 1, **_) -> dict:
    """Untuned parameters of ``op``.

    On a GPU: tiles that compile without register spills for sm_90 (checked with
    ``ptxas -v`` on the AOT build of tests/triton_aot.py; not yet timed on a GPU --
    the tuning issue measures), deterministic reductions (no split over T by
    default), split-K chosen to fill the device.
    Under the interpreter every program instance and every tile op costs Python
    time, so tiles are as large as the small test shapes and nothing is split.
    """
    decode_dot = int(T > 1)  # one token: broadcast-reduce on vector units, no M >= 16 padding
    if interpret:
        table = {
            "act_scale": {"BLOCK_T": 64, "BLOCK_K": 256, "SPLIT_T": 1, "num_warps": 4},
            "quantize": {"BLOCK_N": 64, "BLOCK_K": 512, "num_warps": 4},
            "lowrank": {"BLOCK_T": 64, "BLOCK_R": 64, "BLOCK_K": 256, "SPLIT_K": 1, "USE_DOT": 1, "num_warps": 4},
            "gemv": {
                "BLOCK_N": 64,
                "BLOCK_K": 128,
                "SPLIT_K": 1,
                "USE_DOT": decode_dot,
                "BLOCK_R": 64,
                "num_warps": 4,
                "num_stages": 1,
            },
            "gemm": {
                "BLOCK_T": 64,
                "BLOCK_N": 64,
                "BLOCK_K": 128,
                "GROUP_T": 1,
                "BLOCK_R": 64,
                "num_warps": 4,
                "num_stages": 1,
            },
        }
    else:
        table = {
            "act_scale": {"BLOCK_T": 32, "BLOCK_K": 64, "SPLIT_T": 1, "num_warps": 4},
            "quantize": {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4},
            "lowrank": {
                "BLOCK_T": 16,
                "BLOCK_R": 16,
                "BLOCK_K": 128,
                "SPLIT_K": 0,
                "USE_DOT": int(T > 16),
                "num_warps": 4,
            },
            "gemv": {
                "BLOCK_N": 32,
                "BLOCK_K": 128 if T == 1 else 64,
                "SPLIT_K": 0,
                "USE_DOT": decode_dot,
                "BLOCK_R": 16,
                "num_warps": 4,
                "num_stages": 3,
            },
            "gemm": {
                "BLOCK_T": 64,
                "BLOCK_N": 128,
                "BLOCK_K": 64,
                "GROUP_T": 8,
                "BLOCK_R": 16,
                "num_warps": 8,
                "num_stages": 3,
            },
        }
    return table[op]


_POW2 = Int(1, 4096, pow2=True)
_SPLIT = Int(0, 1024)
_FIELD_KINDS = {
    "SPLIT_K": _SPLIT,
    "SPLIT_T": _SPLIT,
    "USE_DOT": Int(0, 1),
    "num_warps": Int(1, 16, pow2=True),
    "num_stages": Int(1, 8),
}
FIELDS = {op: {f: _FIELD_KINDS.get(f, _POW2) for f in SPACE[op]} for op in OPS}


def _defaults_for(op: str):
    def make(device: torch.device, **shape) -> dict:
        from . import INTERPRET  # read once by the package, before its kernels were decorated

        return defaults(op, INTERPRET, **shape)

    return make


TABLE = ConfigTable(
    "triton",
    {
        op: OpParams(KEY_FIELDS[op], FIELDS[op], {f: tuple(v) for f, v in SPACE[op].items()}, _defaults_for(op))
        for op in OPS
    },
)


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``triton/<op>/<field>=<value>...`` (dims bucketed)."""
    return TABLE.key(op, **shape)


def params(op: str, device: torch.device, interpret: bool, **shape) -> dict:
    """Launch parameters of ``op`` for a shape on ``device``: defaults + a valid tuned entry.

    ``interpret`` is the package's `INTERPRET` (the defaults for the interpreter are small-test tiles).
    """
    return TABLE.params(op, device, **shape)


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def auto_split(split: int, programs: int, steps: int, device: torch.device) -> int:
    """Split factor for a reduction of ``steps`` tiles over ``programs`` other programs.

    ``split > 0`` is taken as given (capped at ``steps``); 0 picks the smallest split
    that gives about two programs per multiprocessor (1 on the CPU interpreter).
    """
    if split <= 0:
        split = -(-2 * _num_sms(torch.device(device)) // max(programs, 1))
    return max(1, min(split, steps))


def fit_block_k(block_k: int, group_size: int, K: int, min_block: int) -> tuple[int, bool]:
    """``(BLOCK_K, aligned)``: the K tile and whether every tile lies inside one group.

    The tile is capped at K (rounded up to a power of two).  If the group size is
    not a multiple of it, the largest power of two dividing the group size is
    used when that is at least ``min_block`` and a quarter of the wanted tile;
    otherwise the tile keeps its size and the kernel gathers a scale per column.
    """
    min_block = max(min_block, 8)  # a tile starts on a byte in every plane (1-bit: 8 codes per byte)
    block_k = max(min(block_k, triton_next_pow2(K)), min_block)
    if group_size % block_k == 0:
        return block_k, True
    p2 = group_size & -group_size  # largest power of two dividing the group size
    if p2 >= max(min_block, block_k // 4):
        return p2, True
    return block_k, False


def triton_next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
