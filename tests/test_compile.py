"""TTQLinear under torch.compile: the stage ops are registered custom ops with fake impls."""

import torch
from torch import nn

import ttqkern


def test_custom_ops_pass_opcheck():
    x, W = torch.randn(5, 64), torch.randn(24, 64)
    torch.library.opcheck(torch.ops.ttqkern.act_scale.default, (x, 2.0, 1.0, 0.25, "torch"))
    for bits, sym, zero in ((3, False, "float"), (4, False, "int"), (2, True, "float")):
        D = torch.rand(64) + 0.5
        torch.library.opcheck(torch.ops.ttqkern.quantize.default, (W, D, bits, 32, sym, zero, 1.0, "torch"))
    pw = ttqkern.ops.quantize(W, bits=3, group_size=32)
    from ttqkern._dispatch import op_args

    args = (x, *op_args(pw), torch.rand(64) + 0.5, None, None, torch.randn(24), 3, 32, 24, 64, False, "float",
            pw.layout, "torch")  # fmt: skip
    torch.library.opcheck(torch.ops.ttqkern.qmatmul.default, args)


def test_dynamic_ttqlinear_compiles_without_graph_breaks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    model = ttqkern.quantize_model(model, mode="dynamic", r=4, bits=4, group_size=32, backend="torch")
    x = torch.randn(3, 64)
    eager = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager)


def test_prompt_mode_compiles_and_reuses_packed_weight():
    torch.manual_seed(0)
    model = ttqkern.quantize_model(nn.Sequential(nn.Linear(64, 32)), mode="prompt", r=0, backend="torch")
    compiled = torch.compile(model, backend="aot_eager")
    prompt = torch.randn(1, 8, 64)
    y = compiled(prompt)
    torch.testing.assert_close(y, model(prompt))
    step = torch.randn(1, 1, 64)
    before = model[0].quantize_calls
    torch.testing.assert_close(compiled(step), model(step))
    assert model[0].quantize_calls == before


def test_eager_fast_path_equals_custom_op_path():
    # Eager ops call the backend directly (no custom-op dispatch); the registered op must agree exactly.
    from ttqkern._dispatch import from_op_args, op_args

    torch.manual_seed(0)
    x, W, D = torch.randn(3, 64), torch.randn(24, 64), torch.rand(64) + 0.5
    for bits, sym, zero in ((3, False, "float"), (4, False, "int"), (2, True, "float")):
        pw = ttqkern.ops.quantize(W, D, bits=bits, group_size=24, sym=sym, zero=zero, backend="torch")
        outs = torch.ops.ttqkern.quantize.default(W, D, bits, 24, sym, zero, 1.0, "torch")
        pw_op = from_op_args(outs, fmt=ttqkern.QuantFormat(bits, 24, sym, zero), shape=(24, 64), layout=pw.layout)
        assert all(torch.equal(a, b) for a, b in zip(op_args(pw), op_args(pw_op), strict=True))
        assert (pw.group_size, pw.zero, pw.sym) == (pw_op.group_size, pw_op.zero, pw_op.sym)
        y = ttqkern.ops.qmatmul(x, pw, D, backend="torch")
        y_op = torch.ops.ttqkern.qmatmul.default(
            x, *op_args(pw), D, None, None, None, bits, 24, 24, 64, sym, pw.zero, pw.layout, "torch"
        )
        torch.testing.assert_close(y, y_op, rtol=0, atol=0)


def _prompt_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    return ttqkern.quantize_model(net, mode="prompt", r=4, bits=4, group_size=32, backend="torch")


def _graphs() -> int:
    """Graphs dynamo compiled since the last reset (its own count: one per compile or recompile)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_prompt_mode_compiles_once_for_many_prompts():
    """Issue 12, finding 19: every new prompt recompiled (a guard on the int ``quantize_calls``,
    then one on ``qweight is None``): 20-56 s per prefill on the bundled model."""
    import copy

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _prompt_model()
    eager = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager", dynamic=True)  # prompts of any length share a graph
    graphs = []
    for S in (8, 13, 5):
        prompt = torch.randn(2, S, 64)
        torch.testing.assert_close(compiled(prompt), eager(prompt))
        graphs.append(_graphs())
        for _ in range(2):  # decode steps reuse the prompt's packed weight
            step = torch.randn(2, 1, 64)
            torch.testing.assert_close(compiled(step), eager(step))
    assert graphs == [1, 2, 2], graphs  # one graph for prompts, one for decode steps (T = 1 is specialised)
    assert model[0].quantize_calls == eager[0].quantize_calls == 3
    assert torch.equal(model[0].qweight, eager[0].qweight)


def test_prompt_mode_same_length_prompts_compile_once_without_dynamic():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _prompt_model()
    compiled = torch.compile(model, backend="eager")
    for _ in range(3):
        compiled(torch.randn(1, 8, 64))
    assert _graphs() == 1 and model[0].quantize_calls == 3
