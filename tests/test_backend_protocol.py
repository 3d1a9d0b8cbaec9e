"""The backend protocol: a backend defined here, registered at run time, gets the whole conformance suite.

`ShiftedTorch` is a throwaway fourth backend: the torch backend with a deliberate
output error of 3e-4 relative to |y| -- outside the spec's fp32 tolerance (1e-4),
inside the tolerance it declares (1e-3).  The suite must pick it up with *its*
tolerances; nothing outside this file names it.
"""

from __future__ import annotations

import pytest
import torch
from conformance import ConformanceSuite
from helpers import SPEC, assert_output_close

import ttqkern
from ttqkern import backends, ops, reference
from ttqkern.backends.base import Backend, Tolerances
from ttqkern.backends.torch_backend import TorchBackend

ERROR = 3e-4


class ShiftedTorch(Backend):
    name = "shifted-torch"
    device_types = ("cpu",)
    preference = 1000  # never the auto choice
    tolerances = Tolerances(output={torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 2e-2})

    def __init__(self):
        self.inner = TorchBackend()

    def act_scale(self, x, scaling):
        return self.inner.act_scale(x, scaling)

    def quantize(self, W, D, fmt):
        return self.inner.quantize(W, D, fmt)

    def qmatmul(self, x, pw, D, A, B, bias):
        y = self.inner.qmatmul(x, pw, D, A, B, bias)
        scale = y.float().nan_to_num(0.0, 0.0, 0.0).abs().amax().clamp_min(1.0)  # nan/inf stay what they are
        return (y.float() + ERROR * scale).to(y.dtype)


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """Registered for this module's tests only: other modules see the registry as shipped."""
    backends.register("shifted-torch", ShiftedTorch())
    yield
    backends.unregister("shifted-torch")


class TestShiftedTorch(ConformanceSuite):
    backend = "shifted-torch"
    device = "cpu"


def test_the_deliberate_error_breaks_the_spec_tolerance_but_not_its_own():
    x, W = torch.randn(4, 64), torch.randn(16, 64)
    pw = ops.quantize(W, bits=4, group_size=32, backend="torch")
    y = ops.qmatmul(x, pw, backend="shifted-torch")
    ref = reference.qmatmul(x, pw)
    with pytest.raises(AssertionError, match="max abs error"):
        assert_output_close(y, ref, SPEC)
    assert_output_close(y, ref, ShiftedTorch.tolerances)


def test_registered_backend_is_listed_named_and_never_auto():
    assert "shifted-torch" in backends.names() and backends.status()["shifted-torch"] == (True, "")
    assert backends.resolve("auto", torch.device("cpu")).name != "shifted-torch"
    y = ttqkern.linear(torch.randn(2, 32), torch.randn(8, 32), r=2, backend="shifted-torch")
    assert y.shape == (2, 8)


def test_register_rejects_bad_entries():
    with pytest.raises(ValueError, match="other than 'auto'"):
        backends.register("auto", ShiftedTorch())
    with pytest.raises(ValueError, match="named 'shifted-torch', registered as 'other'"):
        backends.register("other", ShiftedTorch())
    with pytest.raises(TypeError, match="module path or a Backend instance"):
        backends.register("other", 42)
