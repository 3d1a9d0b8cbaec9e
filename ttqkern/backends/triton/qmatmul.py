"""Host side of ``qmatmul``: pick the kernel for the token count, lay out the workspace, launch.

- T = 1, fp16 / bf16: `prologue` (FMA layout) + `gemv._gemv_kernel` -- 2 launches.
- 2 <= T <= DECODE_MAX_T, prefill below ``DEQUANT_MIN_T`` tokens, and fp32
  activations at any T below it: `prologue` (dot layout) + `qdot._qdot_kernel` --
  2 launches (fp32 dequantizes each tile before the dot, docs/numerics.md Q2).
- prefill from ``DEQUANT_MIN_T`` tokens: `dequant._dequant_kernel` + one
  ``torch.nn.functional.linear`` (cuBLAS) -- 2 launches.

Per weight (`prepare`, once per requantization through `Backend.prepare`; per call
otherwise): the word planes (`words.word_plan`) and the groups' zero codes and their
values (`centres`: every kernel computes ``s * (u - c) + m0``, docs/numerics.md Q1).
Buffer assumptions are asserted here, in one place (`_check_prepared`): every kernel
index is then in range by construction (rows and tokens clamped, chunk lanes
masked, the prologue's buffers padded to whole steps).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

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
from .unpack import MAGICS, pair_codes_ok, pair_offset

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


@dataclass(frozen=True)
class Prepared:
    """What the kernels read of a weight: word planes, scales, zero codes (4 per int32), their values."""

    plan: words.WordPlan
    scales: torch.Tensor  # fp32 [N, G]
    cq: torch.Tensor  # int32 [N, G4]: byte g % 4 of word g // 4 is group g's zero code (symmetric: unused)
    m0: torch.Tensor  # fp32 [N, G]: s * c + m, rounded once (symmetric: unused)
    G4: int


def centres(pw: PackedWeight) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(cq, m0, G4)``: `PackedWeight.centred` packed for the kernels (`forms.centre`)."""
    N, G = pw.N, pw.num_groups
    G4 = triton.cdiv(G, 4)
    if pw.sym:  # c = 2^(b-1), m0 = 0: nothing to read
        return pw.scales, pw.scales, G4
    c, m0 = pw.centred()
    cq = torch.zeros(N, 4 * G4, dtype=torch.uint8, device=c.device)
    cq[:, :G] = c.to(torch.uint8)  # zero codes are in [0, 2^b - 1]
    return cq.view(torch.int32), m0.contiguous(), G4


def prepare(pw: PackedWeight) -> Prepared:
    """`Prepared` of ``pw`` (the planes a view, or for odd group sizes a padded copy), checked."""
    plan = words.word_plan(pw)
    cq, m0, G4 = centres(pw)
    prep = Prepared(plan, pw.scales.contiguous(), cq, m0, G4)
    _check_prepared(prep, pw)
    return prep


def _check_prepared(prep: Prepared, pw: PackedWeight) -> None:
    """The buffer facts every kernel relies on (checked once, before any launch)."""
    plan, N, G = prep.plan, pw.N, pw.num_groups
    assert plan.n_chunks == G * plan.chunks_per_group and plan.group_padded % plan.CC == 0
    for t, w in zip(plan.planes, plan.words_per_chunk, strict=True):
        assert t.is_contiguous() and t.dtype == torch.int32 and tuple(t.shape) == (N, plan.n_chunks * w)
    assert prep.scales.is_contiguous() and tuple(prep.scales.shape) == (N, G)
    if not pw.sym:
        assert prep.cq.dtype == torch.int32 and tuple(prep.cq.shape) == (N, prep.G4) and prep.G4 * 4 >= G
        assert prep.m0.is_contiguous() and prep.m0.dtype == torch.float32 and tuple(prep.m0.shape) == (N, G)


def _dot_chunk(plan: words.WordPlan, cap: int) -> tuple[int, int, int]:
    """``(CCD, chunks per group, chunks per row)`` of the tensor-core kernels: the largest power of
    two dividing the stored group length, between the word chunk and ``cap`` codes."""
    gp = plan.group_padded
    ccd = max(plan.CC, min(gp & -gp, cap))
    return ccd, gp // ccd, plan.n_chunks * plan.CC // ccd


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None,
    A: torch.Tensor | None,
    B: torch.Tensor | None,
    bias: torch.Tensor | None,
    interpret: bool,
    prep: Prepared | None = None,
) -> torch.Tensor:
    """``y = (x / D) Wq'^T + (x A^T) B^T + bias``: x ``[T, K]`` -> ``[T, N]`` in x.dtype.

    Inputs are contiguous (validated by `ttqkern.ops`); D fp32 ``[K]``, A ``[r, K]``,
    B ``[N, r]``, bias ``[N]`` or None; every dimension >= 1.  ``prep``: `prepare` (pw),
    when the caller made it once for many calls.
    """
    T, K = x.shape
    if prep is None:
        prep = prepare(pw)
    shape = dict(bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=K)
    fp32 = x.dtype == torch.float32
    if T == 1 and not fp32:
        cfg = config.params("decode1", x.device, interpret, **shape)
        return _decode1(x, pw, prep, D, A, B, bias, interpret, cfg)
    if T <= config.DECODE_MAX_T:
        cfg = config.params("decode", x.device, interpret, **shape)
        return _qdot(x, pw, prep, D, A, B, bias, interpret, cfg)
    cfg = config.params("prefill", x.device, interpret, **shape)
    if T >= cfg["DEQUANT_MIN_T"]:
        dcfg = config.params("dequant", x.device, interpret, **shape)
        return _dequant_linear(x, pw, prep, D, A, B, bias, dcfg)
    return _qdot(x, pw, prep, D, A, B, bias, interpret, cfg)


