"""The conformance suite: one backend against the torch reference (docs/spec.md §6).

`ConformanceSuite` is a test class with no backend of its own: a subclass names a
registered backend (``backend``) and a device type (``device``), and pytest runs
every test below for it, with the tolerances the backend declares
(`ttqkern.backends.base.Tolerances`).  `tests/test_conformance.py` makes one
subclass per registered backend and device; a backend defined elsewhere (a test, a
plugin) gets the whole suite with one subclass.  Tests of a stage that *is* the
reference (the torch backend's act_scale and quantize) are skipped: the reference
is not compared with itself.
"""

from __future__ import annotations

import pytest
import torch
from helpers import QUANT_FORMS, assert_output_close, assert_packed_match, random_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttqkern import backends, ops, reference

SHAPES = [  # (T, N, K, group_size): T = 1, odd sizes, K not a multiple of g, g = -1
    (1, 5, 37, 16),
    (3, 16, 128, 32),
    (16, 33, 200, 64),
    (33, 8, 64, -1),
]


class ConformanceSuite:
    """Subclass with ``backend = "<name>"`` and ``device = "cpu" | "cuda"`` (mark cuda classes ``gpu``)."""

    backend: str
    device: str = "cpu"

    @pytest.fixture(autouse=True)
    def _backend_ready(self, request):
        ok, reason = backends.availability(self.backend)
        if not ok:
            pytest.skip(reason)
        be = backends.get(self.backend)
        if self.device not in be.device_types:
            pytest.skip(f"{self.backend} does not run on {self.device} tensors here")
        name = request.node.originalname
        for stage in be.reference_ops:
            if name.startswith(f"test_{stage}"):
                pytest.skip(f"{self.backend}'s {stage} is the reference itself")

    @property
    def tol(self):
        return backends.get(self.backend).tolerances

    @pytest.mark.parametrize("p,lam,alpha", [(2.0, 1.0, 0.25), (1.0, 0.0, 0.5), (0.5, 0.1, 1.0), (3.0, 10.0, 0.0)])
    @pytest.mark.parametrize("T,K", [(1, 37), (16, 200), (33, 64)])
    def test_act_scale(self, p, lam, alpha, T, K):
        x = random_case(T, 1, K, device=self.device)[0]
        D = ops.act_scale(x, p=p, lam=lam, alpha=alpha, backend=self.backend)
        D_ref = reference.act_scale(x.cpu(), p, lam, alpha)
        assert D.dtype == torch.float32 and D.shape == (K,)
        torch.testing.assert_close(D.cpu(), D_ref, rtol=self.tol.act_scale_rtol, atol=0)

    def test_act_scale_zero_input_is_one(self):
        D = ops.act_scale(torch.zeros(4, 19, device=self.device), backend=self.backend)
        assert torch.equal(D.cpu(), torch.ones(19))

    @pytest.mark.parametrize("bits", [2, 3, 4, 8])
    @pytest.mark.parametrize("sym,zero", QUANT_FORMS)
    @pytest.mark.parametrize("T,N,K,g", SHAPES)
    def test_quantize(self, bits, sym, zero, T, N, K, g):
        x, W, _, _ = random_case(T, N, K, device=self.device)
        D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
        pw = ops.quantize(W, D.to(self.device), bits=bits, group_size=g, sym=sym, zero=zero, backend=self.backend)
        assert_packed_match(pw.to("cpu"), reference.quantize(W.cpu(), D, bits, g, sym, zero, 1.0), self.tol)

    @pytest.mark.parametrize("beta", [0.9, 1.1])
    def test_quantize_range_expansion(self, beta):
        W = torch.randn(9, 70, device=self.device)
        pw = ops.quantize(W, None, bits=3, group_size=32, beta=beta, backend=self.backend)
        assert_packed_match(pw.to("cpu"), reference.quantize(W.cpu(), None, 3, 32, False, "float", beta), self.tol)

    @pytest.mark.parametrize("bits", [2, 3, 4, 8])
    @pytest.mark.parametrize("sym,zero", QUANT_FORMS)
    @pytest.mark.parametrize("T,N,K,g", SHAPES)
    def test_qmatmul(self, bits, sym, zero, T, N, K, g):
        x, W, lowrank, bias = random_case(T, N, K, r=2, bias=True, device=self.device)
        D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
        pw = reference.quantize(W.cpu(), D, bits, g, sym, zero, 1.0)
        y = ops.qmatmul(x, pw.to(self.device), D.to(self.device), lowrank=lowrank, bias=bias, backend=self.backend)
        lr = [t.cpu() for t in lowrank]
        assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, bias.cpu()), self.tol)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    @pytest.mark.parametrize(
        "with_D,with_lowrank,with_bias", [(False, False, False), (True, False, True), (True, True, False)]
    )
    @pytest.mark.parametrize("T", [1, 3, 16, 33])
    def test_qmatmul_epilogues_and_dtypes(self, dtype, with_D, with_lowrank, with_bias, T):
        x, W, lowrank, bias = random_case(
            T, 24, 96, r=4 if with_lowrank else 0, bias=with_bias, dtype=dtype, device=self.device
        )
        D = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25) if with_D else None
        pw = reference.quantize(W.cpu(), D, 4, 32, False, "float", 1.0)
        Dd = None if D is None else D.to(self.device)
        y = ops.qmatmul(x, pw.to(self.device), Dd, lowrank=lowrank, bias=bias, backend=self.backend)
        lr = [None, None] if lowrank is None else [t.cpu() for t in lowrank]
        assert_output_close(
            y.cpu(), reference.qmatmul(x.cpu(), pw, D, *lr, None if bias is None else bias.cpu()), self.tol
        )

    # one test function serves every backend's subclass ("executor"); examples do not depend on it
    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(
        T=st.integers(1, 20),
        N=st.integers(1, 40),
        K=st.integers(1, 150),
        g=st.sampled_from([8, 16, 32, 48, 64, 128, -1]),
        bits=st.sampled_from([2, 3, 4, 8]),
        form=st.sampled_from(QUANT_FORMS),
        seed=st.integers(0, 2**16),
    )
    def test_pipeline_random_shapes(self, T, N, K, g, bits, form, seed):
        torch.manual_seed(seed)
        sym, zero = form
        x, W, _, _ = random_case(T, N, K, device=self.device)
        # the spec's values, explicitly: ttqkern.defaults holds the tuned ones, which may differ
        D = ops.act_scale(x, p=2.0, lam=1.0, alpha=0.25, backend=self.backend)
        pw = ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, backend=self.backend)
        D_ref = reference.act_scale(x.cpu(), 2.0, 1.0, 0.25)
        assert_packed_match(pw.to("cpu"), reference.quantize(W.cpu(), D.cpu(), bits, g, sym, zero, 1.0), self.tol)
        y = ops.qmatmul(x, pw, D, backend=self.backend)
        torch.testing.assert_close(D.cpu(), D_ref, rtol=self.tol.act_scale_rtol, atol=0)
        assert_output_close(y.cpu(), reference.qmatmul(x.cpu(), pw.to("cpu"), D.cpu()), self.tol)

    @pytest.mark.parametrize("bits", [3, 4])
    @pytest.mark.parametrize("sym,zero", QUANT_FORMS)
    def test_quantize_nonfinite_groups_match_the_reference_exactly(self, bits, sym, zero):
        W = torch.randn(6, 70)
        W[0, 5] = float("nan")
        W[1, 40] = float("inf")
        W[2, 33] = float("-inf")
        W[3, 1], W[3, 2] = float("inf"), float("-inf")
        W[4, 69] = float("nan")  # in the ragged last group
        pw = ops.quantize(W.to(self.device), None, bits=bits, group_size=32, sym=sym, zero=zero, backend=self.backend)
        pw = pw.canonical()
        ref = reference.quantize(W, None, bits, 32, sym, zero, 1.0)
        assert torch.equal(ops.unpack(pw).cpu(), ops.unpack(ref))
        for name, t in ref.tensors().items():
            torch.testing.assert_close(getattr(pw, name).cpu(), t, rtol=0, atol=0, equal_nan=True)
        assert torch.isnan(pw.scales.cpu()[[0, 1, 2, 3, 4], [0, 1, 1, 0, 2]]).all()

    def test_nonfinite_never_gives_finite_answers(self):
        x, W, _, _ = random_case(4, 6, 64, device=self.device)
        W[2, 40] = float("nan")  # row 2, group 1 (g = 32)
        W[4, 3] = float("inf")
        pw = ops.quantize(W, None, bits=4, group_size=32, backend=self.backend)
        y = ops.qmatmul(x, pw, None, backend=self.backend).cpu()
        assert torch.isnan(y[:, 2]).all() and not torch.isfinite(y[:, 4]).any()
        assert torch.isfinite(y[:, [0, 1, 3, 5]]).all()
        x[1, 7] = float("nan")
        # nan in x: its column's norm is nan, so is the mean of c, hence all of D
        D = ops.act_scale(x, backend=self.backend)
        assert torch.isnan(D.cpu()).all()
        assert torch.isnan(ops.qmatmul(x, pw, D, backend=self.backend).cpu()).all()
        pw = ops.quantize(W, None, bits=4, group_size=32, backend=self.backend)
        y = ops.qmatmul(x, pw, None, backend=self.backend).cpu()
        assert torch.isnan(y[1]).all() and torch.isfinite(y[0, [0, 1, 3, 5]]).all()
