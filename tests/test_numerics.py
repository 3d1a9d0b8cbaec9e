"""Numerics at the edges, through the public ops, for every CPU backend (docs/numerics.md).

Issue 12, findings 8-10: act_scale for the whole allowed p range, a qmatmul that
does not cancel when D or a group's minimum is extreme, and fp32 limits (huge and
subnormal activations).  Each requirement is a bound a backend must meet, checked
against an fp64 evaluation of the *same* packed weight, so the tests judge any
kernel that implements the ops -- present or future.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import QUANT_FORMS

import ttqkern
from ttqkern import backends, defaults, ops, reference

FLT_MAX = torch.finfo(torch.float32).max
TINY = 2.0**-149  # the smallest fp32 subnormal: the spacing of fp32 numbers below 2^-126


EMULATED = "cupy-emulated"  # the CuPy kernels run by their host emulator (ttqkern.backends.cupy.emulator)


def _targets():
    """(backend, device type) for every registered backend and device type it runs on (cuda: gpu),
    and the emulated CuPy backend on CPU tensors: the CUDA kernel bodies are held to the rules in CI."""
    for name in backends.names():
        be = backends.get(name)
        for device in ("cpu", "cuda"):
            if (be is None and device == "cpu") or (be is not None and device in be.device_types):
                marks = [pytest.mark.gpu] if device == "cuda" else []
                yield pytest.param((name, device), id=f"{name}-{device}", marks=marks)
    yield pytest.param((EMULATED, "cpu"), id=f"{EMULATED}-cpu")


@pytest.fixture(scope="module")
def _emulated_cupy():
    """Registers the emulated CuPy backend while this module runs (skips without a C++ compiler)."""
    try:
        from ttqkern.backends.cupy import emulator
    except ImportError as e:
        pytest.skip(f"the CuPy emulator cannot be imported: {e}")
    if emulator.compiler() is None:
        pytest.skip("the CuPy kernel emulator needs a C++20 compiler (g++ or $CXX)")
    with emulator.registered():
        yield


def _ready(request, name: str, device: str) -> None:
    if name == EMULATED:
        request.getfixturevalue("_emulated_cupy")
    ok, why = backends.availability(name)
    if not ok:
        pytest.skip(why)


@pytest.fixture(params=list(_targets()))
def target(request):
    """A backend and the device its tensors live on: the numerical rules hold for every one."""
    _ready(request, *request.param)
    return request.param


@pytest.fixture(params=[p for p in _targets() if p.values[0][1] == "cpu"])
def backend(request):
    """A backend on CPU tensors (the behaviour tests: errors, empty inputs, modules)."""
    _ready(request, *request.param)
    return request.param[0]


# --- the bound every qmatmul must meet --------------------------------------------------


def exact(x: torch.Tensor, pw, D):
    """fp64 ``y = x~ Wq'^T`` of the same packed weight and ``bound = |x~| |Wq'|^T``.

    ``x~ = x / D`` rounded to fp32 (every backend forms it so); ``Wq' = s * u + m`` is
    exact in fp64 for these magnitudes.
    """
    xs = (x.float() if D is None else x.float() / D).double()
    pw = pw.canonical()
    s = pw.scales.double()
    u = pw.codes().double()
    if pw.sym:
        m = -s * float(1 << (pw.bits - 1))
    elif pw.zero == "int":
        m = -s * pw.zeros.double()
    else:
        m = pw.mins.double()
    g, G = pw.group_size, pw.num_groups
    pad = G * g - pw.K
    w = (torch.nn.functional.pad(u, (0, pad)).view(pw.N, G, g) * s[..., None] + m[..., None]).view(pw.N, -1)
    w = w[:, : pw.K]
    # broadcast products, not a BLAS call: tiny fp64 GEMMs wake a thread pool (~40 ms on a busy machine)
    prods = xs[:, None, :] * w[None, :, :]
    return prods.sum(-1), prods.abs().sum(-1)


# The documented bound (docs/numerics.md): |y - y_exact| <= C * n * eps * sum_k |x~_k| |Wq'_k|
# (+ a few subnormal spacings), n = K + G. A kernel that sums codes before the scale and adds the
# group minimum afterwards misses it by orders of magnitude when the group is dominated by one
# huge (D-scaled) value.
def assert_within_bound(y, y64, bound, K, G, rel=4.0, subnormal_terms=0):
    eps = 2.0**-24
    tol = rel * (K + G) * eps * bound + subnormal_terms * TINY
    err = (y.double() - y64).abs()
    worst = float((err / tol.clamp_min(1e-300)).max())
    assert torch.isfinite(y).all(), "non-finite output where the exact result is finite"
    assert worst <= 1.0, (
        f"error {worst:.3g} x the bound (max err {float(err.max()):.3g}, max |y| {float(y64.abs().max()):.3g})"
    )


@functools.cache
def _outlier_case(bits, sym, zero, g):
    """W [16, K] with one column per group scaled by D = 1e8, so that one value spans the
    group's range: its minimum when the row's outlier is negative (even rows: the other
    weights sit at the top code), its maximum when positive (odd rows)."""
    gen = torch.Generator().manual_seed(bits * 100 + g)
    K = 111 if g == 37 else 96
    W = torch.randn(16, K, generator=gen)
    D = torch.ones(K)
    cols = torch.arange(3, K, K if g == -1 else g)
    D[cols] = 1e8
    sign = torch.tensor([-1.0, 1.0]).repeat(8)[:, None]
    W[:, cols] = sign * W[:, cols].abs()
    pw = ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, backend="torch")
    xs = [torch.randn(T, K, generator=gen) for T in (1, 2, 17)]  # decode, token pairs, prefill paths
    return pw, D, [(x, *exact(x, pw, D)) for x in xs]


@pytest.mark.parametrize("sym,zero", QUANT_FORMS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("g", [32, 37, -1])
def test_qmatmul_extreme_D_does_not_cancel(target, bits, sym, zero, g):
    """Finding 9: with D = 1e8 on one column, the per-group-sum form lost |y| to cancellation
    (|y| 120 against 28 from dequantize-then-matmul)."""
    pw, D, cases = _outlier_case(bits, sym, zero, g)
    for x, y64, bound in cases:
        y = _qmatmul(target, x, pw, D)
        assert_within_bound(y, y64, bound, pw.K, pw.num_groups)


def _qmatmul(target, x, pw, D):
    """`ops.qmatmul` on the target's device, result back on the CPU."""
    name, device = target
    return ops.qmatmul(x.to(device), pw.to(device), D.to(device), backend=name).cpu()


