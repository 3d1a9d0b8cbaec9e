"""The TTQ op spec in plain torch: the oracle every backend is tested against.

Each function is one stage of docs/spec.md §2 and uses its letters:
x [T, K], W [N, K], D [K], s / mn / z [N, G], q [N, K], A [r, K], B [N, r].
Inputs are assumed validated (see `ttqkern.ops`); everything is computed in fp32,
except `qmatmul`, which after ``x / D`` is exact (fp64): docs/numerics.md.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from .format import PackedWeight, dequantize, num_groups, pack, resolve_group_size

# Above this many elements a randomized SVD is used for small r (spec stage 0).
FULL_SVD_MAX_ELEMENTS = 1 << 22
SVD_SEED = 0


def lowrank(W: torch.Tensor, r: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """Stage 0: ``W ≈ B A`` by truncated SVD, ``W_res = W - B A``.

    W: ``[N, K]`` float.  Returns A ``[r, K]``, B ``[N, r]`` and W_res ``[N, K]``, all in
    W's dtype (computed in fp32); ``(None, None, W)`` when r == 0.  Deterministic:
    full SVD for small matrices or large r, seeded `torch.svd_lowrank` otherwise.
    """
    if r == 0:
        return None, None, W
    W32 = W.to(torch.float32)
    if W.numel() <= FULL_SVD_MAX_ELEMENTS or 4 * r >= min(W.shape):
        U, S, Vh = torch.linalg.svd(W32, full_matrices=False)
        V = Vh.mT
    else:
        with torch.random.fork_rng(devices=[W.device] if W.is_cuda else []):
            torch.manual_seed(SVD_SEED)
            U, S, V = torch.svd_lowrank(W32, q=r + 16, niter=4)
    root_S = S[:r].sqrt()
    B = U[:, :r] * root_S
    A = root_S[:, None] * V[:, :r].mT
    W_res = W32 - B @ A
    return A.to(W.dtype).contiguous(), B.to(W.dtype).contiguous(), W_res.to(W.dtype)


def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float) -> torch.Tensor:
    """Stage 1: ``D_k = (c_k + lam * mean(c))^alpha`` with ``c_k = ||x[:, k]||_p^2``.

    x: ``[T, K]`` float.  Returns fp32 ``[K]``.  D = 1 for an all-zero x; the base is
    clamped to ``[tiny, max]`` of fp32 so D is never 0 or inf (nan in x stays nan).
    """
    return scale_from_norms(column_norms(x, p), lam, alpha)


def column_norms(x: torch.Tensor, p: float) -> torch.Tensor:
    """``n_k = ||x[:, k]||_p`` over the T tokens: fp32 ``[K]`` (docs/numerics.md, act_scale).

    Computed as ``a_k * ||x[:, k] / a_k||_p`` with ``a_k = max_t |x[t, k]|``: the powers
    ``|x / a|^p <= 1`` can neither overflow (``|x|^p`` does in fp32 for p = 100 and
    |x| > 2.4, for p = 2 and |x| > 1.8e19) nor vanish while the norm itself is
    representable.  A column holding inf has norm inf, one holding nan norm nan.
    """
    x = x.to(torch.float32)
    a = x.abs().amax(dim=0)
    if math.isinf(p):
        return a
    scale = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))  # inf / nan columns: unscaled
    return scale * torch.linalg.vector_norm(x / scale, ord=p, dim=0)


def scale_from_norms(n: torch.Tensor, lam: float, alpha: float) -> torch.Tensor:
    """``D = (c + lam * mean(c))^alpha`` from column norms n (fp32 ``[K]``), ``c = n^2``.

    Shared by stage 1 and static (calibrated) scaling, whose norms come from many batches.
    """
    c = n.to(torch.float32) ** 2
    mean_c = c.mean()
    if mean_c == 0:
        return torch.ones_like(c)
    fp32 = torch.finfo(torch.float32)
    base = (c + lam * mean_c).clamp(fp32.tiny, fp32.max)  # never 0 or inf
    return base.pow(alpha)


def quantize(
    W: torch.Tensor,
    D: torch.Tensor | None,
    bits: int,
    group_size: int,
    sym: bool = False,
    zero: str = "float",
    beta: float = 1.0,
) -> PackedWeight:
    """Stages 2-3: scale the columns by D, then quantize groups of g along K.

    W: ``[N, K]`` float, D: fp32 ``[K]`` or None (= 1).  Returns the canonical
    `PackedWeight` (fp32 scales; fp32 mins or int32 zeros).
    """
    N, K = W.shape
    g = resolve_group_size(K, group_size)
    G = num_groups(K, g)
    Wp = W.to(torch.float32) if D is None else W.to(torch.float32) * D[None, :]  # W' = W_res * D

    # The ragged last group is padded by repeating its last value: min, max and
    # finiteness of the group are unchanged, and those codes are dropped below.
    w = F.pad(Wp[None], (0, G * g - K), mode="replicate")[0].view(N, G, g)
    finite = torch.isfinite(w).all(dim=-1)
    levels = (1 << bits) - 1

    if sym:
        qpos = (1 << (bits - 1)) - 1
        amax = w.abs().amax(dim=-1) * beta
        s = torch.where(amax > 0, amax / qpos, torch.ones_like(amax))
        q = torch.round(w / s[..., None]).clamp(-qpos, qpos)
        extra = {}
    else:
        mn, mx = w.amin(dim=-1), w.amax(dim=-1)
        centre, half = (mx + mn) / 2, (mx - mn) / 2 * beta  # range expansion about the centre
        mn, mx = centre - half, centre + half
        s = (mx - mn) / levels
        if zero == "float":
            s = torch.where(s > 0, s, torch.ones_like(s))  # constant group: q = 0, w = mn exactly
            q = torch.round((w - mn[..., None]) / s[..., None]).clamp(0, levels)
            extra = {"mins": mn}
        else:
            # A constant group takes s = |mn| so that z = -sign(mn), q = 0 rebuilds it exactly.
            s = torch.where(s > 0, s, torch.where(mn != 0, mn.abs(), torch.ones_like(s)))
            z = torch.round(-mn / s)
            q = (torch.round(w / s[..., None]) + z[..., None]).clamp(0, levels)
            extra = {"zeros": torch.nan_to_num(z).to(torch.int32)}

    # Non-finite groups get a nan scale so that they can never yield a finite output.
    s = torch.where(finite, s, torch.full_like(s, float("nan")))
    q = torch.nan_to_num(q).view(N, G * g)[:, :K].to(torch.int32)
    return pack(q, bits=bits, group_size=g, scales=s, sym=sym, **extra)


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + b``.

    x: ``[T, K]`` fp32/fp16/bf16, pw: `PackedWeight` of shape ``[N, K]``, D fp32 ``[K]``
    or None, A ``[r, K]`` / B ``[N, r]`` or None, bias ``[N]`` or None.
    Returns ``[T, N]`` in x's dtype.  Written as the spec's per-group sums (codes
    times ``x~`` plus offsets times ``X~``) so it checks that decomposition, not just
    ``x @ dequantize(pw).T``.  The oracle: ``x~ = x / D`` is rounded to fp32 as every
    backend does, everything after it is computed in fp64 (exact products of codes,
    scales and offsets; the per-group cancellation a kernel must avoid costs fp64
    nothing), and only the result is rounded (docs/numerics.md).  CPU/CUDA only (fp64).
    """
    pw = pw.canonical()  # any layout: the reference reads the canonical one
    T, K = x.shape
    pw = pw.canonical()  # any layout: the math reads the canonical fields
    N, g, G = pw.N, pw.group_size, pw.num_groups
    f64 = torch.float64
    xs = x.to(torch.float32) if D is None else x.to(torch.float32) / D  # x~ = x / D, fp32 as in every kernel
    xg = F.pad(xs.to(f64), (0, G * g - K)).view(T, G, g)
    u = F.pad(pw.codes().to(f64), (0, G * g - K)).view(N, G, g)
    pw64 = replace(pw.canonical(), scales=pw.canonical().scales.to(f64))
    y = torch.einsum("tjk,njk,nj->tn", xg, u, pw64.scales)  # sum_j s * (sum_k x~ q)
    y = y + xg.sum(dim=-1) @ _offsets64(pw64).mT  # + sum_j mn * X~
    if A is not None:
        y = y + (x.to(f64) @ A.to(f64).mT) @ B.to(f64).mT
    if bias is not None:
        y = y + bias.to(f64)
    return y.to(x.dtype)


def _offsets64(pw: PackedWeight) -> torch.Tensor:
    """`PackedWeight.offsets` in fp64 (``pw.scales`` already fp64)."""
    if pw.sym:
        return -pw.scales * float(1 << (pw.bits - 1))
    if pw.zero == "int":
        return -pw.scales * pw.zeros.to(torch.float64)
    return pw.mins.to(torch.float64)


def dequantized_weight(pw: PackedWeight, D: torch.Tensor | None = None) -> torch.Tensor:
    """``Wq' / D``: the effective fp32 ``[N, K]`` weight that `qmatmul` applies."""
    w = dequantize(pw)
    return w if D is None else w / D[None, :]
