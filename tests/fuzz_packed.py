"""Fuzz cases for inconsistent `PackedWeight`s and bad `ops.pack` calls, run in a subprocess.

``python fuzz_packed.py BACKEND KIND:START:COUNT ...`` runs cases ``START .. START+COUNT-1``
of each ``KIND`` (``packed``: perturbed PackedWeights into `ops.qmatmul`; ``pack``: random
`ops.pack` calls with wrong shapes and types; ``valid``: consistent weights through
every kernel path, meant to run under ``NUMBA_BOUNDSCHECK=1``).  Cases are made
from their index alone (``random.Random(index)``), so the parent test and a person
reproducing a failure see the same case.

Protocol on stdout, one line each, flushed: ``BEGIN <kind> <i> <description>`` before a
case runs, ``END <kind> <i> <json>`` after it, so that a process killed by a signal still
says which case it was running.  The JSON says what happened: ``{"raised": type,
"message": ...}`` or ``{"ok": true}`` (no error: then the result was checked against
the torch backend on the same weight and ``"match"`` says whether it agreed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ttqkern

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ttqkern import ops  # noqa: E402
from ttqkern.backends.cpu_layouts import NUMBA_CPU  # noqa: E402
from ttqkern.format import PLANE_FIELDS, get_layout  # noqa: E402

FORMS = [(False, "float"), (False, "int"), (True, "float")]
# (N, K, group_size): fast layouts (whole words), a ragged last group, odd groups, one group per row
SHAPES = [(5, 37, 16), (8, 64, 32), (3, 70, 37), (4, 40, -1), (6, 96, 48)]
BASES = [(bits, sym, zero, N, K, g) for bits in (2, 3, 4, 8) for sym, zero in FORMS for N, K, g in SHAPES]
TENSOR_FIELDS = PLANE_FIELDS  # qweight, qweight_hi, scales, mins, zeros
SCALAR_FIELDS = ("shape", "bits", "group_size", "sym", "zero", "layout")


def base_weight(i: int):
    """A consistent canonical weight (torch backend: no kernel compiled for making cases)."""
    bits, sym, zero, N, K, g = BASES[i % len(BASES)]
    gen = torch.Generator().manual_seed(i)
    W = torch.randn(N, K, generator=gen)
    D = torch.rand(K, generator=gen) + 0.5
    return ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, backend="torch"), D


def in_layout(pw, i: int):
    """Every other case (alternating per base as well) in the CPU decode layout ``numba_cpu``
    (blocked, lut or plain kinds: `ttqkern.backends.cpu_layouts`), the rest canonical."""
    if (i // len(BASES) + i) % 2 == 0:
        return pw
    return get_layout(NUMBA_CPU).from_canonical(pw)


# --- perturbations: each returns (field name, new value) ---------------------------------


def _tensor_variants(t: torch.Tensor, rng: random.Random):
    """Wrong versions of one tensor field (any rank): shapes, dtypes, types, devices, layouts."""
    shp = tuple(t.shape)
    R, C = shp[0], shp[-1]
    mid = shp[1:-1]

    def sized(r, c):
        return torch.zeros(r, *mid, c, dtype=t.dtype)

    other_int = [d for d in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) if d != t.dtype]
    other_float = [d for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64) if d != t.dtype]
    return [
        lambda: sized(R + 1, C),
        lambda: sized(max(R - 1, 0), C),
        lambda: sized(R * 8, C),
        lambda: sized(R, C + 1),
        lambda: sized(R, max(C - 1, 0)),
        lambda: sized(R, 2 * C + 1),
        lambda: sized(R, max(C // 2, 1) if C > 1 else 3),
        lambda: torch.zeros(t.numel(), dtype=t.dtype),
        lambda: torch.zeros(1, *shp, dtype=t.dtype),
        lambda: torch.zeros(*shp[:-2], shp[-1], shp[-2], dtype=t.dtype) if mid else torch.zeros(R, C, 1, dtype=t.dtype),
        lambda: torch.zeros(1, 1, dtype=t.dtype),
        lambda: torch.zeros(0, 0, dtype=t.dtype),
        lambda: t.to(rng.choice(other_int)),
        lambda: t.to(rng.choice(other_float)),
        lambda: t.to(torch.bool),
        lambda: t.to(torch.complex64),
        t.numpy,
        t.tolist,
        lambda: 7,
        lambda: "scales",
        lambda: t.to("meta"),
        t.to_sparse,
        lambda: t.mT.contiguous() if shp[-2] != C else sized(R, C + 2),
    ]


def _present_when_absent(pw, field: str):
    """A plausible tensor for a field that must be None (what another form would hold)."""
    N, G = pw.N, pw.num_groups
    return {
        "qweight_hi": torch.zeros(N, max(pw.qweight.shape[1] // 2, 1), dtype=torch.uint8),
        "mins": torch.zeros(N, G),
        "zeros": torch.zeros(N, G, dtype=torch.int32),
        "qweight": torch.zeros(N, 4, dtype=torch.uint8),
        "scales": torch.ones(N, G),
    }[field]


def _scalar_variants(pw, field: str):
    N, K = pw.shape
    return {
        "shape": [(N + 1, K), (N - 1, K), (N, K + 1), (N, K - 1), (N * 8, K), (N, 2 * K), (K, N), (0, K), (N, 0),
                  [N, K], (N, K, 1), (N,), (-N, K), (N, float(K)), (True, K), None, "NK", (np.int64(N), K)],
        "bits": [b for b in (2, 3, 4, 8) if b != pw.bits] + [0, 1, 5, 6, 7, 16, -4, 4.0, "4", True, None],
        "group_size": [pw.group_size * 2, max(pw.group_size // 2, 1), pw.group_size + 1, max(pw.group_size - 1, 1),
                       1, 8, 64, K + 1, 0, -1, -32, float(pw.group_size), None, True],
        "sym": [not pw.sym, 1, 0, "yes", None],
        "zero": ["int" if pw.zero == "float" else "float", "half", None, 0, "INT"],
        "layout": ["interleaved", "", None, 5, ["canonical"]],
    }[field]  # fmt: skip


def perturb(pw, rng: random.Random):
    """One perturbation of the consistent weight ``pw``: (description, field, new value, names a
    message may use to point at the culprit)."""
    field = rng.choice(TENSOR_FIELDS + SCALAR_FIELDS + TENSOR_FIELDS)  # tensors twice as often
    if field in TENSOR_FIELDS:
        t = getattr(pw, field)
        if t is None:
            value, what = _present_when_absent(pw, field), "present where the form has none"
        elif rng.random() < 0.1:
            value, what = None, "missing"
        else:
            variants = _tensor_variants(t, rng)
            k = rng.randrange(len(variants))
            value, what = variants[k](), f"variant {k}"
        return f"{field} {what}", field, value, {f"pw.{field}"}
    value = rng.choice(_scalar_variants(pw, field))
    # a scalar decides what every tensor must look like: a message may name either
    names = {f"pw.{field}", field, *(f"pw.{f}" for f in TENSOR_FIELDS)}
    return f"{field}={value!r}", field, value, names


def _k_of(pw, default: int) -> int:
    s = pw.shape
    if isinstance(s, tuple) and len(s) == 2 and isinstance(s[1], int) and not isinstance(s[1], bool) and s[1] >= 0:
        return s[1]
    return default


def reference_y(x, pw, D, lowrank=None, bias=None):
    return ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend="torch")


def _close(y, ref) -> bool:
    if y.shape != ref.shape or y.dtype != ref.dtype:
        return False
    scale = float(ref.float().nan_to_num(0, 0, 0).abs().max().clamp_min(1.0)) if ref.numel() else 1.0
    return bool(torch.allclose(y.float(), ref.float(), rtol=0, atol=1e-4 * scale, equal_nan=True))


# --- the three kinds of case ---------------------------------------------------------------


def case_packed(i: int, backend: str):
    rng = random.Random(i)
    pw, D = base_weight(i)
    pw = in_layout(pw, i)
    desc, field, value, names = perturb(pw, rng)
    changes = {field: value}
    if rng.random() < 0.25:  # two perturbations at once (made from the consistent weight)
        d2, f2, v2, n2 = perturb(pw, rng)
        if f2 != field:
            changes[f2] = v2
            desc, names = f"{desc} + {d2}", names | n2
    bad = dataclasses.replace(pw, **changes)
    K = _k_of(bad, pw.K)
    x = torch.randn(rng.choice([1, 3, 17]), K)
    Dk = D if K == pw.K else None
    desc = f"{desc} (base bits={pw.bits} g={pw.group_size} {pw.form.name} shape={pw.shape} {pw.layout})"
    return desc, names, lambda: (ops.qmatmul(x, bad, Dk, backend=backend), lambda: reference_y(x, bad, Dk))


def case_pack(i: int, backend: str):
    """A random `ops.pack` call with (usually) something wrong in it."""
    rng = random.Random(10_000 + i)
    bits = rng.choice([2, 3, 4, 8])
    sym, zero = rng.choice(FORMS)
    N, K, g = rng.choice(SHAPES)
    gs = K if g == -1 else g
    G = -(-K // gs)
    lo, hi = (-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1) if sym else (0, 2**bits - 1)
    args = dict(q=torch.randint(lo, hi + 1, (N, K)), bits=bits, group_size=g, scales=torch.rand(N, G) + 0.1)
    if not sym:
        args["mins" if zero == "float" else "zeros"] = (
            torch.randn(N, G) if zero == "float" else torch.randint(0, 2**bits, (N, G), dtype=torch.int32)
        )
    args["sym"] = sym
    target = rng.choice(["q", "scales", "mins", "zeros", "both", "codes", "sym"])
    wrong_shapes = [(N + 1, G), (N, G + 1), (N, max(G - 1, 0)), (1, 1), (G, N) if G != N else (N, G + 2), (N * G,),
                    (1, N, G), (0, G)]  # fmt: skip
    if target == "q":
        args["q"] = rng.choice([torch.randint(lo, hi + 1, (N, K, 1)), torch.randint(lo, hi + 1, (N * K,)),
                                args["q"].float(), args["q"].numpy(), args["q"].to(torch.bool), None])  # fmt: skip
    elif target in ("scales", "mins", "zeros"):
        if target != "scales" and target not in args:  # the other offsets tensor: the form changes
            args.pop("mins", None), args.pop("zeros", None)
        shape = rng.choice(wrong_shapes)
        dtype = torch.int32 if target == "zeros" else torch.float32
        args[target] = rng.choice(
            [torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype),
             torch.zeros(N, G, dtype=torch.complex64), torch.zeros(N, G).numpy(), torch.zeros(N, G, device="meta"),
             torch.zeros(N, G, dtype=torch.float32 if target == "zeros" else torch.bool)]
        )  # fmt: skip
    elif target == "both":
        args["mins"], args["zeros"] = torch.zeros(N, G), torch.zeros(N, G, dtype=torch.int32)
    elif target == "codes":
        args["q"] = args["q"].clone()
        args["q"][rng.randrange(N), rng.randrange(K)] = rng.choice([hi + 1, lo - 1, 1000, -1000])
    else:
        args["sym"] = not sym
    desc = f"pack {target} (bits={bits} g={g} sym={sym} zero={zero} N={N} K={K})"
    names = {"both": {"mins", "zeros"}, "sym": {"sym", "mins", "zeros"}}.get(target, {target})

    def run():
        pw = ops.pack(args.pop("q"), **args)
        x = torch.randn(2, pw.K)
        return ops.qmatmul(x, pw, backend=backend), lambda: reference_y(x, pw, None)

    return desc, names, run


def case_valid(i: int, backend: str):
    """A consistent weight through every kernel path (T decides the path; g the layout)."""
    rng = random.Random(20_000 + i)
    pw, D = base_weight(i)
    T = [1, 2, 5, 16, 17, 40][i % 6]
    x = torch.randn(T, pw.K) * 3
    if rng.random() < 0.5:  # value perturbations keep a weight consistent: random codes, offsets
        fields = {"qweight": torch.randint(0, 256, pw.qweight.shape, dtype=torch.uint8),
                  "scales": torch.randn(pw.scales.shape)}  # fmt: skip
        if rng.random() < 0.3:  # zero and non-finite scales are values a hand-built weight may hold
            fields["scales"].view(-1)[:: rng.choice([2, 5])] = rng.choice([0.0, float("nan")])
        if pw.zeros is not None:
            fields["zeros"] = torch.randint(-300, 300, pw.zeros.shape, dtype=torch.int32)
        pw = dataclasses.replace(pw, **fields)
    pw = in_layout(pw, i)  # values perturbed in the canonical form: the conversion keeps them consistent
    r = rng.choice([0, 2])
    lowrank = (torch.randn(r, pw.K), torch.randn(pw.N, r)) if r else None
    bias = torch.randn(pw.N) if rng.random() < 0.5 else None
    path = rng.choice(["default", "buffered", "prefill"]) if backend == "numba" else "default"
    desc = f"valid bits={pw.bits} g={pw.group_size} {pw.form.name} shape={pw.shape} {pw.layout} T={T} r={r} path={path}"

    def run():
        W = torch.randn(pw.N, pw.K)
        Dn = ops.act_scale(x, backend=backend)  # act_scale and quantize kernels too
        ops.quantize(W, Dn, bits=pw.bits, group_size=pw.group_size, sym=pw.sym, zero=pw.zero, backend=backend)
        with _override(pw, T, PATH_CONFIGS[path]):
            y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend=backend)
        return y, lambda: reference_y(x, pw, D, lowrank, bias)

    return desc, None, run


# Numba kernel paths forced through a tuned-config override of qmatmul: the buffered GEMM is not reached
# by the defaults; "prefill" dequantizes + BLAS for every family
PATH_CONFIGS = {
    "default": {},
    "buffered": {"FUSED_MAX_T": 0, "DEQUANT_MIN_T": 1 << 20},
    "prefill": {"PACKED_MAX_T": 0, "DEQUANT_MIN_T": 1},
}


def _override(pw, T: int, cfg: dict):
    """``cfg`` as the tuned qmatmul config of ``pw``'s shape at T tokens (nothing when empty)."""
    import contextlib

    if not cfg:
        return contextlib.nullcontext()
    from ttqkern.backends.numba import config
    from ttqkern.tuning import store

    key = config.key("qmatmul", bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=pw.K)
    return store.override("cpu", key, cfg)