def test_extreme_D_end_to_end_is_as_good_as_dequantize_then_matmul(target):
    """Finding 9 end to end: one activation channel x 1e6, lam = 0, alpha = 1 (D ~ c: 1e12).

    Relative error was 0.068 with the torch backend (dequantize, then matmul) and 0.464
    with numba (per-group sums).  Both quantize the same way; the products must agree.
    """
    torch.manual_seed(1)
    x, W = torch.randn(8, 128), torch.randn(32, 128) / 11
    x[:, 5] *= 1e6
    kw = dict(r=0, bits=4, group_size=32, lam=0.0, alpha=1.0)
    y_ref = x @ W.T
    rel = lambda y: float((y - y_ref).norm() / y_ref.norm())  # noqa: E731
    name, device = target
    got = rel(ttqkern.linear(x.to(device), W.to(device), backend=name, **kw).cpu())
    base = rel(ttqkern.linear(x, W, backend="torch", **kw))
    assert got <= 1.05 * base + 1e-4, (got, base)


@functools.cache
def _range_case(bits, g):
    gen = torch.Generator().manual_seed(bits + g)
    W = torch.randn(24, 96, generator=gen)
    xs = [torch.randn(T, 96, generator=gen) for T in (1, 2, 17)]
    D = ops.act_scale(torch.cat(xs), backend="torch")
    return ops.quantize(W, D, bits=bits, group_size=g, backend="torch"), D, xs


@pytest.mark.parametrize("bits,g", [(4, 32), (3, 32), (2, 37), (8, -1)])
def test_qmatmul_huge_activations_stay_finite(target, bits, g):
    """Finding 10: x * 1e37 gave 63 infs from numba where the torch backend was finite.

    Whenever ``sum_k |x~_k| |Wq'_k| <= FLT_MAX / 8`` the result is finite and within the bound.
    """
    pw, D, xs = _range_case(bits, g)
    for x1 in xs:
        x = x1 * (FLT_MAX / 8 / float(exact(x1, pw, D)[1].max()))  # ~1e36: sums of x~ * codes overflow unscaled
        y = _qmatmul(target, x, pw, D)
        assert_within_bound(y, *exact(x, pw, D), pw.K, pw.num_groups)