def _decode1(x, pw, prep, D, A, B, bias, interpret, cfg):
    """One token: FMA-layout prologue + `_gemv_kernel`."""
    K, N, dev = x.shape[1], pw.N, x.device
    plan = prep.plan
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
    mode = int(pw.form)  # forms.MODE_* == ttqkern.quant.Form
    y = x.new_empty(1, N)
    nw = cfg["num_warps"]
    rows = max(1, min(cfg["ROWS"], config.triton_next_pow2(triton.cdiv(N, nw))))
    _gemv_kernel[(triton.cdiv(N, rows * nw),)](
        magic_buffer(dev), plan.planes[0], plan.planes[-1], prep.scales, prep.cq, prep.m0, xp0, xp1, S, xa,
        B if B is not None else ws, bias if bias is not None else ws, y,
        N, pw.num_groups, prep.G4, nch, R, P,
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


def _qdot(x, pw, prep, D, A, B, bias, interpret, cfg):
    """2 or more tokens (and fp32 activations): dot-layout prologue + `_qdot_kernel`."""
    T, K = x.shape
    plan = prep.plan
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
    mode = int(pw.form)
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
        magic_buffer(dev), plan.planes[0], plan.planes[-1], prep.scales, prep.cq, prep.m0, xt, S, xa,
        B if B is not None else ws, bias if bias is not None else ws, y, part, sem,
        T, N, pw.num_groups, prep.G4, nch, nchp, R, P, per,
        BITS=pw.bits, MODE=mode, B0=plan.bits[0], B1=plan.bits[1] if two else 0, WPC0=wpc[0],
        WPC1=wpc[1] if two else 1, CPG=cpg, CCD=ccd, HAS_LR=R > 0, HAS_BIAS=bias is not None, DOT_DT=dot_dt,
        IEEE=ieee, PAIR=pair, MAG16=2 if x.dtype == torch.bfloat16 else 1,
        OFF=pair_offset(str(x.dtype).split(".")[-1]), SWAP=cfg["SWAP"],
        # fp32 dequantizes every tile before the dot: no partial sum of x~ * code can overflow (numerics Q2)
        DEQ_TILE=bool(cfg.get("DEQ_TILE", 0)) or ieee, SPLIT=split,
        GROUP_T=cfg.get("GROUP_T", 1), BLOCK_T=BT, BLOCK_N=BN, BLOCK_R=max(BR, 1),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return y


def _dequant_linear(x, pw, prep, D, A, B, bias, cfg):
    """Many tokens: ``W_eff = Wq' / D + B A`` in x's dtype, then ``F.linear(x, W_eff, bias)`` (cuBLAS)."""
    K = x.shape[1]
    N, dev = pw.N, x.device
    R = 0 if A is None else A.shape[0]
    plan = prep.plan
    ccd, cpg, nch = _dot_chunk(plan, cfg["CHUNK"])
    mode = int(pw.form)
    two = pw.bits == 3
    wpc = [ccd * b // 32 for b in plan.bits]
    BN = max(config.DOT_MIN, min(cfg["BLOCK_N"], config.triton_next_pow2(N)))
    W = torch.empty(N, K, dtype=x.dtype, device=dev)
    _dequant_kernel[(triton.cdiv(N, BN), nch)](
        magic_buffer(dev), plan.planes[0], plan.planes[-1], prep.scales, prep.cq, prep.m0,
        D if D is not None else prep.scales, A if A is not None else prep.scales,
        B if B is not None else prep.scales, W,
        N, K, pw.num_groups, prep.G4, plan.group_size, nch, R,
        BITS=pw.bits, MODE=mode, B0=plan.bits[0], B1=plan.bits[1] if two else 0, WPC0=wpc[0],
        WPC1=wpc[1] if two else 1, CPG=cpg, CCD=ccd, HAS_D=D is not None, HAS_LR=R > 0, BLOCK_N=BN,
        BLOCK_R=max(config.DOT_MIN, config.triton_next_pow2(max(R, 1))), num_warps=cfg["num_warps"],
    )  # fmt: skip
    return torch.nn.functional.linear(x, W, None if bias is None else bias.to(x.dtype))
