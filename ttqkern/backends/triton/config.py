"""Launch parameters of the Triton kernels: declared fields, search spaces and defaults per op.

Every launch asks `params(op, device, interpret, **shape)`: the op's defaults
(`defaults`, derived from the device's figures where they decide a tile) updated by
the entry the tuned-config store holds for the device (file ``<device_slug>.json``;
looked up and validated by the shared `ttqkern.tuning.params.ConfigTable` declared
here as `TABLE`) under the key

    triton/act_scale/T=<t>/K=<k>
    triton/quantize/bits=<b>/group=<g>/N=<n>/K=<k>
    triton/decode1/bits=<b>/group=<g>/N=<n>/K=<k>          (one token: `gemv`)
    triton/decode/bits=<b>/group=<g>/T=<t>/N=<n>/K=<k>     (2 <= T <= DECODE_MAX_T: `qdot`)
    triton/prefill/bits=<b>/group=<g>/T=<t>/N=<n>/K=<k>    (more tokens: `qdot`, or `dequant` + cuBLAS)
    triton/dequant/bits=<b>/group=<g>/N=<n>/K=<k>          (the prefill fallback's dequantization)

with every dimension rounded up to a power of two (`store.bucket`) and ``group`` the
resolved group size.  An entry may set any subset of the op's `FIELDS`; `SPACE`
lists the values a tuner tries (every combination launches correctly: the launchers
adapt tiles to tiny shapes).  A tuned entry with invalid values is ignored with a
warning.

Stale entries: the ops ``gemv`` / ``gemm`` / ``lowrank`` of the kernels this version
replaced are no longer looked up (their keys never match), and their entries were
removed from the shipped ``h200.json`` -- they tuned tiles of kernels that no longer
exist.  The ``quantize`` and ``act_scale`` kernels are unchanged, so their entries
stay valid.
"""

from __future__ import annotations

import contextlib

import torch

from ...tuning import devices
from ...tuning.params import ConfigTable, Int, OpParams

# qmatmul: one token -> decode1 (vector units), up to DECODE_MAX_T -> decode, more -> prefill
DECODE_MAX_T = 16
# tl.dot needs every tile dimension >= 16 on GPUs.
DOT_MIN = 16
# prefill: from this many tokens (tunable, DEQUANT_MIN_T) dequantize once and call cuBLAS
DEQUANT_MIN_T_DEFAULT = 512

KEY_FIELDS = {
    "act_scale": ("T", "K"),
    "quantize": ("bits", "group", "N", "K"),
    "decode1": ("bits", "group", "N", "K"),
    "decode": ("bits", "group", "T", "N", "K"),
    "prefill": ("bits", "group", "T", "N", "K"),
    "dequant": ("bits", "group", "N", "K"),
}
OPS = tuple(KEY_FIELDS)

_POW2 = Int(1, 4096, pow2=True)
_FLAG = Int(0, 1)
_WARPS = Int(1, 16, pow2=True)
_STAGES = Int(1, 8)
FIELDS = {
    "act_scale": {"BLOCK_T": _POW2, "BLOCK_K": _POW2, "SPLIT_T": Int(0, 1024), "num_warps": _WARPS},
    "quantize": {"BLOCK_N": _POW2, "BLOCK_K": Int(8, 4096, pow2=True), "num_warps": _WARPS},
    # ROWS rows per thread x num_warps rows per CTA; PREFETCH: load step i+1 before computing step i
    "decode1": {"ROWS": Int(1, 16, pow2=True), "num_warps": Int(1, 8, pow2=True), "PREFETCH": _FLAG},
    # CHUNK: codes per tl.dot (capped by the group); SWAP: weights as the MMA's M operand;
    # SPLIT_K: 0 = enough chunk ranges for one CTA per SM (summed by the last program of a tile)
    "decode": {"BLOCK_N": Int(16, 256, pow2=True), "CHUNK": Int(16, 512, pow2=True), "SWAP": _FLAG,
               "SPLIT_K": Int(0, 64), "num_warps": _WARPS, "num_stages": _STAGES},
    # DEQ_TILE: dequantize the tile in registers (w = s u + m) rather than rescale the accumulator per chunk;
    # DEQUANT_MIN_T: from this many tokens, dequantize once and call cuBLAS instead
    "prefill": {"BLOCK_T": Int(16, 256, pow2=True), "BLOCK_N": Int(16, 256, pow2=True),
                "CHUNK": Int(16, 512, pow2=True), "GROUP_T": Int(1, 64, pow2=True), "SWAP": _FLAG, "DEQ_TILE": _FLAG,
                "num_warps": _WARPS, "num_stages": _STAGES, "DEQUANT_MIN_T": Int(16, 1 << 30, pow2=True)},
    "dequant": {"BLOCK_N": Int(16, 256, pow2=True), "CHUNK": Int(16, 512, pow2=True), "num_warps": _WARPS},
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


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(n).bit_length() - 1) if n >= 1 else 1


