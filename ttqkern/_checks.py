"""Input validation shared by every public entry point (docs/spec.md §5).

Argument values (bits, group size, alpha, ...) are checked by the `ttqkern.quant`
dataclasses; this module checks tensors: types, ranks, shapes, devices, and that a
`PackedWeight` agrees with its own fields.  Backends receive only inputs that
passed these checks, so they stay free of argument handling.  Every error names
the argument and what is allowed.
"""

from __future__ import annotations

import math

import torch

from .format import PLANE_FIELDS, PackedWeight, get_layout
from .quant import QuantFormat

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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


def _values_checkable(t: torch.Tensor) -> bool:
    """Can a value check run on ``t`` now?  Not on meta/fake tensors, under torch.compile
    tracing, or while a CUDA graph is being captured (a check reads values: a host sync)."""
    if t.device.type == "meta" or torch.compiler.is_compiling():
        return False
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(t, FakeTensor):
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def check_D(D, K: int):
    """D: fp32/fp16/bf16 ``[K]`` with no entry <= 0 or +inf (nan is allowed: it comes from
    nan in x and propagates to nan outputs, never to a finite answer)."""
    if D is None:
        return
    check_tensor(D, "D", dims=1)
    if D.shape[0] != K:
        raise ValueError(f"D must have shape [K] = [{K}], got {list(D.shape)}")
    if D.numel() and _values_checkable(D) and bool(((D <= 0) | (D == math.inf)).any()):
        bad = D[(D <= 0) | (D == math.inf)]
        raise ValueError(
            f"D must be > 0 and finite (x / D is the TTQ prologue), got {bad.numel()} entries like {bad[0].item()}"
        )


def check_finite_weight(W, why: str):
    """W without nan/inf, where ``why`` explains which stage needs it."""
    if W.numel() and _values_checkable(W) and not bool(torch.isfinite(W).all()):
        raise ValueError(f"W contains nan or inf: {why}")


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


def _is_dim(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_packed(pw, K: int | None = None) -> None:
    """A `PackedWeight` whose tensors agree with its own fields (docs/spec.md §5).

    Checks the fields (bits, group size > 0, form, shape ``(N, K)``, a registered
    layout), then every tensor against what the layout says a weight of these
    parameters holds: presence, shape, dtype, one device.  A kernel that trusted an
    inconsistent weight would read or write out of bounds, so this runs before any
    kernel sees ``pw``.  ``K``: the activations' last dim, which must match.
    """
    if not isinstance(pw, PackedWeight):
        raise TypeError(f"pw must be a ttqkern.PackedWeight, got {type(pw).__name__}")
    shape = pw.shape
    if not isinstance(shape, tuple) or len(shape) != 2 or not all(_is_dim(v) for v in shape):
        raise ValueError(f"pw.shape must be a tuple (N, K) of two ints >= 0, got {shape!r}")
    N, Kw = shape
    if K is not None and Kw != K:
        raise ValueError(f"x's last dim ({K}) must equal the packed weight's K ({Kw})")
    if not (isinstance(pw.group_size, int) and not isinstance(pw.group_size, bool) and pw.group_size > 0):
        raise ValueError(f"pw.group_size must be a resolved group length (an int > 0), got {pw.group_size!r}")
    try:
        fmt = QuantFormat(pw.bits, pw.group_size, pw.sym, pw.zero)
    except (TypeError, ValueError) as e:
        raise type(e)(f"pw: {e}") from None
    layout = get_layout(pw.layout)
    expected = layout.planes(N, Kw, fmt)
    what = f"a {pw.layout} weight of shape {tuple(shape)}, bits={pw.bits}, group_size={pw.group_size}, form {fmt.form.name.lower()}"
    devices = {}
    for field in PLANE_FIELDS:
        t = getattr(pw, field)
        if field not in expected:
            if t is not None:
                raise ValueError(f"pw.{field} must be None for {what}")
            continue
        want_shape, want_dtype = expected[field]
        if t is None:
            raise ValueError(f"pw.{field} is missing: {what} holds a {want_dtype} tensor of shape {list(want_shape)}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"pw.{field} must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:  # sparse / mkldnn tensors have no dense rows to index
            raise TypeError(f"pw.{field} must be a dense (strided) tensor, got layout {t.layout}")
        if t.dtype != want_dtype:
            raise TypeError(f"pw.{field} must be {want_dtype} for {what}, got {t.dtype}")
        if tuple(t.shape) != tuple(want_shape):
            raise ValueError(f"pw.{field} must have shape {list(want_shape)} for {what}, got {list(t.shape)}")
        devices[field] = t.device
    if len(set(devices.values())) > 1:
        where = ", ".join(f"pw.{f} on {d}" for f, d in devices.items())
        raise RuntimeError(f"the tensors of pw must be on one device, got {where}")