@pytest.mark.parametrize("bits,g", [(4, 32), (3, 32), (2, 37), (8, -1)])
def test_qmatmul_subnormal_activations_match(target, bits, g):
    """Finding 10: x * 1e-42 (subnormal) made numba differ from torch by 133 % of |y|.

    Below 2^-126 fp32 numbers are spaced 2^-149 apart, so a result can only be right to a
    few such spacings per operation; beyond that, the bound is the same as above.
    """
    pw, D, xs = _range_case(bits, g)
    for x1 in xs:
        x = x1 * 1e-42
        assert (x[x != 0].abs() < 2.0**-126).all()
        y = _qmatmul(target, x, pw, D)
        y64, bound = exact(x, pw, D)
        assert_within_bound(y, y64, bound, pw.K, pw.num_groups, subnormal_terms=4 * (pw.K + pw.num_groups))
        assert float((y.double() - y64).abs().max()) < 0.1 * float(y64.abs().max())


def test_a_batch_mixing_huge_tiny_and_normal_tokens(target):
    torch.manual_seed(4)
    W, x = torch.randn(16, 64), torch.randn(3, 64)
    D = ops.act_scale(x, backend="torch")
    pw = ops.quantize(W, D, bits=4, group_size=32, backend="torch")
    x = x * torch.tensor([[1e-42], [1.0], [1e35]])
    y = _qmatmul(target, x, pw, D)
    y64, bound = exact(x, pw, D)
    assert_within_bound(y, y64, bound, 64, 2, subnormal_terms=4 * 66)


# --- act_scale -------------------------------------------------------------------------


def act_scale64(x: torch.Tensor, p: float, lam: float, alpha: float) -> torch.Tensor:
    """Stage 1 in fp64 from scratch (column-max scaled norms), rounded to fp32 at the end."""
    x = x.double()
    a = x.abs().amax(dim=0)
    if math.isinf(p):
        n = a
    else:
        s = torch.where(a > 0, a, torch.ones_like(a))
        n = s * ((x.abs() / s) ** p).sum(dim=0) ** (1 / p)
    c = n**2
    if float(c.mean()) == 0:
        return torch.ones(x.shape[1])
    base = (c + lam * c.mean()).clamp(torch.finfo(torch.float32).tiny, FLT_MAX)
    return base.pow(alpha).float()


P_RANGE = [0.25, 0.5, 1.0, 2.0, defaults.P, 7.0, 100.0, 1000.0, math.inf]


@pytest.mark.parametrize("scale", [1.0, 1e12, 1e-12])
@pytest.mark.parametrize("p", P_RANGE, ids=lambda p: f"p={p:g}")
def test_act_scale_has_no_overflow_for_any_p(target, p, scale):
    """Finding 8: p = 100 made every D 2173024768.0 (one inf column norm: TTQ became RTN)."""
    torch.manual_seed(5)
    x = torch.randn(37, 70) * (1 + 5 * (torch.rand(70) < 0.1)) * scale
    lam, alpha = 0.1, 0.5
    name, device = target
    D = ops.act_scale(x.to(device), p=p, lam=lam, alpha=alpha, backend=name).cpu()
    expect = act_scale64(x, p, lam, alpha)
    rtol = backends.get(name).tolerances.act_scale_rtol
    torch.testing.assert_close(D, expect, rtol=max(rtol, 2e-6), atol=0)
    assert float(D.max() / D.min()) > 1.5  # still scales columns differently (not RTN)


def test_reference_act_scale_matches_fp64():
    torch.manual_seed(6)
    x = torch.randn(50, 33) * 3
    for p in P_RANGE:
        torch.testing.assert_close(
            reference.act_scale(x, p, 1.0, 0.25), act_scale64(x, p, 1.0, 0.25), rtol=2e-6, atol=0
        )


def test_act_scale_inf_and_nan_columns(target):
    name, device = target
    x = torch.randn(6, 40)
    x[2, 3] = math.inf
    D = ops.act_scale(x.to(device), p=3.0, lam=1.0, alpha=0.5, backend=name).cpu()
    # an inf column norm makes mean(c) inf: every base saturates at FLT_MAX (documented)
    assert torch.isfinite(D).all() and torch.allclose(D, D[0])
    x[1, 7] = math.nan
    assert torch.isnan(ops.act_scale(x.to(device), p=3.0, backend=name)).cpu().all()