def defaults(
    op: str, interpret: bool, *, T: int = 1, N: int = 4096, bits: int = 4, sms: int = 132, cc: int = 90, **_
) -> dict:
    """Untuned parameters of ``op`` for a shape (``sms``: the device's multiprocessor count, ``cc``:
    its compute capability, e.g. 90; docs/triton-kernels.md has the static figures behind each).

    decode1: 4 warps, rows per thread as many as keep >= 2 CTAs per SM (a thread's rows
    share its x~ loads and scale lookups; at most 8, 4 for 3 bits), prefetch on.  decode: 64-row tiles with the
    weights as the MMA's M operand (64 rows amortise the x~ tile), split over K until
    there is a CTA per SM.  prefill: on Hopper 128 x 128 tiles (64 x 128 below 128
    tokens) and 8 warps; before Hopper both MMA operands live in registers, so 64 x 128
    and 4 warps (128 x 128 spills there); 64-code chunks, tiles dequantized in registers;
    dequantize + cuBLAS from 512 tokens.  Under the interpreter every program costs
    Python time: tiles as large as the test shapes, nothing split.
    """
    if interpret:
        table = {
            "act_scale": {"BLOCK_T": 64, "BLOCK_K": 256, "SPLIT_T": 1, "num_warps": 4},
            "quantize": {"BLOCK_N": 64, "BLOCK_K": 512, "num_warps": 4},
            "decode1": {"ROWS": 8, "num_warps": 4, "PREFETCH": 1},
            "decode": {"BLOCK_N": 64, "CHUNK": 128, "SWAP": 1, "SPLIT_K": 1, "num_warps": 4, "num_stages": 1},
            "prefill": {"BLOCK_T": 64, "BLOCK_N": 64, "CHUNK": 128, "GROUP_T": 1, "SWAP": 1, "DEQ_TILE": 1,
                        "num_warps": 4, "num_stages": 1, "DEQUANT_MIN_T": 1 << 30},
            "dequant": {"BLOCK_N": 64, "CHUNK": 128, "num_warps": 4},
        }  # fmt: skip
        return dict(table[op])
    warps = 4
    hopper = cc >= 90
    # rows per thread: 8 at most, 4 for 3 bits (two planes: 8 rows spill on sm_90)
    rows = max(1, min(4 if bits == 3 else 8, _pow2_floor(N / (2 * max(sms, 1) * warps))))
    table = {
        "act_scale": {"BLOCK_T": 32, "BLOCK_K": 64, "SPLIT_T": 1, "num_warps": 4},
        "quantize": {"BLOCK_N": 8, "BLOCK_K": 256, "num_warps": 4},
        "decode1": {"ROWS": rows, "num_warps": warps, "PREFETCH": 1},
        "decode": {"BLOCK_N": 64, "CHUNK": 128, "SWAP": 1, "SPLIT_K": 0, "num_warps": 4, "num_stages": 4},
        "prefill": {"BLOCK_T": 128 if T >= 128 and hopper else 64, "BLOCK_N": 128, "CHUNK": 64, "GROUP_T": 8,
                    "SWAP": 1, "DEQ_TILE": 1, "num_warps": 8 if hopper else 4, "num_stages": 3,
                    "DEQUANT_MIN_T": DEQUANT_MIN_T_DEFAULT},
        "dequant": {"BLOCK_N": 32, "CHUNK": 128, "num_warps": 4},
    }  # fmt: skip
    return dict(table[op])


