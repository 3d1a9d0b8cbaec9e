"""Spec §5: every bad input is rejected with a message naming the argument and what is allowed."""

import json
import warnings

import pytest
import torch

import ttqkern
from ttqkern import backends, ops
from ttqkern.backends.torch_backend import TorchBackend
from ttqkern.tuning import store

x, W = torch.randn(4, 64), torch.randn(32, 64)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        # wrong ranks
        (lambda: ttqkern.linear(x, W[0]), ValueError, r"W must be 2-D"),
        (lambda: ttqkern.linear(torch.tensor(1.0), W), ValueError, r"x must have at least 1 dim"),
        (lambda: ops.quantize(W[None], bits=4), ValueError, r"W must be 2-D"),
        (lambda: ops.act_scale(torch.tensor(2.0)), ValueError, r"x must have at least 1 dim"),
        # K mismatch
        (
            lambda: ttqkern.linear(torch.randn(4, 63), W),
            ValueError,
            r"x's last dim \(63\) must equal W's in-features K",
        ),
        (
            lambda: ops.qmatmul(torch.randn(4, 63), ops.quantize(W)),
            ValueError,
            r"x's last dim \(63\) must equal the packed",
        ),
        (lambda: ops.qmatmul(x, ops.quantize(W), torch.ones(5)), ValueError, r"D must have shape \[K\] = \[64\]"),
        (lambda: ops.quantize(W, torch.ones(63)), ValueError, r"D must have shape \[K\] = \[64\]"),
        (lambda: ttqkern.linear(x, W, torch.zeros(31)), ValueError, r"bias must have shape \[N\] = \[32\]"),
        (
            lambda: ops.qmatmul(x, ops.quantize(W), lowrank=(torch.ones(2, 64), torch.ones(31, 2))),
            ValueError,
            r"lowrank \(A, B\) must have shapes",
        ),
        (lambda: ops.qmatmul(x, ops.quantize(W), lowrank=torch.ones(2, 64)), TypeError, r"lowrank must be a pair"),
        # bits / group size / forms
        (lambda: ttqkern.linear(x, W, bits=5), ValueError, r"bits must be one of \[2, 3, 4, 8\], got 5"),
        (lambda: ops.quantize(W, bits=1), ValueError, r"bits must be one of \[2, 3, 4, 8\]"),
        (lambda: ops.quantize(W, bits=4.0), ValueError, r"bits must be one of"),
        (lambda: ttqkern.linear(x, W, group_size=0), ValueError, r"group_size must be > 0, or -1"),
        (lambda: ops.quantize(W, group_size=-2), ValueError, r"group_size must be > 0, or -1"),
        (lambda: ops.quantize(W, group_size=32.0), TypeError, r"group_size must be an int"),
        (lambda: ops.quantize(W, zero="half"), ValueError, r"zero must be one of \['float', 'int'\]"),
        (lambda: ops.quantize(W, sym=True, zero="int"), ValueError, r"zero='int'.*no meaning with sym=True"),
        (lambda: ops.quantize(W, beta=0.0), ValueError, r"beta \(range expansion\) must be a finite number > 0"),
        # rank
        (lambda: ttqkern.linear(x, W, r=-1), ValueError, r"r must be in \[0, min\(N, K\)\] = \[0, 32\]"),
        (lambda: ttqkern.linear(x, W, r=33), ValueError, r"r must be in \[0, min\(N, K\)\] = \[0, 32\]"),
        (lambda: ops.lowrank(W, 1.5), TypeError, r"r must be an int"),
        # hyper-parameters
        (lambda: ttqkern.linear(x, W, alpha=1.5), ValueError, r"alpha must be a number in \[0, 1\]"),
        (lambda: ttqkern.linear(x, W, alpha=-0.1), ValueError, r"alpha must be a number in \[0, 1\]"),
        (lambda: ops.act_scale(x, lam=-1.0), ValueError, r"lam must be a finite number >= 0"),
        (lambda: ops.act_scale(x, lam=float("nan")), ValueError, r"lam must be a finite number >= 0"),
        (lambda: ops.act_scale(x, p=0.0), ValueError, r"p must be a number > 0"),
        (lambda: ops.act_scale(x, p=float("nan")), ValueError, r"p must be a number > 0"),
        (lambda: ops.act_scale(x, alpha="0.5"), ValueError, r"alpha must be a number"),
        # dtypes and types
        (lambda: ttqkern.linear(x.to(torch.int32), W), TypeError, r"x must be float32, float16 or bfloat16"),
        (lambda: ttqkern.linear(x, W.double()), TypeError, r"W must be float32, float16 or bfloat16"),
        (lambda: ttqkern.linear(x.numpy(), W), TypeError, r"x must be a torch.Tensor"),
        (lambda: ops.qmatmul(x, W), TypeError, r"pw must be a ttqkern.PackedWeight"),
        # mixed devices (meta stands in for a second device on a CPU-only machine)
        (
            lambda: ttqkern.linear(x, W.to("meta")),
            RuntimeError,
            r"all tensors must be on one device.*x on cpu.*W on meta",
        ),
        (lambda: ops.quantize(W, torch.ones(64, device="meta")), RuntimeError, r"all tensors must be on one device"),
        (
            lambda: ops.qmatmul(x, ops.quantize(W), bias=torch.ones(32, device="meta")),
            RuntimeError,
            r"all tensors must be on one device",
        ),
        # backends
        (
            lambda: ttqkern.linear(x, W, backend="cuda"),
            ValueError,
            r"backend must be 'auto' or one of \[" + ", ".join(f"'{n}'" for n in backends.names()) + r"\]",
        ),
        (lambda: ops.quantize(W, backend="fast"), ValueError, r"backend must be 'auto' or one of"),
        # modules
        (
            lambda: ttqkern.TTQLinear(64, 32, mode="lazy"),
            ValueError,
            r"mode must be one of \['dynamic', 'prompt', 'static'\]",
        ),
        (lambda: ttqkern.TTQLinear(64, 32, min_tokens=0), ValueError, r"min_tokens must be an int >= 1"),
        (
            lambda: ttqkern.TTQLinear.from_linear(torch.nn.Conv1d(2, 2, 1)),
            TypeError,
            r"linear must be a torch.nn.Linear",
        ),
        (
            lambda: ttqkern.quantize_model(torch.nn.Linear(4, 4), method="gptq"),
            ValueError,
            r"method must be one of \['ttq', 'rtn', 'awq'\]",
        ),
        (
            lambda: ttqkern.quantize_model(torch.nn.Sequential(torch.nn.ReLU())),
            ValueError,
            r"found no nn.Linear layers",
        ),
        (
            lambda: ttqkern.quantize_model(torch.nn.Linear(4, 4), method="ttq", mode="static"),
            ValueError,
            r"mode must be 'prompt' or 'dynamic'",
        ),
    ],
)
def test_bad_input_is_rejected_with_a_useful_message(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.fixture
def ghost():
    """Register backends named ghost... for one test; they are removed afterwards."""
    names = []

    def add(name, target):
        backends.register(name, target)
        names.append(name)

    yield add
    for name in names:
        backends.unregister(name)


def test_unavailable_explicit_backend_raises_naming_what_is_missing(ghost):
    ghost("ghost", "ttqkern.backends._no_such_module")
    with pytest.raises(RuntimeError, match=r"backend 'ghost' is not available on this machine: ghost: cannot import"):
        ttqkern.linear(x, W, backend="ghost")


class _Unavailable(TorchBackend):
    name = "ghost"
    preference = 0  # would be the first choice on every device type

    def available(self):
        return False, "no ghost hardware here"


def test_auto_falls_back_quietly_when_preferred_backend_is_missing(ghost):
    ghost("ghost", _Unavailable())
    ghost("ghost2", "ttqkern.backends._no_such_module")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = ttqkern.linear(x, W, backend="auto")
    assert y.shape == (4, 32)
    assert backends.resolve("auto", torch.device("cpu")).name not in ("ghost", "ghost2")
    assert backends.status()["ghost"] == (False, "ghost: no ghost hardware here")


class _CudaOnly(TorchBackend):
    name = "cudaonly"
    device_types = ("cuda",)


def test_backend_on_wrong_device_type_is_a_clear_error(ghost):
    ghost("cudaonly", _CudaOnly())
    with pytest.raises(RuntimeError, match=r"backend 'cudaonly' cannot run on cpu tensors \(it runs on: cuda\)"):
        ttqkern.linear(x, W, backend="cudaonly")


def test_non_contiguous_inputs_are_handled():
    xt = torch.randn(64, 4).T  # [4, 64], not contiguous
    Wt = torch.randn(64, 32).T
    y = ttqkern.linear(xt, Wt, r=4, backend="torch")
    torch.testing.assert_close(y, ttqkern.linear(xt.contiguous(), Wt.contiguous(), r=4, backend="torch"))


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "unreadable tuned-config file"),
        (json.dumps({"hello": 1}), "not a ttqkern config file"),
        (json.dumps({"format": store.FORMAT, "version": 999, "entries": {}}), "config format version 999"),
    ],
)
def test_corrupt_or_foreign_config_file_warns_and_falls_back(tmp_path, monkeypatch, content, match):
    monkeypatch.setenv("TTQKERN_CONFIG_DIR", str(tmp_path))
    store.load.cache_clear()
    (tmp_path / "cpu.json").write_text(content)
    with pytest.warns(UserWarning, match=match):
        cfg = store.lookup("cpu", "numba/qmatmul/bits=4", {"BLOCK": 8})
    assert cfg == {"BLOCK": 8}
    store.load.cache_clear()