# Consistent weights that reach every compiled entry point of the Numba backend and each of its loop
# structures, with ragged N, K, groups and token tiles: run under NUMBA_BOUNDSCHECK=1 (few enough that a
# cold bounds-checked build stays short).  (bits, sym, zero, N, K, g, T, layout, qmatmul config, ISA, r, bias)
PATH_CASES = [
    (4, False, "float", 21, 200, 16, 1, "numba_cpu", {}, None, 2, True),  # blocked vpermps, one token, 8 groups/chunk
    (4, False, "int", 13, 300, 256, 5, "canonical", {"K_TILE": 1}, None, 0, False),  # token + K tiles, 2 chunks/group
    (8, True, "float", 11, 300, 64, 6, "canonical", {"K_TILE": 2, "SERIAL_MAX": 0}, None, 0, True),  # K tiles, parallel
    (3, False, "float", 9, 96, 32, 2, "numba_cpu", {"SERIAL_MAX": 0}, None, 2, True),  # nibble-widened, parallel
    (8, True, "float", 11, 130, 64, 7, "canonical", {}, None, 0, True),  # blocked 8-bit, ragged token tile
    (4, False, "float", 10, 256, 64, 1, "canonical", {}, "portable", 2, False),  # blocked, portable micro-kernel
    (2, True, "float", 19, 160, 16, 5, "canonical", {}, None, 0, True),  # lut, one plane
    (3, True, "float", 7, 96, 32, 1, "numba_cpu", {"SERIAL_MAX": 0}, None, 2, False),  # lut, two planes, parallel
    (4, False, "float", 6, 120, 40, 3, "numba_cpu", {}, None, 2, True),  # words (g * b not whole vectors)
    (3, False, "float", 6, 96, 48, 2, "numba_cpu", {}, None, 2, False),  # words, two planes
    (8, False, "int", 6, 96, 48, 16, "canonical", PATH_CONFIGS["buffered"], None, 0, True),
    (2, False, "float", 8, 64, 32, 2, "numba_cpu", PATH_CONFIGS["prefill"], None, 2, True),  # prefill
    (2, False, "float", 4, 40, 40, 16, "numba_cpu", {}, None, 0, False),  # generic (groups not whole words)
    (2, False, "float", 3, 70, 37, 5, "canonical", PATH_CONFIGS["prefill"], None, 2, False),
    (2, True, "float", 3, 70, 37, 1, "canonical", PATH_CONFIGS["buffered"], None, 2, False),
]


