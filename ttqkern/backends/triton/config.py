"""Launch parameters of the Triton kernels: declarative fields, search spaces and defaults per op.

Every launch asks `params(op, device, interpret, **shape)`: the op's defaults
(`defaults`, derived from the device's SM count where that is what decides a
tile) updated by the tuned entry the config store holds for the device
(`ttqkern.tuning.store.lookup`, file ``<device_slug>.json``) under the key

    triton/act_scale/T=<t>/K=<k>
    triton/quantize/bits=<b>/N=<n>/K=<k>
    triton/decode1/bits=<b>/N=<n>/K=<k>            (one token: `gemv`)
    triton/decode/bits=<b>/T=<t>/N=<n>/K=<k>       (2 <= T <= DECODE_MAX_T: `qdot`)
    triton/prefill/bits=<b>/T=<t>/N=<n>/K=<k>      (T > DECODE_MAX_T: `qdot` or `dequant` + cuBLAS)
    triton/dequant/bits=<b>/N=<n>/K=<k>            (the prefill fallback's dequantization)

with every dimension rounded up to a power of two (`store.bucket`).  An entry
may set any subset of the op's `FIELDS`; `SPACE` lists the values a tuner tries
(every combination launches correctly: the launchers adapt tiles to tiny shapes).
A tuned entry with invalid values is ignored with a warning.

Stale entries: the op names ``gemv`` / ``gemm`` / ``lowrank`` of the kernels this
version replaced are no longer looked up (their keys simply never match), and
their entries were removed from the shipped ``h200.json``: they tuned tiles of
kernels that no longer exist.  The ``quantize`` and ``act_scale`` kernels are
unchanged, so their tuned entries stay valid.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import torch

from ...tuning import devices, store

# qmatmul: one token -> decode1 (vector units), up to DECODE_MAX_T -> decode, more -> prefill
DECODE_MAX_T = 16
# tl.dot needs every tile dimension >= 16 on GPUs.
DOT_MIN = 16


@dataclass(frozen=True)
class Pow2:
    """A power of two in ``[lo, hi]``."""

    lo: int
    hi: int

    def ok(self, v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and self.lo <= v <= self.hi and v & (v - 1) == 0


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values."""

    values: tuple

    def ok(self, v) -> bool:
        return not isinstance(v, bool) and v in self.values


_WARPS = OneOf((1, 2, 4, 8, 16))
_STAGES = OneOf((1, 2, 3, 4, 5, 6))
_FLAG = OneOf((0, 1))

KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "N", "K"),
    "decode1": ("bits", "N", "K"),
    "decode": ("bits", "T", "N", "K"),
    "prefill": ("bits", "T", "N", "K"),
    "dequant": ("bits", "N", "K"),
}
OPS = tuple(KEY_FIELDS)

FIELDS = {
    "act_scale": {"BLOCK_T": Pow2(1, 1024), "BLOCK_K": Pow2(1, 4096), "SPLIT_T": OneOf(tuple(range(0, 1025))),
                  "num_warps": _WARPS},
    "quantize": {"BLOCK_N": Pow2(1, 1024), "BLOCK_K": Pow2(8, 4096), "num_warps": _WARPS},
    # ROWS rows per thread x num_warps rows per CTA; PREFETCH: load step i+1 before computing step i
    "decode1": {"ROWS": Pow2(1, 16), "num_warps": OneOf((1, 2, 4, 8)), "PREFETCH": _FLAG},
    # CHUNK: codes per tl.dot (capped by the group size); SWAP: weights as the MMA's M operand
    # SPLIT_K: 0 = enough chunk ranges for one CTA per SM (summed by the last program of a tile)
    "decode": {"BLOCK_N": Pow2(16, 256), "CHUNK": Pow2(16, 512), "SWAP": _FLAG, "SPLIT_K": OneOf((0, 1, 2, 4, 8, 16)),
               "num_warps": _WARPS, "num_stages": _STAGES},
    "prefill": {"BLOCK_T": Pow2(16, 256), "BLOCK_N": Pow2(16, 256), "CHUNK": Pow2(16, 512), "GROUP_T": Pow2(1, 64),
                "SWAP": _FLAG, "DEQ_TILE": _FLAG, "num_warps": _WARPS, "num_stages": _STAGES, "DEQUANT_MIN_T": Pow2(16, 1 << 30)},
    "dequant": {"BLOCK_N": Pow2(16, 256), "CHUNK": Pow2(16, 512), "num_warps": _WARPS},
}  # fmt: skip