def test_static_calibration_norms_for_large_p():
    from ttqkern.calibration import ColumnStats

    stats = ColumnStats(16, p=1000.0)
    xs = [torch.randn(4, 16) * s for s in (1.0, 30.0, 1e3)]  # 1e3^1000 overflows fp64
    for x in xs:
        stats.update(x)
    torch.testing.assert_close(stats.norms(), reference.column_norms(torch.cat(xs), 1000.0), rtol=1e-6, atol=0)


# --- D, beta, empty dims, non-finite W, dtype moves --------------------------------------


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, -math.inf], ids=repr)
def test_D_must_be_positive_and_finite(backend, bad):
    """Finding 12: a zero in D raised ZeroDivisionError (numba) or gave all inf (torch)."""
    W, x = torch.randn(8, 64), torch.randn(2, 64)
    D = torch.rand(64) + 0.5
    D[7] = bad
    pw = ops.quantize(W, group_size=32, backend=backend)
    with pytest.raises(ValueError, match=r"D must be > 0 and finite"):
        ops.qmatmul(x, pw, D, backend=backend)
    with pytest.raises(ValueError, match=r"D must be > 0 and finite"):
        ops.quantize(W, D, group_size=32, backend=backend)


def test_nan_in_D_propagates_to_nan_outputs(backend):
    # allowed on purpose: nan in x makes nan in D (act_scale), and that must not turn finite
    W, x = torch.randn(8, 64), torch.randn(2, 64)
    D = torch.rand(64) + 0.5
    D[5] = math.nan
    pw = ops.quantize(W, group_size=32, backend=backend)
    assert torch.isnan(ops.qmatmul(x, pw, D, backend=backend)).all()
    assert torch.isnan(ops.quantize(W, D, group_size=32, backend=backend).canonical().scales[:, 0]).all()


@pytest.mark.parametrize("beta", [0.0, -1.0, 16.5, 1e30, math.inf, math.nan, "2"], ids=repr)
def test_beta_is_bounded(beta):
    """Finding 16: beta = 1e30 gave finite, meaningless codes."""
    with pytest.raises(ValueError, match=r"beta \(range expansion\) must be a finite number > 0 and <= 16"):
        ops.quantize(torch.randn(8, 64), beta=beta)
    with pytest.raises(ValueError, match="beta"):
        ttqkern.TTQLinear(64, 32, r=0, beta=beta)


def test_beta_at_the_bound_is_accepted():
    assert ops.quantize(torch.randn(8, 64), group_size=32, beta=16.0).canonical().scales.shape == (8, 2)


@pytest.mark.parametrize("r", [0, 2])
def test_empty_dimensions_have_documented_results(backend, r):
    """Finding 11: N = 0 / K = 0 / an empty x raised internal errors (F.pad, reshape, ZeroDivisionError).

    N = 0: an empty y.  K = 0: y = bias (or zeros) -- the sum over no columns -- and an empty D.
    T = 0: an empty y and D = 1.
    """
    x = torch.randn(4, 64)
    assert ttqkern.linear(x, torch.randn(0, 64), r=0, backend=backend).shape == (4, 0)
    assert ttqkern.linear(torch.randn(4, 0), torch.randn(8, 0), r=0, backend=backend).eq(0).all()
    bias = torch.randn(8)
    torch.testing.assert_close(
        ttqkern.linear(torch.randn(3, 0), torch.randn(8, 0), bias, r=0, backend=backend), bias.expand(3, 8)
    )
    assert ops.act_scale(torch.randn(4, 0), backend=backend).shape == (0,)
    assert torch.equal(ops.act_scale(torch.randn(0, 5), backend=backend), torch.ones(5))
    assert ttqkern.linear(torch.randn(0, 64), torch.randn(8, 64), r=r, backend=backend).shape == (0, 8)
    for N, K in ((0, 64), (8, 0)):
        pw = ops.quantize(torch.randn(N, K), bits=3, group_size=32, backend=backend)
        assert pw.shape == (N, K) and ops.dequantize(pw).shape == (N, K)
        y = ops.qmatmul(torch.randn(2, K), pw, backend=backend)
        assert y.shape == (2, N) and y.eq(0).all()


