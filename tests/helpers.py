"""Comparison helpers with the spec §6 tolerances, shared by every backend's tests."""

from __future__ import annotations

import torch

from ttqkern import ops
from ttqkern.backends import Tolerances

SPEC = Tolerances()  # docs/spec.md §6

QUANT_FORMS = [  # (sym, zero)
    (False, "float"),
    (False, "int"),
    (True, "float"),
]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_codes_match(q: torch.Tensor, q_ref: torch.Tensor, tol: Tolerances = SPEC) -> None:
    """Identical on >= 99.9 % of entries (``tol.codes_mismatch``), off by at most 1 elsewhere (rounding ties)."""
    assert q.shape == q_ref.shape
    diff = (q.to(torch.int32) - q_ref.to(torch.int32)).abs()
    assert int(diff.max()) <= 1 if diff.numel() else True, f"codes differ by {int(diff.max())}"
    frac = float((diff != 0).float().mean()) if diff.numel() else 0.0
    assert frac <= tol.codes_mismatch, f"{frac:.4%} of codes differ (allowed {tol.codes_mismatch:.2%})"


def assert_packed_match(pw, pw_ref, tol: Tolerances = SPEC) -> None:
    """Codes per `assert_codes_match`; scales and offsets to rtol ``tol.scales_rtol`` (fp32), in the canonical layout."""
    pw, pw_ref = pw.canonical(), pw_ref.canonical()
    assert (pw.bits, pw.group_size, pw.shape, pw.sym, pw.zero) == (
        pw_ref.bits, pw_ref.group_size, pw_ref.shape, pw_ref.sym, pw_ref.zero,
    )  # fmt: skip
    assert_codes_match(ops.unpack(pw), ops.unpack(pw_ref), tol)
    torch.testing.assert_close(pw.scales, pw_ref.scales, rtol=tol.scales_rtol, atol=1e-12, equal_nan=True)
    if pw_ref.zero == "int" and not pw_ref.sym:
        assert (pw.zeros - pw_ref.zeros).abs().max() <= 1 if pw.zeros.numel() else True
    elif not pw_ref.sym:
        torch.testing.assert_close(pw.mins, pw_ref.mins, rtol=tol.scales_rtol, atol=1e-6, equal_nan=True)


def assert_output_close(y: torch.Tensor, y_ref: torch.Tensor, tolerances: Tolerances = SPEC) -> None:
    """Max abs error within ``tolerances.output[dtype]`` (spec: fp32 1e-4, fp16/bf16 1e-2) times max(|y_ref|, 1)."""
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    scale = float(y_ref.float().abs().max().clamp_min(1.0)) if y_ref.numel() else 1.0
    tol = tolerances.output_tol(y.dtype)
    err = float((y.float() - y_ref.float()).abs().max()) if y.numel() else 0.0
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol} * max|y| ({scale:.3g})"


def random_case(T: int, N: int, K: int, r: int = 0, bias: bool = False, dtype=torch.float32, device="cpu"):
    """x ``[T, K]`` with outlier columns (like LLM activations), W ``[N, K]``, lowrank, bias."""
    x = torch.randn(T, K) * (1 + 5 * (torch.rand(K) < 0.05))
    W = torch.randn(N, K) / K**0.5
    lowrank = None
    if r:
        A, B, W = ops.lowrank(W, r)
        lowrank = (A.to(device), B.to(device))
    b = torch.randn(N).to(device, dtype) if bias else None
    return x.to(device, dtype), W.to(device), lowrank, b