# What a tuner may try per op (every combination launches correctly).
SPACE = {
    "act_scale": {"BLOCK_T": [8, 16, 32, 64], "BLOCK_K": [32, 64, 128, 256], "SPLIT_T": [0, 1, 2, 4, 8],
                  "num_warps": [2, 4, 8]},
    "quantize": {"BLOCK_N": [1, 2, 4, 8, 16, 32], "BLOCK_K": [64, 128, 256, 512, 1024], "num_warps": [1, 2, 4, 8]},
    "decode1": {"ROWS": [1, 2, 4, 8], "num_warps": [2, 4, 8], "PREFETCH": [0, 1]},
    "decode": {"BLOCK_N": [16, 32, 64, 128], "CHUNK": [32, 64, 128, 256], "SWAP": [0, 1], "SPLIT_K": [0, 1, 2, 4],
               "num_warps": [4, 8], "num_stages": [1, 2, 3, 4]},
    "prefill": {"BLOCK_T": [32, 64, 128], "BLOCK_N": [64, 128, 256], "CHUNK": [64, 128], "GROUP_T": [1, 4, 8, 16],
                "SWAP": [0, 1], "DEQ_TILE": [0, 1], "num_warps": [4, 8], "num_stages": [2, 3, 4],
                "DEQUANT_MIN_T": [64, 256, 512, 1024, 2048, 1 << 30]},
    "dequant": {"BLOCK_N": [16, 32, 64, 128], "CHUNK": [64, 128, 256], "num_warps": [2, 4, 8]},
}  # fmt: skip


@dataclass(frozen=True)
class DeviceInfo:
    """What the defaults depend on: the store's device slug, the multiprocessor count and the
    compute capability (``major * 10 + minor``; 0 when not NVIDIA)."""

    slug: str
    sms: int
    cc: int = 90


_override: list[DeviceInfo] = []
_untuned: list[bool] = []


@contextlib.contextmanager
def defaults_only():
    """Within the block, `params` ignores tuned entries (the static inspection of the defaults)."""
    _untuned.append(True)
    try:
        yield
    finally:
        _untuned.pop()


@contextlib.contextmanager
def device_override(info: DeviceInfo):
    """Within the block, every device is `info` (the static inspection compiles for a GPU it does not have)."""
    _override.append(info)
    try:
        yield
    finally:
        _override.pop()


@functools.cache
def _device_info(device: torch.device) -> DeviceInfo:
    slug = devices.device_slug(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        cc = 0 if getattr(torch.version, "hip", None) else props.major * 10 + props.minor
        return DeviceInfo(slug, props.multi_processor_count, cc)
    return DeviceInfo(slug, 1, 0)


def device_info(device) -> DeviceInfo:
    """`DeviceInfo` of a torch device (or the `device_override` in force)."""
    return _override[-1] if _override else _device_info(torch.device(device))


def catalog_info(slug: str, cc: int = 90) -> DeviceInfo:
    """`DeviceInfo` of a catalog device (`ttqkern.tuning.devices`) by slug, e.g. ``"h200"``, for capability cc."""
    for d in devices.CATALOG:
        if d.slug == slug:
            if d.sms is None:
                raise ValueError(f"the device catalog has no SM count for {slug!r}")
            return DeviceInfo(slug, d.sms, cc)
    raise ValueError(f"unknown device {slug!r}; catalog: {', '.join(d.slug for d in devices.CATALOG)}")


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(n).bit_length() - 1) if n >= 1 else 1


