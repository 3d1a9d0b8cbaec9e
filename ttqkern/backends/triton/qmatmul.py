"""Host side of ``qmatmul``: pick the kernel for the token count, lay out the workspace, launch.

- T = 1: `prologue` (FMA layout) + `gemv._gemv_kernel` -- 2 launches.
- 2 <= T <= DECODE_MAX_T, and prefill below ``DEQUANT_MIN_T`` tokens:
  `prologue` (dot layout) + `qdot._qdot_kernel` -- 2 launches.
- prefill from ``DEQUANT_MIN_T`` tokens: `dequant._dequant_kernel` + one
  ``torch.nn.functional.linear`` (cuBLAS) -- 2 launches.

Buffer assumptions are asserted here, in one place (`_check_plan`): every kernel
index is then in range by construction (rows and tokens clamped, chunk lanes
masked, the prologue's buffers padded to whole steps).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ...format import PackedWeight
from .. import words
from . import config
from .dequant import _dequant_kernel
from .gemv import CHUNK_LANES, _gemv_kernel
from .prologue import _prologue_kernel
from .qdot import _qdot_kernel
from .unpack import MAGICS, pair_codes_ok

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@functools.cache
def magic_buffer(device: torch.device) -> torch.Tensor:
    """int32 ``[4]``: the unpack magics (`unpack.MAGICS`) for kernels to load; one per device, made once."""
    return torch.tensor(MAGICS, dtype=torch.int32, device=device)


_semaphores: dict = {}


def semaphores(device: torch.device, n: int) -> torch.Tensor:
    """int32 ``[>= n]`` zeros: the split-K tile counters, one buffer per device and stream.

    Every call leaves them at zero again (the last program of a tile resets its
    counter), so they are zeroed once, when first needed or grown -- never per
    call.  Per stream, because two calls running at once must not share counters.
    """
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    buf = _semaphores.get(key)
    if buf is None or buf.numel() < n:
        buf = _semaphores[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return buf


def _check_plan(plan: words.WordPlan, pw: PackedWeight) -> None:
    """The buffer facts every kernel relies on (checked once, before any launch)."""
    N, G = pw.N, pw.num_groups
    assert plan.n_chunks == G * plan.chunks_per_group and plan.group_padded % plan.CC == 0
    for t, w in zip(plan.planes, plan.words_per_chunk, strict=True):
        assert t.is_contiguous() and t.dtype == torch.int32 and tuple(t.shape) == (N, plan.n_chunks * w)
    assert pw.scales.is_contiguous() and tuple(pw.scales.shape) == (N, G)


def prepare_plan(pw: PackedWeight) -> words.WordPlan:
    """``pw`` as the word planes the kernels read (a view, or for odd group sizes a padded copy), checked."""
    plan = words.word_plan(pw)
    _check_plan(plan, pw)
    return plan


def _dot_chunk(plan: words.WordPlan, cap: int) -> tuple[int, int, int]:
    """``(CCD, chunks per group, chunks per row)`` of the tensor-core kernels: the largest power of
    two dividing the stored group length, between the word chunk and ``cap`` codes."""
    gp = plan.group_padded
    ccd = max(plan.CC, min(gp & -gp, cap))
    return ccd, gp // ccd, plan.n_chunks * plan.CC // ccd


def _weights(pw: PackedWeight):
    zp = pw.mins if pw.mins is not None else pw.zeros if pw.zeros is not None else pw.scales
    return pw.scales.contiguous(), zp.contiguous(), int(pw.form)  # forms.MODE_* == ttqkern.quant.Form


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None,
    A: torch.Tensor | None,
    B: torch.Tensor | None,
    bias: torch.Tensor | None,
    interpret: bool,
    plan: words.WordPlan | None = None,
) -> torch.Tensor:
    """``y = (x / D) Wq'^T + (x A^T) B^T + bias``: x ``[T, K]`` -> ``[T, N]`` in x.dtype.

    Inputs are contiguous (validated by `ttqkern.ops`); D fp32 ``[K]``, A ``[r, K]``,
    B ``[N, r]``, bias ``[N]`` or None; every dimension >= 1.  ``plan``: ``pw``'s
    `words.word_plan`, when the caller made it once for many calls (`prepare_plan`).
    """
    T, K = x.shape
    if plan is None:
        plan = prepare_plan(pw)
    shape = dict(bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=K)
    if T == 1:
        return _decode1(x, pw, plan, D, A, B, bias, interpret, config.params("decode1", x.device, interpret, **shape))
    if T <= config.DECODE_MAX_T:
        return _qdot(x, pw, plan, D, A, B, bias, interpret, config.params("decode", x.device, interpret, **shape))
    cfg = config.params("prefill", x.device, interpret, **shape)
    if T >= cfg["DEQUANT_MIN_T"]:
        dcfg = config.params("dequant", x.device, interpret, **shape)
        return _dequant_linear(x, pw, plan, D, A, B, bias, dcfg)
    return _qdot(x, pw, plan, D, A, B, bias, interpret, cfg)


def _decode1(x, pw, plan, D, A, B, bias, interpret, cfg):
    """One token: FMA-layout prologue + `_gemv_kernel`."""
    K, N, dev = x.shape[1], pw.N, x.device
    R = 0 if A is None else A.shape[0]
    CS = CHUNK_LANES
    nch = plan.n_chunks
    nchp = triton.cdiv(nch, CS) * CS
    P = nchp // CS
    two = pw.bits == 3
    sizes = [nchp * plan.CC] * (2 if two else 1) + [nchp, P * R]  # x~ per plane, S, xa partials
    ws = torch.empty(sum(sizes), dtype=torch.float32, device=dev)
    parts = list(torch.split(ws, sizes))
    xp0, xp1 = parts[0], parts[1] if two else parts[0]
    S, xa = parts[-2], parts[-1]
    wch0 = plan.words_per_chunk[0]
    wch1 = plan.words_per_chunk[1] if two else 1
    B1 = plan.bits[1] if two else 0
    BR = config.triton_next_pow2(R) if R else 0
    _prologue_kernel[(P, 1)](
        x, D if D is not None else ws, A if A is not None else ws, xp0, xp1, S, xa,
        1, K, plan.group_size, nch, nchp, R,
        HAS_D=D is not None, DOT=False, B0=plan.bits[0], B1=B1, WCH0=wch0, WCH1=wch1, CPG=plan.chunks_per_group,
        CC=plan.CC, CPP=CS, X_DT=tl.float32, PAIR_CPW=0, BLOCK_R=BR, BLOCK_KA=64, num_warps=4,
    )  # fmt: skip
    scales, zp, mode = _weights(pw)
    y = x.new_empty(1, N)
    nw = cfg["num_warps"]
    rows = max(1, min(cfg["ROWS"], config.triton_next_pow2(triton.cdiv(N, nw))))
    _gemv_kernel[(triton.cdiv(N, rows * nw),)](
        magic_buffer(dev), plan.planes[0], plan.planes[-1], scales, zp, xp0, xp1, S, xa,
        B if B is not None else ws, bias if bias is not None else ws, y,
        N, pw.num_groups, nch, R, P,
        BITS=pw.bits, MODE=mode, B0=plan.bits[0], B1=B1, WCH0=wch0, WCH1=wch1, CPG=plan.chunks_per_group,
        HAS_LR=R > 0, HAS_BIAS=bias is not None, ROWS=rows, NW=nw, BLOCK_R=max(BR, 1), PREFETCH=cfg["PREFETCH"],
        num_warps=nw, num_stages=1,
    )  # fmt: skip
    return y


def _dot_dtypes(x: torch.Tensor, interpret: bool):
    """``(storage dtype of x~, tl.dot operand dtype, ieee)`` for the tensor-core kernels."""
    xdt = _TL_DTYPES[x.dtype]
    if x.dtype == torch.float32:
        return xdt, tl.float32, True
    # Triton 3.9's interpreter multiplies bf16 dot operands as raw uint16: multiply the rounded values in fp32 there
    return xdt, (tl.float32 if interpret and x.dtype == torch.bfloat16 else xdt), False


def _qdot(x, pw, plan, D, A, B, bias, interpret, cfg):
    """2 or more tokens: dot-layout prologue + `_qdot_kernel`."""
    T, K = x.shape
    N, dev = pw.N, x.device
    R = 0 if A is None else A.shape[0]
    ccd, cpg, nch = _dot_chunk(plan, cfg["CHUNK"])
    cpp = max(1, 1024 // ccd)  # chunks per prologue program
    nchp = triton.cdiv(nch, cpp) * cpp
    P = nchp // cpp
    xdt, dot_dt, ieee = _dot_dtypes(x, interpret)
    pair = dot_dt in (tl.float16, tl.bfloat16) and pair_codes_ok(pw.bits, str(x.dtype).split(".")[-1])
    xt = torch.empty(T, nchp * ccd, dtype=x.dtype, device=dev)
    ws = torch.empty(T * nchp + P * T * R, dtype=torch.float32, device=dev)
    S, xa = torch.split(ws, [T * nchp, P * T * R])
    BR = max(config.DOT_MIN, config.triton_next_pow2(R)) if R else 0
    _prologue_kernel[(P, T)](
        x, D if D is not None else ws, A if A is not None else ws, xt, xt, S, xa,
        T, K, plan.group_size, nch, nchp, R,
        HAS_D=D is not None, DOT=True, B0=plan.bits[0], B1=0, WCH0=1, WCH1=1, CPG=cpg, CC=ccd, CPP=cpp, X_DT=xdt,
        PAIR_CPW=32 // pw.bits if pair else 0, BLOCK_R=BR, BLOCK_KA=64, num_warps=4,
    )  # fmt: skip
    scales, zp, mode = _weights(pw)
    two = pw.bits == 3
    wpc = [ccd * b // 32 for b in plan.bits]
    BT = max(config.DOT_MIN, min(cfg.get("BLOCK_T", 16), config.triton_next_pow2(T)))
    BN = max(config.DOT_MIN, min(cfg["BLOCK_N"], config.triton_next_pow2(N)))
    tiles = triton.cdiv(T, BT) * triton.cdiv(N, BN)
    # split the chunks only when the tiles alone leave SMs idle (decode of narrow layers)
    split = config.auto_split(cfg.get("SPLIT_K", 1), tiles, max(1, nch // 4), dev, per_sm=1)
    per = triton.cdiv(nch, split)
    split = triton.cdiv(nch, per)
    y = x.new_empty(T, N)
    part = torch.empty(split, T, N, dtype=torch.float32, device=dev) if split > 1 else ws
    sem = semaphores(dev, tiles) if split > 1 else magic_buffer(dev)
    _qdot_kernel[(tiles, split)](
        magic_buffer(dev), plan.planes[0], plan.planes[-1], scales, zp, xt, S, xa,
        B if B is not None else ws, bias if bias is not None else ws, y, part, sem,
        T, N, pw.num_groups, nch, nchp, R, P, per,
        BITS=pw.bits, MODE=mode, B0=plan.bits[0], B1=plan.bits[1] if two else 0, WPC0=wpc[0],
        WPC1=wpc[1] if two else 1, CPG=cpg, CCD=ccd, HAS_LR=R > 0, HAS_BIAS=bias is not None, DOT_DT=dot_dt,
        IEEE=ieee, PAIR=pair, MAG16=2 if x.dtype == torch.bfloat16 else 1, SWAP=cfg["SWAP"],
        DEQ_TILE=bool(cfg.get("DEQ_TILE", 0)) and not ieee, SPLIT=split,
        GROUP_T=cfg.get("GROUP_T", 1), BLOCK_T=BT, BLOCK_N=BN, BLOCK_R=max(BR, 1),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y


def _dequant_linear(x, pw, plan, D, A, B, bias, cfg):
    """Many tokens: ``W_eff = Wq' / D + B A`` in x's dtype, then ``F.linear(x, W_eff, bias)`` (cuBLAS)."""
    K = x.shape[1]
    N, dev = pw.N, x.device
    R = 0 if A is None else A.shape[0]
    ccd, cpg, nch = _dot_chunk(plan, cfg["CHUNK"])
    scales, zp, mode = _weights(pw)
    two = pw.bits == 3
    wpc = [ccd * b // 32 for b in plan.bits]
    BN = max(config.DOT_MIN, min(cfg["BLOCK_N"], config.triton_next_pow2(N)))
    W = torch.empty(N, K, dtype=x.dtype, device=dev)
    _dequant_kernel[(triton.cdiv(N, BN), nch)](
        magic_buffer(dev), plan.planes[0], plan.planes[-1], scales, zp, D if D is not None else scales,
        A if A is not None else scales, B if B is not None else scales, W,
        N, K, pw.num_groups, plan.group_size, nch, R,
        BITS=pw.bits, MODE=mode, B0=plan.bits[0], B1=plan.bits[1] if two else 0, WPC0=wpc[0],
        WPC1=wpc[1] if two else 1, CPG=cpg, CCD=ccd, HAS_D=D is not None, HAS_LR=R > 0, BLOCK_N=BN,
        BLOCK_R=max(config.DOT_MIN, config.triton_next_pow2(max(R, 1))), num_warps=cfg["num_warps"],
    )  # fmt: skip
    return torch.nn.functional.linear(x, W, None if bias is None else bias.to(x.dtype))
