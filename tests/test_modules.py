"""TTQLinear modes, quantize_model, the RTN / AWQ baselines and the SVD cache of linear()."""

import pytest
import torch
from helpers import rel_err
from torch import nn

import ttqkern
from ttqkern import ops
from ttqkern.functional import lowrank_cache


def _lin(K=96, N=48, bias=True):
    return nn.Linear(K, N, bias=bias)


@pytest.mark.parametrize("mode", ["dynamic", "prompt"])
def test_ttqlinear_matches_functional_linear(mode):
    lin = _lin()
    m = ttqkern.TTQLinear.from_linear(lin, r=4, bits=4, group_size=32, mode=mode, backend="torch")
    x = torch.randn(2, 7, 96)
    y = m(x)
    assert y.shape == (2, 7, 48)
    expect = ttqkern.linear(x, lin.weight.detach(), lin.bias.detach(), r=4, bits=4, group_size=32, backend="torch")
    torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)
    assert rel_err(y, lin(x)) < 0.1


def test_prompt_mode_quantizes_once_per_prompt_and_reuses_for_decode(monkeypatch):
    m = ttqkern.TTQLinear.from_linear(_lin(), r=4, bits=3, group_size=32, mode="prompt", backend="torch")
    calls = []
    real = ops.run_quantize  # what TTQLinear calls: its weight is checked once, at construction
    monkeypatch.setattr(ops, "run_quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    prompt = torch.randn(1, 12, 96)
    y_prompt = m(prompt)
    assert len(calls) == 1 and m.quantize_calls == 1
    packed = m.qweight
    for _ in range(5):  # decode steps: T = 1
        y = m(torch.randn(1, 1, 96))
    assert len(calls) == 1 and m.qweight is packed
    # a decode step uses the prompt's D and packed weight
    step = prompt[:, -1:]
    torch.testing.assert_close(m(step), y_prompt[:, -1:], rtol=1e-5, atol=1e-5)
    m(torch.randn(1, 9, 96))  # a new prompt requantizes
    assert len(calls) == 2 and m.quantize_calls == 2
    assert y.shape == (1, 1, 48)


def test_dynamic_mode_quantizes_every_call():
    m = ttqkern.TTQLinear.from_linear(_lin(), r=0, mode="dynamic", backend="torch")
    for _ in range(3):
        m(torch.randn(1, 96))
    assert m.quantize_calls == 3


def test_static_without_calibration_is_rtn():
    lin = _lin()
    m = ttqkern.TTQLinear.from_linear(lin, r=0, bits=3, group_size=32, mode="static", backend="torch")
    x = torch.randn(5, 96)
    pw = ops.quantize(lin.weight.detach(), None, bits=3, group_size=32)
    torch.testing.assert_close(m(x), x @ ops.dequantize(pw).T + lin.bias.detach(), rtol=1e-5, atol=1e-5)
    m(x)
    assert m.quantize_calls == 1


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.body = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU())
        self.lm_head = nn.Linear(64, 32)

    def forward(self, x):
        return self.lm_head(self.body(x))


def test_quantize_model_swaps_linears_skips_lm_head_and_filters():
    model = ttqkern.quantize_model(_Toy(), bits=4, group_size=32, backend="torch")
    assert isinstance(model.body[0], ttqkern.TTQLinear) and isinstance(model.body[2], ttqkern.TTQLinear)
    assert type(model.lm_head) is nn.Linear
    model = ttqkern.quantize_model(_Toy(), filter=lambda name, mod: name == "body.2", backend="torch")
    assert type(model.body[0]) is nn.Linear and isinstance(model.body[2], ttqkern.TTQLinear)
    model = ttqkern.quantize_model(_Toy(), skip=(), backend="torch")
    assert isinstance(model.lm_head, ttqkern.TTQLinear)


def test_quantize_model_at_8_bits_keeps_outputs_close():
    x = torch.randn(4, 10, 64)
    ref = _Toy()(x)
    for method in ("ttq", "rtn", "awq"):
        model = ttqkern.quantize_model(_Toy(), method=method, bits=8, group_size=32, backend="torch",
                                       calib=[torch.randn(2, 16, 64)])  # fmt: skip
        assert rel_err(model(x), ref) < 1e-2, method


