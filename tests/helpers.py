"""Comparison helpers with the spec §6 tolerances, shared by every backend's tests."""

from __future__ import annotations

import torch

from ttqkern import ops

QUANT_FORMS = [  # (sym, zero)
    (False, "float"),
    (False, "int"),
    (True, "float"),
]


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def assert_codes_match(q: torch.Tensor, q_ref: torch.Tensor) -> None:
    """Identical on >= 99.9 % of entries, off by at most 1 elsewhere (rounding ties)."""
    assert q.shape == q_ref.shape
    diff = (q.to(torch.int32) - q_ref.to(torch.int32)).abs()
    assert int(diff.max()) <= 1 if diff.numel() else True, f"codes differ by {int(diff.max())}"
    frac = float((diff != 0).float().mean()) if diff.numel() else 0.0
    assert frac <= 1e-3, f"{frac:.4%} of codes differ (allowed 0.1%)"


def assert_packed_match(pw, pw_ref) -> None:
    """Codes per `assert_codes_match`; scales and offsets to rtol 1e-5 (fp32)."""
    assert (pw.bits, pw.group_size, pw.shape, pw.sym, pw.zero) == (
        pw_ref.bits, pw_ref.group_size, pw_ref.shape, pw_ref.sym, pw_ref.zero,
    )  # fmt: skip
    assert_codes_match(ops.unpack(pw), ops.unpack(pw_ref))
    torch.testing.assert_close(pw.scales, pw_ref.scales, rtol=1e-5, atol=1e-12, equal_nan=True)
    if pw_ref.zero == "int" and not pw_ref.sym:
        assert (pw.zeros - pw_ref.zeros).abs().max() <= 1 if pw.zeros.numel() else True
    elif not pw_ref.sym:
        torch.testing.assert_close(pw.mins, pw_ref.mins, rtol=1e-5, atol=1e-6, equal_nan=True)


def assert_output_close(y: torch.Tensor, y_ref: torch.Tensor) -> None:
    """fp32: rtol/atol ~1e-4 (scaled by |y|); fp16/bf16: 1e-2 relative to |y|."""
    assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
    scale = float(y_ref.float().abs().max().clamp_min(1.0))
    tol = 1e-4 if y.dtype == torch.float32 else 1e-2
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
