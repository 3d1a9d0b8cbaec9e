"""Launch parameters of the Triton kernels: defaults, overridden by tuned entries.

Every launch asks `params(op, device, interpret, **shape)`.  The answer is the op's
defaults (`defaults`) updated by the entry the tuned-config store holds for this
device (file ``<device_slug>.json``; looked up and validated by the shared
`ttqkern.tuning.params.ConfigTable` declared here as `TABLE`) under the key

    triton/act_scale/T=<t>/K=<k>
    triton/quantize/bits=<b>/group=<g>/N=<n>/K=<k>
    triton/lowrank/T=<t>/K=<k>
    triton/gemv/bits=<b>/group=<g>/T=<t>/N=<n>/K=<k>          (decode, T <= DECODE_MAX_T)
    triton/gemm/bits=<b>/group=<g>/T=<t>/N=<n>/K=<k>          (prefill)

with every dimension rounded up to a power of two (`store.bucket`), see `key`;
``group`` is the resolved group size, kept as it is.
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

from ...tuning import devices
from ...tuning.params import ConfigTable, Int, OpParams

# qmatmul takes the decode kernel (gemv.py) up to this many tokens, the GEMM above.
DECODE_MAX_T = 16
# tl.dot needs every tile dimension >= 16 on GPUs.
DOT_MIN = 16

OPS = ("act_scale", "quantize", "lowrank", "gemv", "gemm")
KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "group", "N", "K"),
    "lowrank": ("T", "K"),
    "gemv": ("bits", "group", "T", "N", "K"),
    "gemm": ("bits", "group", "T", "N", "K"),
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


def derive(cfg: dict, op: str, target) -> dict:
    """``cfg`` (the sm_90 defaults) adapted to a GPU from its catalog figures (`ttqkern.tuning.devices.Device`).

    - gemm on sm_80 / sm_86 / sm_89 (a smaller register budget per thread in
      practice): BLOCK_K 32 -- the 64 x 128 x 64 tile spills 32-92 B there while
      64 x 128 x 32 compiles to 238-254 registers and no spill (``--compile-check``);
    - num_stages of the ``tl.dot`` loops: the most (up to the default) whose
      estimated shared memory (`dot_smem_bytes`) fits the device's ``smem_kib``;
    - SPLIT_K / SPLIT_T stay 0: `auto_split` fills the device's SMs at launch.
    Bandwidth changes no default: the decode kernels are issue-bound (perf-notes §3).
    """
    out = dict(cfg)
    arch = int(target.arch) if str(target.arch).isdigit() else 0
    if op == "gemm" and 0 < arch < 90:
        out["BLOCK_K"] = min(out["BLOCK_K"], 32)
    if op in ("gemm", "gemv") and target.smem_kib:
        while out["num_stages"] > 1 and dot_smem_bytes(op, out) > target.smem_kib * 1024:
            out["num_stages"] -= 1
    return out


def dot_smem_bytes(op: str, cfg: dict, T: int = 16) -> int:
    """Estimated shared memory of a ``tl.dot`` loop: stages x (x tile + weight tile) in 16-bit, + 4 KB.

    Matches the AOT compile of the 64 x 128 x 32 gemm tile (40 KB at 3 stages).
    """
    bt = cfg.get("BLOCK_T", max(DOT_MIN, triton_next_pow2(T)))
    return cfg["num_stages"] * (bt * cfg["BLOCK_K"] + cfg["BLOCK_K"] * cfg["BLOCK_N"]) * 2 + 4096


def fits(cfg: dict, device, op: str, **shape) -> str:
    """The Triton ops' constraint hook: why ``cfg`` does not fit ``device`` ('' when it does).

    Shared memory of the dot loops (`dot_smem_bytes`) against the device's; the
    broadcast-product decode path (USE_DOT = 0 with T > 1, or any T) holds
    BLOCK_T x BLOCK_N x BLOCK_K products per program: more than 128 per thread
    spills (``ptxas -v`` on the shipped H200 configs: 256 per thread spilled 60 B,
    2,048 spilled 2.6-14 KB).
    """
    T = shape.get("T", 1)
    if device.vendor == "nvidia" and op in ("gemm", "gemv") and (op == "gemm" or cfg.get("USE_DOT")):
        need = dot_smem_bytes(op, cfg, T)
        if device.smem_kib and need > device.smem_kib * 1024:
            return f"needs ~{need // 1024} KiB of shared memory, the device has {device.smem_kib} KiB per block"
    if op == "gemv" and not cfg.get("USE_DOT"):
        per_thread = triton_next_pow2(T) * cfg["BLOCK_N"] * cfg["BLOCK_K"] // (32 * cfg["num_warps"])
        if per_thread > 128:
            return f"{per_thread} broadcast products per thread (> 128 spills registers)"
    return ""


def _defaults_for(op: str):
    def make(device, **shape) -> dict:
        from . import INTERPRET  # read once by the package, before its kernels were decorated

        remote = isinstance(device, devices.Device)  # a catalog GPU asked about from any machine: compiled there
        interpret = INTERPRET and not remote
        cfg = defaults(op, interpret, **shape)
        if interpret:
            return cfg
        target = devices.target(device)
        return derive(cfg, op, target) if target.vendor != "cpu" else cfg

    return make


def _derived(device) -> str:
    from . import INTERPRET

    target = devices.target(device)
    if (INTERPRET and not isinstance(device, devices.Device)) or target.vendor == "cpu":
        return ""
    return (f"defaults derived for {target.name} ({target.target}, {target.sms} SMs, {target.smem_kib} KiB shared "
            f"memory per block; figures: {target.source or 'device properties'})")  # fmt: skip


# For the tuner (`ttqkern.tune`): the public stage that runs each op and the token counts it serves.
STAGE = {"act_scale": "act_scale", "quantize": "quantize", "lowrank": "qmatmul", "gemv": "qmatmul", "gemm": "qmatmul"}
TOKENS = {"gemv": (1, DECODE_MAX_T), "gemm": (DECODE_MAX_T + 1, 1 << 31)}
KERNELS = {"act_scale": ("_colpow_kernel", "_scale_kernel"), "quantize": ("_quantize_kernel",),
           "lowrank": ("_xa_kernel",), "gemv": ("_gemv_kernel",), "gemm": ("_gemm_kernel",)}  # fmt: skip

TABLE = ConfigTable(
    "triton",
    {
        op: OpParams(
            KEY_FIELDS[op],
            FIELDS[op],
            {f: tuple(v) for f, v in SPACE[op].items()},
            _defaults_for(op),
            stage=STAGE[op],
            tokens=TOKENS.get(op, (1, 1 << 31)),
            kernels=KERNELS[op],
            constraint=(lambda cfg, device, _op=op, **shape: fits(cfg, device, _op, **shape)),
        )
        for op in OPS
    },
    derived=_derived,
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