def test_awq_searches_alpha_and_beats_rtn_on_outlier_activations():
    torch.manual_seed(0)
    K, N = 128, 64
    lin = nn.Linear(K, N)
    scale = torch.ones(K)
    scale[:6] = 30.0  # a few outlier channels, as in LLM activations
    calib = torch.randn(256, K) * scale
    test = torch.randn(64, K) * scale
    errs = {}
    for search in (False, True):
        m = ttqkern.TTQLinear.from_linear(lin, r=0, bits=3, group_size=64, mode="static", search_alpha=search,
                                          lam=0.0, backend="torch")  # fmt: skip
        if search:
            m.start_calibration()
            m(calib)
            alpha = m.finish_calibration()
            assert 0 < alpha <= 1
        errs[search] = rel_err(m(test), lin(test))
    assert errs[True] < errs[False]  # AWQ < RTN


def test_awq_with_zero_calibration_tokens_is_rtn():
    lin = _lin()
    awq = ttqkern.quantize_model(nn.Sequential(lin), method="awq", bits=3, group_size=32, backend="torch", calib=[])
    rtn = ttqkern.quantize_model(nn.Sequential(_copy(lin)), method="rtn", bits=3, group_size=32, backend="torch")
    x = torch.randn(3, 96)
    torch.testing.assert_close(awq(x), rtn(x))


def _copy(lin):
    new = nn.Linear(lin.in_features, lin.out_features)
    new.load_state_dict(lin.state_dict())
    return new


def test_calibration_dict_inputs_and_full_precision_while_calibrating():
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(32, 16)

        def forward(self, hidden):
            return self.proj(hidden)

    model = Wrapped()
    x = torch.randn(3, 32)
    ref = model(x)
    ttqkern.quantize_model(model, method="awq", r=0, bits=8, group_size=32, backend="torch", calib=[{"hidden": x}])
    assert model.proj.D is not None and model.proj.quantize_calls >= 1
    assert rel_err(model(x), ref) < 1e-2


def test_module_moves_and_reset():
    m = ttqkern.TTQLinear.from_linear(_lin(), r=2, mode="prompt", backend="torch")
    m(torch.randn(4, 96))
    assert m.packed is not None and m.packed.shape == (48, 96)
    m.reset()
    assert m.packed is None and "qweight" not in m.state_dict()
    assert set(m.state_dict()) == {"weight", "lowrank_A", "lowrank_B", "bias"}
    assert "mode='prompt'" in repr(m)


def test_linear_caches_svd_and_invalidates_on_in_place_change():
    lowrank_cache.clear()
    W = torch.randn(40, 64)
    x = torch.randn(3, 64)
    y1 = ttqkern.linear(x, W, r=8, backend="torch")
    assert len(lowrank_cache) == 1
    entry = lowrank_cache._entries[id(W)]
    ttqkern.linear(x, W, r=8, backend="torch")
    assert lowrank_cache._entries[id(W)] is entry  # reused
    W.mul_(2.0)  # in place: the version counter moves
    y2 = ttqkern.linear(x, W, r=8, backend="torch")
    assert lowrank_cache._entries[id(W)] is not entry
    torch.testing.assert_close(y2, 2 * y1, rtol=1e-3, atol=1e-3)
    del W, entry
    import gc

    gc.collect()
    assert len(lowrank_cache) == 0  # dropped with the weight


def test_linear_leading_dims_and_dtypes():
    W = torch.randn(20, 48)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, 3, 5, 48, dtype=dtype)
        y = ttqkern.linear(x, W, r=4, bits=8, group_size=16, backend="torch")
        assert y.shape == (2, 3, 5, 20) and y.dtype == dtype
        assert rel_err(y, x.float() @ W.T) < 2e-2
    assert ttqkern.linear(torch.randn(48), W, r=0).shape == (20,)
    assert ttqkern.linear(torch.randn(0, 48), W, r=0).shape == (0, 20)
