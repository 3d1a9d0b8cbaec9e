"""Test-time alpha search (`ttqkern.alpha_search`) against a brute-force reference."""

import pytest
import torch
from torch import nn

from ttqkern import QuantConfig, TTQLinear, quantize_model, reference
from ttqkern.alpha_search import AlphaSearch, token_subsample


def _brute_force(layer, x, grid, tokens):
    """Every alpha of the grid through the reference stages; the least output error on the same rows."""
    x2 = x.reshape(-1, x.shape[-1])
    idx = torch.linspace(0, x2.shape[0] - 1, tokens).round().long() if x2.shape[0] > tokens else torch.arange(len(x2))
    sub = x2[idx].double()
    W = layer.weight.double()
    errs = []
    for a in grid:
        D = reference.act_scale(x2, layer.p, layer.lam, a)
        pw = reference.quantize(W.float(), D, layer.bits, layer.group_size, layer.sym, layer.zero, layer.beta)
        Weff = reference.dequantized_weight(pw, D).double()
        errs.append(float((sub @ (W - Weff).T).square().sum()))
    best = min(range(len(grid)), key=errs.__getitem__)
    return grid[best], errs


@pytest.mark.parametrize("N,K,g,bits,T", [(24, 40, 16, 3, 37), (17, 64, 32, 4, 9), (33, 48, -1, 2, 70)])
def test_alpha_search_matches_brute_force_on_a_small_layer(N, K, g, bits, T):
    torch.manual_seed(N + K)
    lin = nn.Linear(K, N)
    layer = TTQLinear.from_linear(lin, r=2, bits=bits, group_size=g, mode="prompt", backend="torch")
    # outlier channels, as in LLM activations: they make the best alpha depend on the prompt
    x = torch.randn(T, K) * (1 + 20 * (torch.rand(K) < 0.1))
    grid = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    search = AlphaSearch(grid=grid, tokens=16)
    alpha, D, pw = search(layer, x)
    want, errs = _brute_force(layer, x, grid, 16)
    # the errors of the chosen and the reference-best alpha agree to rounding (ties broken either way)
    assert errs[grid.index(alpha)] <= errs[grid.index(want)] * (1 + 1e-6)
    torch.testing.assert_close(D, reference.act_scale(x, layer.p, layer.lam, alpha))
    ref_pw = reference.quantize(layer.weight, D, bits, g, False, "float", 1.0)
    torch.testing.assert_close(reference.dequantized_weight(pw, D), reference.dequantized_weight(ref_pw, D))


def test_alpha_search_inside_a_model_sets_last_alpha_and_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    x = torch.randn(1, 20, 32) * (1 + 10 * (torch.rand(32) < 0.2))
    search = AlphaSearch(grid=(0.0, 0.5), tokens=8)
    q = quantize_model(model, QuantConfig(bits=3, group_size=16, r=0, backend="torch"), requantizer=search)
    y = q(x)
    layers = [m for m in q.modules() if isinstance(m, TTQLinear)]
    assert all(m.requantizer is search and m.last_alpha in (0.0, 0.5) for m in layers)
    # each layer keeps the D of the alpha it chose, computed from its own input
    torch.testing.assert_close(layers[0].D, reference.act_scale(x[0], layers[0].p, layers[0].lam, layers[0].last_alpha))
    assert y.shape == (1, 20, 16) and torch.isfinite(y).all()


def test_alpha_search_never_worse_than_fixed_alpha_on_the_sampled_tokens():
    torch.manual_seed(1)
    layer = TTQLinear.from_linear(nn.Linear(64, 40), r=0, bits=3, group_size=32, alpha=0.25, backend="torch")
    x = torch.randn(50, 64) * (1 + 30 * (torch.rand(64) < 0.05))
    sub = token_subsample(x, 50)
    ref = sub @ layer.weight.T
    fixed = reference.act_scale(x, layer.p, layer.lam, 0.25)
    err_fixed = (layer._matmul(sub, layer._quantize(fixed), fixed) - layer.bias - ref).square().sum()
    _, D, pw = AlphaSearch(grid=(0.0, 0.25, 0.5), tokens=50)(layer, x)
    err = (layer._matmul(sub, pw, D) - layer.bias - ref).square().sum()
    assert err <= err_fixed * (1 + 1e-6)


@pytest.mark.parametrize("kw,msg", [({"grid": ()}, "non-empty"), ({"grid": (0.1, 1.5)}, r"in \[0, 1\]"),
                                    ({"tokens": 0}, "tokens must be an int >= 1")])  # fmt: skip
def test_alpha_search_rejects_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        AlphaSearch(**kw)


def test_requantizer_needs_ttq_and_a_callable():
    with pytest.raises(ValueError, match="needs method='ttq'"):
        quantize_model(nn.Sequential(nn.Linear(8, 8)), method="rtn", requantizer=AlphaSearch())
    with pytest.raises(TypeError, match="requantizer must be None or a callable"):
        TTQLinear(8, 8, r=0, requantizer=3)