def dot_smem_bytes(op: str, cfg: dict, T: int = 16, bits: int = 4) -> int:
    """Estimated shared memory of the tensor-core kernel (an upper bound of the AOT compiles).

    Per pipeline stage the x~ tile (16-bit) and the packed words (cp.async), plus the
    dequantized tile on its way to the MMA operand layout, plus 4 KB.  Compiled: decode
    64 rows x 128 codes, 4 stages: 44 KB (estimate 52); prefill 128 x 128 x 64, 3 stages:
    62 KB on sm_90 (estimate 80), 64 x 128 x 64: 42 KB on sm_80 (56).
    """
    bt = cfg.get("BLOCK_T", DOT_MIN) if op == "prefill" else max(DOT_MIN, triton_next_pow2(T))
    chunk, bn, stages = cfg["CHUNK"], cfg["BLOCK_N"], cfg["num_stages"]
    return stages * (bt * chunk * 2 + bn * chunk * bits // 8) + bn * chunk * 2 + 4096


def fits(cfg: dict, device, op: str, **shape) -> str:
    """The Triton ops' constraint hook: why ``cfg`` does not fit ``device`` ('' when it does).

    Shared memory of the tensor-core kernels (`dot_smem_bytes`) against the device's
    per-block limit; a one-token tile of more than 16 rows per thread (their x~ and
    scale registers) spills.
    """
    if op in ("decode", "prefill") and device.vendor == "nvidia" and device.smem_kib:
        need = dot_smem_bytes(op, cfg, shape.get("T", DOT_MIN), shape.get("bits") or 4)
        if need > device.smem_kib * 1024:
            return f"needs ~{need // 1024} KiB of shared memory, the device has {device.smem_kib} KiB per block"
    if op == "prefill" and device.vendor == "nvidia" and 0 < _cc(device) < 90:
        if cfg["BLOCK_T"] * cfg["BLOCK_N"] > 64 * 128:
            return "tiles above 64 x 128 spill before Hopper (both MMA operands in registers)"
    return ""


def _cc(device) -> int:
    return int(device.arch) if str(device.arch).isdigit() else 0


def _canonical(op: str):
    def canon(cfg: dict, **shape) -> dict:
        if op == "prefill":  # the threshold's choice at this T, for every T of the bucket alike
            cfg["DEQUANT_MIN_T"] = 16 if shape.get("T", 0) >= cfg["DEQUANT_MIN_T"] else 1 << 30
        return cfg

    return canon


_override: list = []
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
def device_override(device: devices.Device):
    """Within the block, every launch is configured for the catalog ``device`` (the static
    inspection compiles for a GPU this machine does not have, on CPU tensors)."""
    _override.append(device)
    try:
        yield
    finally:
        _override.pop()


def _defaults_for(op: str):
    def make(device, **shape) -> dict:
        from . import INTERPRET  # read once by the package, before its kernels were decorated

        remote = isinstance(device, devices.Device)  # a catalog GPU asked about from any machine: compiled there
        interpret = INTERPRET and not remote
        if interpret:
            return defaults(op, True, **shape)
        dev = devices.target(device)
        if dev.vendor == "cpu":
            return defaults(op, False, **shape)
        return defaults(op, False, sms=dev.sms or 132, cc=_cc(dev) or 90, **shape)

    return make


def _derived(device) -> str:
    from . import INTERPRET

    target = devices.target(device)
    if (INTERPRET and not isinstance(device, devices.Device)) or target.vendor == "cpu":
        return ""
    return (f"defaults derived for {target.name} ({target.target}, {target.sms} SMs, {target.smem_kib} KiB shared "
            f"memory per block; figures: {target.source or 'device properties'})")  # fmt: skip


# For the tuner (`ttqkern.tune`): the public stage that runs each op and the token counts it serves.
STAGE = {"act_scale": "act_scale", "quantize": "quantize", "decode1": "qmatmul", "decode": "qmatmul",
         "prefill": "qmatmul", "dequant": "qmatmul"}  # fmt: skip
# dequant serves the prefills from DEQUANT_MIN_T tokens: its tuning / compile-check cases take T = 512, not 17
TOKENS = {"decode1": (1, 1), "decode": (2, DECODE_MAX_T), "prefill": (DECODE_MAX_T + 1, 1 << 31),
          "dequant": (DEQUANT_MIN_T_DEFAULT, 1 << 31)}  # fmt: skip
KERNELS = {"act_scale": ("_colpow_kernel", "_scale_kernel"), "quantize": ("_quantize_kernel",),
           "decode1": ("_prologue_kernel", "_gemv_kernel"), "decode": ("_prologue_kernel", "_qdot_kernel"),
           "prefill": ("_prologue_kernel", "_qdot_kernel", "_dequant_kernel"),  # DEQUANT_MIN_T picks the path
           "dequant": ("_dequant_kernel",)}  # fmt: skip

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
            canonical=_canonical(op),
        )
        for op in OPS
    },
    derived=_derived,
)


def key(op: str, **shape) -> str:
    """Store key of ``op`` for a shape: ``triton/<op>/<field>=<value>...`` (dims bucketed)."""
    return TABLE.key(op, **shape)


def params(op: str, device, interpret: bool, **shape) -> dict:
    """Launch parameters of ``op`` for a shape on ``device``: defaults + a valid tuned entry.

    ``interpret`` is the package's `INTERPRET` (the defaults for the interpreter are small-test
    tiles); within `device_override` the catalog device stands for ``device``.
    """
    dev = _override[-1] if _override else device
    if _untuned:
        return TABLE.default(op, dev, **shape)
    return TABLE.params(op, dev, **shape)


def num_sms(device) -> int:
    """Multiprocessors of ``device`` (a torch device or, in `device_override`, the catalog device); 1 on the CPU."""
    if _override:
        return _override[-1].sms
    device = torch.device(device)
    if device.type == "cuda":
        return devices.target(device).sms or torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def auto_split(split: int, programs: int, steps: int, device, per_sm: int = 2) -> int:
    """Split factor for a reduction of ``steps`` tiles over ``programs`` other programs.

    ``split > 0`` is taken as given (capped at ``steps``); 0 picks the smallest split
    that gives about ``per_sm`` programs per multiprocessor (1 on the CPU interpreter).
    """
    if split <= 0:
        split = -(-per_sm * num_sms(device) // max(programs, 1))
    return max(1, min(split, steps))


def triton_next_pow2(n: int) -> int:
    """Smallest power of two >= n (>= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())
