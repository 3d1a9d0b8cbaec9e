"""Input validation shared by every public entry point (spec §5).

Backends receive only inputs that passed these checks, so they stay free of
argument handling.  Every error names the argument and what is allowed.
"""

from __future__ import annotations

import math
from numbers import Real

import torch

from .format import SUPPORTED_BITS, ZERO_MODES, PackedWeight

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def check_tensor(t, name: str, *, dims: int | None = None, min_dims: int | None = None):
    """A floating tensor of fp32/fp16/bf16 with the given rank."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    if min_dims is not None and t.dim() < min_dims:
        raise ValueError(f"{name} must have at least {min_dims} dim(s), got shape {tuple(t.shape)}")


def check_same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devs.values())) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise RuntimeError(f"all tensors must be on one device, got {where}")


def check_bits(bits):
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}")


def check_group_size(group_size, K: int | None = None):
    if not isinstance(group_size, int) or isinstance(group_size, bool):
        raise TypeError(f"group_size must be an int (> 0, or -1 for one group per row), got {group_size!r}")
    if group_size <= 0 and group_size != -1:
        raise ValueError(f"group_size must be > 0, or -1 for one group per row, got {group_size}")


def check_quant_args(bits, group_size, sym, zero, beta):
    check_bits(bits)
    check_group_size(group_size)
    if not isinstance(sym, bool):
        raise TypeError(f"sym must be a bool, got {sym!r}")
    if zero not in ZERO_MODES:
        raise ValueError(f"zero must be one of {list(ZERO_MODES)}, got {zero!r}")
    if sym and zero == "int":
        raise ValueError("zero='int' (integer zero-point) has no meaning with sym=True; use zero='float'")
    if not _is_number(beta) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta (range expansion) must be a finite number > 0, got {beta!r}")


def check_hparams(alpha, lam, p):
    """alpha in [0, 1], lam in [0, inf), p in (0, inf]."""
    if not _is_number(alpha) or not (0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    if not _is_number(lam) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if not _is_number(p) or math.isnan(p) or p <= 0:
        raise ValueError(f"p must be a number > 0 (inf allowed), got {p!r}")


def check_rank(r, N: int, K: int):
    if not isinstance(r, int) or isinstance(r, bool):
        raise TypeError(f"r must be an int in [0, min(N, K)] = [0, {min(N, K)}], got {r!r}")
    if not 0 <= r <= min(N, K):
        raise ValueError(f"r must be in [0, min(N, K)] = [0, {min(N, K)}] for W of shape [{N}, {K}], got {r}")


def check_x_W(x, W):
    check_tensor(x, "x", min_dims=1)
    check_tensor(W, "W", dims=2)
    check_same_device(x=x, W=W)
    if x.shape[-1] != W.shape[1]:
        raise ValueError(f"x's last dim ({x.shape[-1]}) must equal W's in-features K = W.shape[1] ({W.shape[1]})")


def check_D(D, K: int):
    if D is None:
        return
    check_tensor(D, "D", dims=1)
    if D.shape[0] != K:
        raise ValueError(f"D must have shape [K] = [{K}], got {list(D.shape)}")


def check_bias(bias, N: int):
    if bias is None:
        return
    check_tensor(bias, "bias", dims=1)
    if bias.shape[0] != N:
        raise ValueError(f"bias must have shape [N] = [{N}], got {list(bias.shape)}")


def check_lowrank(lowrank, N: int, K: int):
    if lowrank is None:
        return
    if not isinstance(lowrank, (tuple, list)) or len(lowrank) != 2:
        raise TypeError("lowrank must be a pair (A, B) with A [r, K] and B [N, r], or None")
    A, B = lowrank
    check_tensor(A, "lowrank A", dims=2)
    check_tensor(B, "lowrank B", dims=2)
    r = A.shape[0]
    if A.shape[1] != K or tuple(B.shape) != (N, r):
        raise ValueError(
            f"lowrank (A, B) must have shapes [r, K] = [r, {K}] and [N, r] = [{N}, r], "
            f"got {list(A.shape)} and {list(B.shape)}"
        )


def check_packed(pw, K: int):
    if not isinstance(pw, PackedWeight):
        raise TypeError(f"pw must be a ttqkern.PackedWeight, got {type(pw).__name__}")
    if pw.layout != "canonical":
        raise ValueError(f"pw.layout must be 'canonical', got {pw.layout!r}")
    if pw.K != K:
        raise ValueError(f"x's last dim ({K}) must equal the packed weight's K ({pw.K})")
