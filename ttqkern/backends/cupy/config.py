"""Launch parameters of the CuPy kernels: declared defaults and search space, tuned entries.

Every launch asks `params(op, device, **shape)`: the op's defaults updated by the entry
of the tuned-config store (`ttqkern.tuning.store.lookup`, file ``<device_slug>.json``)
under the key ``cupy/<op>/<field>=<value>...`` (dimensions bucketed to powers of two).
An entry may set any subset of an op's fields; one with unknown fields or values outside
`SPACE` is ignored with a warning.  Every combination in `SPACE` launches correctly and
compiles without spills (checked by tests/test_cupy_compile.py for sm_80 to sm_90).

Fields
------
decode.RT       row tiles (16 rows each) per warp: the A fragments of RT tiles share one
                load of x / D's B fragments (a template parameter of the kernel; capped
                by `rt_cap` where more would exceed 128 registers).
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
import warnings

import torch

from ...tuning import devices, store

BACKEND = "cupy"
DECODE_MAX_T = 16  # tokens per decode block (two n8 MMA tiles)
RMAX_FUSED = 64  # low-rank ranks up to this are fused (prologue partials + decode epilogue)
MAX_WARPS = 8  # __launch_bounds__(256) of the decode kernel

OPS = ("decode", "qmatmul", "act_scale")
KEY_FIELDS = {"decode": ("bits", "T", "N", "K"), "qmatmul": ("bits", "T", "N", "K"), "act_scale": ("T", "K")}
SPACE = {
    "decode": {"RT": [1, 2], "WR": [1, 2, 4, 8], "WK": [0, 1, 2, 4, 8], "KX": [512, 1024, 2048, 4096]},
    "qmatmul": {"DEQUANT_MIN_T": [17, 32, 64, 128, 256]},
    "act_scale": {"TSPLIT": [0, 1, 2, 4, 8, 16]},
}
# row tiles per warp that keep each decode instantiation within 128 registers and
# without spills (ptxas -v, sm_80 - sm_90; tests/test_cupy_compile.py checks it)
RT_MAX = {8: 2, 4: 2, 2: 2, 3: 1}


def rt_cap(bits: int, xm: int, nt: int) -> int:
    """Largest RT the decode kernel takes for bits, activation mode (0 fp16, 1 bf16, 2 fp32)
    and n8 token tiles: two row tiles of 16 tokens need > 128 registers for fp32 activations
    (two B planes) and for bf16 8-bit codes (fp32 conversion path)."""
    if nt == 2 and (xm == 2 or (bits == 8 and xm == 1)):
        return 1
    return RT_MAX[bits]


def defaults(op: str, *, bits: int = 4, T: int = 1, **_) -> dict:
    """Untuned parameters: compiled without spills for sm_80 - sm_90; not yet timed on a GPU."""
    if op == "decode":
        return {"RT": 1 if bits == 3 else 2, "WR": 2, "WK": 0, "KX": 1024}
    if op == "qmatmul":
        return {"DEQUANT_MIN_T": 64}
    return {"TSPLIT": 0}


def valid(op: str, cfg: dict, *, bits: int = 4) -> bool:
    """Every field known and within `SPACE` (and the decode block within 8 warps)."""
    space = SPACE[op]
    if set(cfg) - set(space) or any(cfg[k] not in space[k] for k in cfg):
        return False
    if op == "decode":
        wk = cfg.get("WK", 1) or 1
        return cfg.get("WR", 1) * wk <= MAX_WARPS and cfg.get("RT", 1) <= RT_MAX[bits]
    return True


def key(op: str, **shape) -> str:
    fields = {f: (shape[f] if f == "bits" else store.bucket(shape[f])) for f in KEY_FIELDS[op]}
    return store.make_key(BACKEND, op, **fields)


@functools.cache
def _slug(device: torch.device) -> str:
    return devices.device_slug(device)


def params(op: str, device: torch.device, **shape) -> dict:
    """Launch parameters of ``op`` for a shape: `defaults` updated by a valid tuned entry."""
    base = defaults(op, **shape)
    slug = _slug(torch.device(device))
    cfg = store.lookup(slug, key(op, **shape), base)
    if cfg != base and not valid(op, cfg, bits=shape.get("bits", 4)):
        warnings.warn(f"ttqkern: tuned config {key(op, **shape)} for {slug} is invalid: {cfg}; using defaults",
                      stacklevel=2)  # fmt: skip
        return base
    return cfg


@functools.cache
def num_sms(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (4 for the CPU emulator, so that splits are exercised)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
