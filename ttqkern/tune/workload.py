"""What the kernel tuner runs for a case, and how a candidate's answer is checked.

A case's op is run through its backend's stage method (`Backend.act_scale`,
`quantize` or `qmatmul`) on inputs built here once -- the same path a model's
layer takes, without `ttqkern.ops`' per-call validation -- and every candidate's
answer is compared with the *torch* backend's on the same inputs, within the
backend's declared `Tolerances` (docs/spec.md §6).  qmatmul runs as TTQ does:
D, a rank-16 low-rank pair and a bias.  A wrong answer is a kernel bug for that
config; the tuner fails the trial and never stores the config.

On the CPU, an op whose inputs fit the last-level cache is run over rotating
copies of them (twice the cache in all), so every call reads its weight from
memory as a decode step does; on a GPU ``do_bench`` flushes L2 instead.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import backends, format, ops
from ..quant import ActScaling, QuantFormat

RANK = 16  # the low-rank part measured with qmatmul, as TTQ runs it
MAX_COPIES = 64


@dataclass
class Workload:
    """``run()`` calls the op once (next input copy); ``check(out)`` -> '' or why ``out`` is wrong.

    ``first()`` runs on the inputs the reference was computed from.  ``nbytes``:
    bytes one call must move at least (the roofline's numerator).
    """

    run: Callable[[], object]
    first: Callable[[], object]
    check: Callable[[object], str]
    nbytes: int
    copies: int = 1


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


def rel_err(y, ref) -> float:
    """``||y - ref|| / ||ref||`` in fp32."""
    y, ref = y.float(), ref.float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def _copies(nbytes: int, device: torch.device) -> int:
    if device.type != "cpu":
        return 1
    from .timing import last_level_cache_bytes

    return max(1, min(MAX_COPIES, -(-2 * last_level_cache_bytes() // max(nbytes, 1))))


def _cycle(fn, items):
    it = itertools.cycle(items)
    return lambda: fn(next(it))


def build(case, device: torch.device, dtype: torch.dtype) -> Workload:
    """The `Workload` of ``case`` (a `ttqkern.tune.tuner.Case`) on ``device`` with activations in ``dtype``."""
    b = backends.get(case.backend)
    tol = b.tolerances
    g = torch.Generator(device="cpu").manual_seed(0)
    scaling = ActScaling(0.25, 1.0, 2.0)

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dt)

    esize = torch.empty(0, dtype=dtype).element_size()
    stage = b.params.ops[case.op].stage_of(case.op)
    if stage == "act_scale":
        x = randn(case.T, case.K)
        ref = ops.act_scale(x, p=scaling.p, lam=scaling.lam, alpha=scaling.alpha, backend="torch")
        xs = [x] + [x.clone() for _ in range(_copies(x.nbytes, device) - 1)]

        def check(D):
            err = float(((D - ref).abs() / ref.abs().clamp_min(1e-30)).max())
            ok = err <= tol.act_scale_rtol
            return (
                "" if ok else f"act_scale differs from the torch backend: max rel err {err:.3g} > {tol.act_scale_rtol}"
            )

        return Workload(_cycle(lambda t: b.act_scale(t, scaling), xs), lambda: b.act_scale(x, scaling), check,
                        x.nbytes + 4 * case.K, len(xs))  # fmt: skip

    fmt = QuantFormat(case.bits, case.group).resolved(case.K)
    W = randn(case.N, case.K, scale=case.K**-0.5, dt=torch.float32)
    D = ops.act_scale(randn(64, case.K), backend="torch")
    ref_pw = ops.quantize(W, D, bits=fmt.bits, group_size=fmt.group_size, backend="torch")
    if stage == "quantize":
        ref = format.dequantize(ref_pw)
        Ws = [W] + [W.clone() for _ in range(_copies(W.nbytes, device) - 1)]

        def check(pw):
            deq = format.dequantize(pw.canonical())
            step = ref_pw.scales.float().abs().max()
            diff = (deq - ref).abs()
            off = float((diff > 1e-5 * ref.abs().max() + 1e-30).float().mean())
            worst = float(diff.max())
            if off > tol.codes_mismatch or worst > 1.01 * float(step):
                return (f"quantize differs from the torch backend: {off:.2%} of the weights differ "
                        f"(allowed {tol.codes_mismatch:.2%}), worst by {worst:.3g} (one step: {float(step):.3g})")  # fmt: skip
            return ""

        return Workload(_cycle(lambda w: b.quantize(w, D, fmt), Ws), lambda: b.quantize(W, D, fmt), check,
                        W.nbytes + ref_pw.nbytes, len(Ws))  # fmt: skip

    pw = ref_pw if format.CANONICAL in b.layouts else format.convert(ref_pw, b.layouts[0])
    x = randn(case.T, case.K)
    A, B, bias = randn(RANK, case.K, scale=case.K**-0.5), randn(case.N, RANK, scale=0.1), randn(case.N)
    ref = ops.qmatmul(x, ref_pw, D, lowrank=(A, B), bias=bias, backend="torch")
    limit = tol.output_tol(dtype)
    pws = [pw] + [_clone_packed(pw) for _ in range(_copies(pw.nbytes, device) - 1)]

    def check(y):
        err = _rel(y, ref)
        return (
            ""
            if err <= limit
            else f"qmatmul differs from the torch backend: max err {err:.3g} > {limit:g} (x dtype {dtype})"
        )

    nbytes = pw.nbytes + x.nbytes + case.T * case.N * esize + A.nbytes + B.nbytes + bias.nbytes
    return Workload(_cycle(lambda p: b.qmatmul(x, p, D, A, B, bias), pws), lambda: b.qmatmul(x, pw, D, A, B, bias),
                    check, nbytes, len(pws))  # fmt: skip


def _clone_packed(pw):
    """A copy of ``pw`` in its own memory (same layout and fields)."""
    return dataclasses.replace(pw, **{name: t.clone() for name, t in pw.tensors().items()})