def defaults(op: str, interpret: bool, *, T: int = 1, N: int = 4096, sms: int = 132, cc: int = 90, **_) -> dict:
    """Untuned parameters of ``op`` for a shape (``sms``: the device's multiprocessor count, ``cc``:
    its compute capability).

    GPU reasoning, per op (docs/triton-kernels.md has the static figures):
    decode1: 4 warps, rows per thread as many as keep >= 2 CTAs per SM (x~ loads and
    scale lookups are shared by a thread's rows), prefetch on.  decode: 64-row tiles
    with the weights as the MMA's M operand (64 rows amortise the x~ tile), split
    over K until there is a CTA per SM.  prefill: on Hopper 128 x 128 tiles (64 x 128 below 128
    tokens), 8 warps; before Hopper both MMA operands live in registers, so 64 x 128 and 4
    warps (128 x 128 spills there); 64-code chunks; dequantize + cuBLAS from 512 tokens.  Under the interpreter every program costs
    Python time: tiles as large as the test shapes.
    """
    if interpret:
        table = {
            "act_scale": {"BLOCK_T": 64, "BLOCK_K": 256, "SPLIT_T": 1, "num_warps": 4},
            "quantize": {"BLOCK_N": 64, "BLOCK_K": 512, "num_warps": 4},
            "decode1": {"ROWS": 8, "num_warps": 4, "PREFETCH": 1},
            "decode": {"BLOCK_N": 64, "CHUNK": 128, "SWAP": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1},
            "prefill": {"BLOCK_T": 64, "BLOCK_N": 64, "CHUNK": 128, "GROUP_T": 1, "SWAP": 1, "DEQ_TILE": 1, "num_warps": 4,
                        "num_stages": 1, "DEQUANT_MIN_T": 1 << 30},
            "dequant": {"BLOCK_N": 64, "CHUNK": 128, "num_warps": 4},
        }  # fmt: skip
        return dict(table[op])
    warps = 4
    hopper = cc >= 90
    rows = max(1, min(8, _pow2_floor(N / (2 * sms * warps))))
    table = {
        "act_scale": {"BLOCK_T": 32, "BLOCK_K": 64, "SPLIT_T": 1, "num_warps": 4},
        "quantize": {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4},
        "decode1": {"ROWS": rows, "num_warps": warps, "PREFETCH": 1},
        "decode": {"BLOCK_N": 64, "CHUNK": 128, "SWAP": 1, "SPLIT_K": 0, "num_warps": 4, "num_stages": 2},
        "prefill": {"BLOCK_T": 128 if T >= 128 and hopper else 64, "BLOCK_N": 128, "CHUNK": 64, "GROUP_T": 8,
                    "SWAP": 1, "DEQ_TILE": 1, "num_warps": 8 if hopper else 4, "num_stages": 3, "DEQUANT_MIN_T": 512},
        "dequant": {"BLOCK_N": 32, "CHUNK": 128, "num_warps": 4},
    }  # fmt: skip
    return dict(table[op])


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``triton/<op>/<field>=<value>...`` (dims bucketed)."""
    fields = {f: (shape[f] if f == "bits" else store.bucket(shape[f])) for f in KEY_FIELDS[op]}
    return store.make_key("triton", op, **fields)


def valid(op: str, cfg: dict) -> bool:
    """Are all of ``cfg``'s fields known to ``op`` and in range?"""
    spec = FIELDS[op]
    return all(name in spec and spec[name].ok(v) for name, v in cfg.items())


_valid = valid  # the name the tests use


def device_defaults(op: str, device, interpret: bool, **shape) -> dict:
    """`defaults` of ``op`` for a shape on ``device`` (its SM count)."""
    info = device_info(device)
    return defaults(op, interpret, sms=info.sms, cc=info.cc, **shape)


def params(op: str, device, interpret: bool, **shape) -> dict:
    """Launch parameters of ``op`` for a shape on ``device``: defaults + tuned entry."""
    info = device_info(device)
    base = defaults(op, interpret, sms=info.sms, cc=info.cc, **shape)
    if _untuned:
        return base
    k = key(op, **shape)
    cfg = store.lookup(info.slug, k, base)
    if cfg != base and not valid(op, cfg):
        warnings.warn(f"ttqkern: tuned config {k} for {info.slug} has invalid values {cfg}; using defaults",
                      stacklevel=2)  # fmt: skip
        return base
    return cfg


def auto_split(split: int, programs: int, steps: int, device, per_sm: int = 2) -> int:
    """Split factor for a reduction of ``steps`` tiles over ``programs`` other programs.

    ``split > 0`` is taken as given (capped at ``steps``); 0 picks the smallest split
    that gives about ``per_sm`` programs per multiprocessor (1 on the CPU interpreter).
    """
    if split <= 0:
        split = -(-per_sm * device_info(device).sms // max(programs, 1))
    return max(1, min(split, steps))


def triton_next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