def numba_entry_points() -> dict:
    """``{module.name: dispatcher}`` of every Numba function the backend calls from Python (not inlined)."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import ttqkern.backends.numba as nb

    out = {}
    for m in pkgutil.iter_modules(nb.__path__):
        mod = importlib.import_module(f"{nb.__name__}.{m.name}")
        for name, v in vars(mod).items():
            inlined = isinstance(v, CPUDispatcher) and v.targetoptions.get("inline") == "always"
            if isinstance(v, CPUDispatcher) and v.__module__ == mod.__name__ and not inlined:
                out[f"{m.name}.{name}"] = v
    return out


def case_path(i: int, backend: str):
    """Entry ``i`` of `PATH_CASES`: a quantized weight through the kernel path its row names."""
    import contextlib

    from ttqkern.backends.numba import isa

    bits, sym, zero, N, K, g, T, layout, cfg, which, r, with_bias = PATH_CASES[i]
    gen = torch.Generator().manual_seed(30_000 + i)
    W, x, D = torch.randn(N, K, generator=gen), torch.randn(T, K, generator=gen) * 3, torch.rand(K, generator=gen) + 0.5
    pw = ops.quantize(W, D, bits=bits, group_size=g, sym=sym, zero=zero, backend="torch")
    if layout != "canonical":
        pw = get_layout(layout).from_canonical(pw)
    lowrank = (torch.randn(r, K, generator=gen), torch.randn(N, r, generator=gen)) if r else None
    bias = torch.randn(N, generator=gen) if with_bias else None
    desc = f"path bits={bits} sym={sym} zero={zero} N={N} K={K} g={g} T={T} {layout} {cfg} isa={which} r={r}"

    def run():
        with contextlib.ExitStack() as stack:
            if which is not None:
                stack.enter_context(isa.forced(which))
            stack.enter_context(_override(pw, T, cfg))
            Dn = ops.act_scale(x, backend=backend)
            ops.quantize(W, Dn, bits=bits, group_size=g, sym=sym, zero=zero, backend=backend)
            y = ops.qmatmul(x, pw, D, lowrank=lowrank, bias=bias, backend=backend)
        return y, lambda: reference_y(x, pw, D, lowrank, bias)

    return desc, None, run


KINDS = {"packed": case_packed, "pack": case_pack, "valid": case_valid, "path": case_path}


def main(backend: str, batches: list[tuple[str, int, int]]) -> None:
    import warnings

    warnings.simplefilter("ignore")  # complex casts, numpy: the outcome is what counts here
    for kind, start, count in batches:
        make = KINDS[kind]
        for i in range(start, start + count):
            desc, names, run = make(i, backend)
            print(f"BEGIN {kind} {i} {desc}", flush=True)
            try:
                y, ref = run()
                out = {"ok": True, "match": _close(y, ref())}
            except Exception as e:
                out = {"raised": type(e).__name__, "message": str(e)}
                if kind == "valid":
                    out["traceback"] = traceback.format_exc()
            if names is not None:
                out["names"] = sorted(names)
            print(f"END {kind} {i} {json.dumps(out)}", flush=True)
    if backend == "numba":  # which compiled entry points ran (and with how many specializations)
        used = {name: len(d.signatures) for name, d in numba_entry_points().items()}
        print(f"KERNELS {json.dumps(used)}", flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: nothing of value is left to flush


if __name__ == "__main__":
    # python fuzz_packed.py BACKEND KIND:START:COUNT [KIND:START:COUNT ...]
    if os.environ.get("TRITON_INTERPRET") == "1":
        from interpreter_speedup import install  # as in the suite's own process (tests/conftest.py)

        install()
    main(sys.argv[1], [(k, int(a), int(n)) for k, a, n in (b.split(":") for b in sys.argv[2:])])
