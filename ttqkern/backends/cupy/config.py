"""Launch parameters of the CuPy kernels: declared defaults and search space, tuned entries.

Declared as `TABLE` (a `ttqkern.tuning.params.ConfigTable`): every launch asks
`params(op, device, **shape)`, the op's defaults updated by the entry of the tuned-config
store (file ``<device_slug>.json``) under ``cupy/<op>/bits=..../group=.../T=.../N=.../K=...``
(dimensions bucketed to powers of two).  An entry with unknown fields or values outside
the declared ranges is ignored with a warning.  Every combination in `SPACE` launches correctly and
compiles without spills (checked by tests/test_cupy_compile.py for sm_80 to sm_90).

Fields
------
decode.RT       row tiles (16 rows each) per warp: the A fragments of RT tiles share one
                load of x / D's B fragments (a template parameter of the kernel; capped
                by `rt_cap` where more would exceed 127 registers).
decode.WR       warps per block that own different row tiles (same K slice: x / D hits L1).
decode.WK       warps per block that split K (partials reduced in shared memory after the
                loop, no atomics); 0: enough to give every SM about 16 warps.
                WR * WK <= 8 (256 threads, the kernels' launch bound).
decode.KX       codes of K per block of the prologue's x A^T pass (more blocks in parallel
                vs. more partials for the decode epilogue to add).
qmatmul.DEQUANT_MIN_T
                from this many tokens on, qmatmul dequantizes the weight once into the
                activation dtype and calls cuBLAS (``torch.matmul``); below, the decode
                kernel runs ceil(T / 16) times over the packed weight.
quantize        no tunables: one block per (row tile, lcm(g, chunk) unit) is fixed by the layout.
act_scale.TSPLIT slices of tokens reduced by separate blocks (0: enough to fill the device).
"""

from __future__ import annotations

import functools

import torch

from ...tuning.params import ConfigTable, Int, OpParams

BACKEND = "cupy"
DECODE_MAX_T = 16  # tokens per decode block (two n8 MMA tiles)
RMAX_FUSED = 64  # low-rank ranks up to this are fused (prologue partials + decode epilogue)
MAX_WARPS = 8  # __launch_bounds__(256) of the decode kernel

# What a tuner may try per op (every combination compiles and launches correctly).
SPACE = {
    "decode": {"RT": (1, 2), "WR": (1, 2, 4, 8), "WK": (0, 1, 2, 4, 8), "KX": (512, 1024, 2048, 4096)},
    "qmatmul": {"DEQUANT_MIN_T": (17, 32, 64, 128, 256)},
    "act_scale": {"TSPLIT": (0, 1, 2, 4, 8, 16)},
}
# row tiles per warp that keep each decode instantiation within 128 registers and
# without spills (ptxas -v, sm_80 - sm_90; tests/test_cupy_compile.py checks it)
RT_MAX = {8: 2, 4: 2, 2: 2, 3: 1}


def rt_cap(bits: int, xm: int, nt: int) -> int:
    """Largest RT the decode kernel takes for bits, activation mode (0 fp16, 1 bf16, 2 fp32)
    and n8 token tiles: two row tiles of 16 tokens need > 127 registers for 8-bit codes
    (8 words per row tile, double-buffered, plus the zero codes' bias operands; bf16 also
    converts through fp32).  fp32 activations always run 8 tokens per block (three B planes,
    `host.decode_setup`)."""
    if nt == 2 and (xm == 2 or bits == 8):
        return 1
    return RT_MAX[bits]


def defaults(op: str, *, bits: int = 4, **_) -> dict:
    """Untuned parameters: compiled without spills for sm_80 - sm_90; not yet timed on a GPU."""
    if op == "decode":
        return {"RT": 1 if bits == 3 else 2, "WR": 1, "WK": 0, "KX": 1024}
    if op == "qmatmul":
        return {"DEQUANT_MIN_T": 64}
    return {"TSPLIT": 0}


def _decode_constraint(cfg, device, **shape) -> str:
    wk, wr = cfg.get("WK", 0), cfg.get("WR", 1)
    if wk not in (0, 1, 2, 4, 8):
        return f"WK={wk} is not 0 (auto) or a power of two <= 8"
    if wr * max(wk, 1) > MAX_WARPS:
        return f"WR * WK = {wr * max(wk, 1)} warps exceed the kernel's launch bound of {MAX_WARPS}"
    return ""


_DIMS = ("bits", "group", "T", "N", "K")
TABLE = ConfigTable(
    BACKEND,
    {
        "decode": OpParams(
            key_fields=_DIMS,
            fields={"RT": Int(1, 2), "WR": Int(1, 8, pow2=True), "WK": Int(0, 8), "KX": Int(256, 8192, pow2=True)},
            space=SPACE["decode"],
            defaults=lambda device, **shape: defaults("decode", **shape),
            stage="qmatmul",
            tokens=(1, 256),
            constraint=_decode_constraint,
            kernels=("ttq_decode", "ttq_prologue"),
        ),
        "qmatmul": OpParams(
            key_fields=_DIMS,
            fields={"DEQUANT_MIN_T": Int(2, 1 << 20)},
            space=SPACE["qmatmul"],
            defaults=lambda device, **shape: defaults("qmatmul", **shape),
            kernels=("ttq_dequant",),
        ),
        "act_scale": OpParams(
            key_fields=("T", "K"),
            fields={"TSPLIT": Int(0, 1024)},
            space=SPACE["act_scale"],
            defaults=lambda device, **shape: defaults("act_scale", **shape),
            kernels=("ttq_colnorm", "ttq_scale"),
        ),
    },
)
OPS = tuple(TABLE.ops)


def params(op: str, device, **shape) -> dict:
    """Launch parameters of ``op`` for a shape (`TABLE`: defaults updated by a valid tuned entry)."""
    return TABLE.params(op, device, **shape)


def key(op: str, **shape) -> str:
    return TABLE.key(op, **shape)


def invalid(op: str, cfg: dict, **shape) -> str:
    """Why ``cfg`` is not a usable config of ``op`` ('' when it is): field ranges, then the constraint."""
    spec = TABLE.ops[op]
    why = spec.invalid(cfg)
    if why or spec.constraint is None:
        return why
    return spec.constraint(cfg, None, **shape)


@functools.cache
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (4 for the CPU emulator, so that splits are exercised)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