def test_empty_layers_in_modules():
    m = ttqkern.TTQLinear.from_linear(torch.nn.Linear(0, 6), r=0, mode="prompt", backend="torch")
    y = m(torch.randn(2, 3, 0))
    torch.testing.assert_close(y, m.bias.expand(2, 3, 6))
    assert ttqkern.TTQLinear.from_linear(torch.nn.Linear(8, 0), r=0)(torch.randn(5, 8)).shape == (5, 0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=repr)
def test_nonfinite_W_with_a_low_rank_part_names_W(bad):
    """Finding 14: the SVD raised _LinAlgError (not naming W) or MKL printed an error and returned nan."""
    W = torch.randn(16, 64)
    W[2, 3] = bad
    match = r"W contains nan or inf.*r > 0"
    with pytest.raises(ValueError, match=match):
        ops.lowrank(W, 4)
    with pytest.raises(ValueError, match=match):
        ttqkern.linear(torch.randn(2, 64), W, r=4)
    lin = torch.nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight.copy_(W)
    with pytest.raises(ValueError, match=match):
        ttqkern.TTQLinear.from_linear(lin, r=4)
    # with r = 0 the weight is quantized as is: the non-finite group's outputs are nan
    y = ttqkern.linear(torch.randn(2, 64), W, r=0, group_size=32)
    assert torch.isnan(y[:, 2]).all() and torch.isfinite(y[:, [0, 1, 3]]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ttqlinear_dtype_moves_keep_the_packed_state(backend, dtype):
    """Finding 13: ``.to(float16)`` cast the packed scales too (numba then failed; torch ran with fp16 scales)."""
    torch.manual_seed(7)
    m = ttqkern.TTQLinear.from_linear(torch.nn.Linear(64, 32), r=4, group_size=32, mode="prompt", backend=backend)
    prompt = torch.randn(1, 8, 64)
    m(prompt)
    pw, D = m.packed, m.D
    state = {n: t.clone() for n, t in pw.tensors().items()}
    m.to(dtype)
    assert m.weight.dtype == dtype and m.lowrank_A.dtype == dtype
    moved = m.packed
    for name, t in state.items():  # exactly what was quantized: dtypes and values
        assert getattr(moved, name).dtype == t.dtype and torch.equal(getattr(moved, name), t), name
    assert m.D.dtype == torch.float32 and torch.equal(m.D, D)
    step = torch.randn(1, 1, 64)
    y = m(step.to(dtype))  # a decode step: the packed weight is reused
    assert y.dtype == dtype and m.quantize_calls == 1
    m32 = ttqkern.TTQLinear.from_linear(torch.nn.Linear(64, 32), r=4, group_size=32, mode="prompt", backend=backend)
    m32.load_state_dict(m.state_dict())
    m32._store(pw, D)  # the same packed weight, fp32 weights elsewhere
    torch.testing.assert_close(y.float(), m32(step.to(dtype).float()), rtol=2e-2, atol=2e-2)
    m(torch.randn(1, 8, 64, dtype=dtype))  # a new prompt requantizes the moved (fp16) weight
    assert m.quantize_calls == 2 and m.scales.dtype == torch.float32


def test_prompt_mode_pools_D_over_the_batch():
    """Finding 17, kept as documented behaviour (docs/numerics.md, "prompt mode and batches"):
    one quantization per call, from every token of every sequence in it.  Per-sequence
    quantization would multiply a batched decode step's weight traffic by the batch size."""
    torch.manual_seed(8)
    m = ttqkern.TTQLinear.from_linear(torch.nn.Linear(64, 32), r=0, group_size=32, mode="prompt", backend="torch")
    a = torch.randn(1, 8, 64)
    b = torch.randn(1, 8, 64) * (1 + 30 * (torch.rand(64) < 0.1))  # outlier channels
    y_ab = m(torch.cat([a, b]))
    torch.testing.assert_close(m.D, ops.act_scale(torch.cat([a, b]), backend="torch"))
    y_a = m(a)  # alone: its own D
    torch.testing.assert_close(m.D, ops.act_scale(a, backend="torch"))
    assert not torch.allclose(y_ab[:1], y_a, rtol=1e-3, atol=1e-3)  # the batch-mate changed prompt a's output
