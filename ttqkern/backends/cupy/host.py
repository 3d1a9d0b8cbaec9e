"""Host side of the CuPy backend: buffers, grids and kernel arguments, in torch only.

Each op builds a list of `Launch` records (kernel, template parameters, grid, block,
shared memory, arguments in signature order) and hands it to ``run``: on a GPU that is
`kernels.launch` (CuPy, torch's current stream); in CPU tests it is
`emulator.run` (the same kernel bodies compiled for the host).  So everything here --
shapes, paddings, splits, the decode / prefill choice, the torch ops of the prefill
path -- runs in CI exactly as it runs on a GPU.

Inputs were validated by `ttqkern.ops` (contiguous, one device, consistent shapes,
dimensions >= 1); the buffer assumptions of the kernels are asserted in `_check`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ...format import PackedWeight
from ...quant import QuantFormat
from . import config
from . import layout as L

# kernel -> argument kinds in signature order: p pointer, i int32, u uint32, f float32
SIGNATURES = {
    "decode": "p" * 12 + "i" * 17,
    "prologue": "pppppppp" + "i" * 8,
    "colnorm": "pp" + "iiiii" + "f",
    "scale": "pp" + "iii" + "fff",
    "quantize": "ppppp" + "i" * 9 + "f" + "uuu",
    "dequant": "ppp" + "iiii" + "uuu",
}
ELEM = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}
XMODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}  # fp32 x: bf16 hi + mid + lo operands
FORM_FLOAT, FORM_INT, FORM_SYM = 0, 1, 2
P_GENERIC, P_ONE, P_TWO, P_INF = 0, 1, 2, 3


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel<tparams>`` on ``grid`` x ``block`` threads."""

    kernel: str
    tparams: tuple
    grid: tuple[int, int, int]
    block: int
    smem: int
    args: tuple

    def __post_init__(self):
        sig = SIGNATURES[self.kernel]
        assert len(self.args) == len(sig), f"{self.kernel}: {len(self.args)} args for signature {sig}"
        assert all(0 < d < 2**31 for d in self.grid) and self.grid[1] < 65536 and self.grid[2] < 65536
        assert 32 <= self.block <= 1024 and self.block % 32 == 0 and 0 <= self.smem <= 48 * 1024

    @property
    def name(self) -> str:
        """NVRTC name expression, e.g. ``ttq_decode<4, 0, 1, 0, 2>``."""
        tp = ", ".join(str(p) if isinstance(p, int) else f"ttq::{p}" for p in self.tparams)
        return f"ttq_{self.kernel}<{tp}>" if self.tparams else f"ttq_{self.kernel}"


Runner = Callable[[Sequence[Launch]], None]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def fastdiv(d: int) -> tuple[int, int, int]:
    """``(d, m, l)`` with ``n // d == (umulhi(m, n) + n) >> l`` for every 32-bit n (d >= 1)."""
    shift = (d - 1).bit_length()
    m = ((1 << 32) * ((1 << shift) - d)) // d + 1
    assert 0 < m < 1 << 32
    return d, m, shift


def form_of(sym: bool, zero: str) -> int:
    return FORM_SYM if sym else (FORM_INT if zero == "int" else FORM_FLOAT)


def _check(t: torch.Tensor | None, numel: int, dtype: torch.dtype, name: str, align: int = 4) -> None:
    """The one place the kernels' buffer assumptions are asserted: size, dtype, density, alignment."""
    if t is None:
        return
    assert t.dtype == dtype and t.is_contiguous() and t.numel() == numel, (
        f"{name}: {t.dtype} {tuple(t.shape)} contiguous={t.is_contiguous()}, kernel expects {dtype} x {numel}"
    )
    assert t.data_ptr() % align == 0, f"{name} must be {align}-byte aligned"


def _workspace(device, parts: dict[str, tuple[int, torch.dtype]]) -> dict[str, torch.Tensor]:
    """One allocation carved into 16-byte aligned 1-D views (32-bit element types)."""
    offs, total = {}, 0
    for name, (n, _) in parts.items():
        offs[name] = total
        total += -(-max(n, 1) // 4) * 4  # whole 16-byte units of 4-byte elements
    buf = torch.empty(total, dtype=torch.int32, device=device)
    return {name: buf[offs[name] : offs[name] + n].view(dt) for name, (n, dt) in parts.items()}


# ---- act_scale -----------------------------------------------------------------------------
def act_scale(x: torch.Tensor, p: float, lam: float, alpha: float, run: Runner) -> torch.Tensor:
    """Stage 1: x ``[T, K]`` fp32/fp16/bf16 -> D fp32 ``[K]`` (two launches: column sums, then D)."""
    T, K = x.shape
    pmode = P_INF if math.isinf(p) else {1.0: P_ONE, 2.0: P_TWO}.get(float(p), P_GENERIC)
    cfg = config.params("act_scale", x.device, T=T, K=K)
    kblocks = cdiv(K, 256)
    tsplit = cfg["TSPLIT"] or max(1, min(cdiv(2 * config.num_sms(x.device), kblocks), cdiv(T, 64)))
    t_per = cdiv(T, tsplit)
    tsplit = cdiv(T, t_per)
    part = torch.empty(2, tsplit, K, dtype=torch.float32, device=x.device)  # column max, sum (|x| / max)^p
    D = torch.empty(K, dtype=torch.float32, device=x.device)
    _check(x, T * K, x.dtype, "x")
    p_arg = 1.0 if pmode == P_INF else float(p)
    run([
        Launch("colnorm", (ELEM[x.dtype],), (kblocks, tsplit, 1), 256, 0, (x, part, T, K, t_per, tsplit, pmode, p_arg)),
        Launch("scale", (), (1, 1, 1), 1024, 0, (part, D, K, tsplit, pmode, p_arg, float(lam), float(alpha))),
    ])  # fmt: skip
    return D


# ---- quantize ------------------------------------------------------------------------------
def quantize_units(geo: L.Geometry) -> tuple[int, int]:
    """``(UC, UG)``: chunks and groups per quantize block (whole chunks that are whole groups)."""
    U = math.lcm(geo.g, geo.KCH)
    if U >= geo.KPAD:
        return geo.KC, geo.G
    return U // geo.KCH, U // geo.g


def quantize(
    W: torch.Tensor, D: torch.Tensor | None, bits: int, g: int, sym: bool, zero: str, beta: float, run: Runner
) -> PackedWeight:
    """Stages 2-3: W ``[N, K]`` fp32/fp16/bf16, D fp32 ``[K]`` | None -> `PackedWeight` in ``cupy_mma``."""
    N, K = W.shape
    geo = L.Geometry(N, K, bits, g)
    form = form_of(sym, zero)
    dev = W.device
    shapes = geo.shapes(sym, zero)
    qw = torch.empty(shapes["qweight"], dtype=torch.int32, device=dev)
    scales = torch.empty(shapes["scales"], dtype=torch.float32, device=dev)
    mins = torch.empty(shapes["mins"], dtype=torch.float32, device=dev) if "mins" in shapes else None
    zeros = torch.empty(shapes["zeros"], dtype=torch.int32, device=dev) if "zeros" in shapes else None
    zp = mins if mins is not None else zeros
    UC, UG = quantize_units(geo)
    _check(W, N * K, W.dtype, "W")
    _check(D, K, torch.float32, "D")
    run([
        Launch("quantize", (bits, ELEM[W.dtype]), (geo.NT, cdiv(geo.KC, UC), 1), 256, 16 * UG * 2 * 4,
               (W, D, qw, scales, zp, N, K, geo.KC, geo.G, g, UC, UG, form, int(D is not None), float(beta),
                *fastdiv(g))),
    ])  # fmt: skip
    return PackedWeight.build(QuantFormat(bits, g, sym, zero, beta), (N, K), qweight=qw, scales=scales, offsets=zp,
                              layout=L.NAME)  # fmt: skip


# ---- qmatmul -------------------------------------------------------------------------------
def _check_weight(pw: PackedWeight, geo: L.Geometry) -> None:
    """The buffers the decode and dequantize kernels read of a ``cupy_mma`` weight."""
    _check(pw.qweight, geo.NT * (geo.CODE_WORDS + geo.GQ * 16), torch.int32, "qweight", align=16)
    _check(pw.scales, geo.NT * geo.G * 32, torch.float32, "scales", align=16)
    # the decode kernel addresses the zero codes with 32-bit offsets (fewer registers in its K loop)
    assert pw.qweight.numel() < 2**31, f"qweight: {pw.qweight.numel()} words, the kernels address fewer than 2^31"


def dequantize(pw: PackedWeight, dtype: torch.dtype, run: Runner) -> torch.Tensor:
    """``s * (u - c) + m0`` of a ``cupy_mma`` weight (bit for bit `format.dequantize`) as a dense
    ``[N, K]`` tensor of ``dtype``."""
    geo = L.Geometry(pw.N, pw.K, pw.bits, pw.group_size)
    out = torch.empty(pw.N, pw.K, dtype=dtype, device=pw.device)
    _check_weight(pw, geo)
    run([
        Launch("dequant", (pw.bits, ELEM[dtype]), (geo.NT, geo.KC, 1), 128, 0,
               (pw.qweight, pw.scales, out, pw.N, pw.K, geo.KC, geo.G, *fastdiv(pw.group_size))),
    ])  # fmt: skip
    return out


def uses_decode_kernel(pw: PackedWeight, T: int, device) -> bool:
    """Decode path (packed MMA kernel) or prefill path (dequantize + cuBLAS) for T tokens."""
    cfg = config.params("qmatmul", device, bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=pw.K)
    return pw.group_size % 16 == 0 and T < cfg["DEQUANT_MIN_T"]


@dataclass(frozen=True)
class DecodeSetup:
    """Template parameters and block shape of one decode call (everything but the tensors)."""

    RT: int
    WR: int
    NT: int
    tg: int
    xm: int
    xe: str
    KX: int
    WK: int  # 0: auto

    def names(self, bits: int) -> tuple[str, str]:
        tp = f"ttq::{self.xe}"
        return f"ttq_prologue<{self.xm}, {tp}>", f"ttq_decode<{bits}, {self.xm}, {self.NT}, {self.tg}, {self.RT}>"


def decode_setup(pw: PackedWeight, T: int, dtype: torch.dtype, device) -> DecodeSetup:
    cfg = config.params("decode", device, bits=pw.bits, group=pw.group_size, T=T, N=pw.N, K=pw.K)
    nt = 1 if T <= 8 or dtype == torch.float32 else 2  # fp32: three B planes, 8 tokens per block
    return DecodeSetup(
        RT=min(cfg["RT"], config.rt_cap(pw.bits, XMODE[dtype], nt)), WR=cfg["WR"], NT=nt,
        tg=int(pw.group_size % 64 != 0), xm=XMODE[dtype], xe=ELEM[dtype], KX=cfg["KX"], WK=cfg["WK"],
    )  # fmt: skip


def decode_launches(x, pw, D, A, B, bias, y) -> list[Launch]:
    """The prologue and decode launches of ``y = qmatmul(x, pw, ...)`` (A / B: fused rank or None)."""
    T, K = x.shape
    N, g, bits = pw.N, pw.group_size, pw.bits
    geo = L.Geometry(N, K, bits, g)
    dev = x.device
    R = 0 if A is None else A.shape[0]
    st = decode_setup(pw, T, x.dtype, dev)
    RT, WR, NT = st.RT, st.WR, st.NT
    TS, TP = 8 * NT, cdiv(T, 16) * 16
    KB = cdiv(geo.KPAD, 256)
    UW = 6 if x.dtype == torch.float32 else 2
    NBX = cdiv(K, st.KX) if R else 0
    ws = _workspace(dev, {
        "xb": (KB * TP * 4 * 16 * UW, torch.int32), "xs1": (KB * 16 * TP, torch.float32),
        "xs4": (KB * 4 * TP, torch.float32), "xa": (NBX * TP * R, torch.float32),
        "fl": (KB * TP // 16, torch.int32),
    })  # fmt: skip
    gx, gz = cdiv(geo.NT, WR * RT), cdiv(T, TS)
    wk = st.WK
    if wk == 0:  # about 16 warps per SM
        wk = cdiv(16 * config.num_sms(dev), gx * gz * WR)
        wk = 1 << max(0, (wk - 1).bit_length())
    wk = max(1, min(wk, config.MAX_WARPS // WR, geo.KC))
    cps = cdiv(geo.KC, wk)
    wk = cdiv(geo.KC, cps)
    smem = (wk * WR * RT * NT * 128 + TS * R) * 4
    for t, n, dt, name in ((x, T * K, x.dtype, "x"), (D, K, torch.float32, "D"), (A, R * K, x.dtype, "A"),
                           (B, N * R, x.dtype, "B"), (bias, N, x.dtype, "bias"), (y, T * N, x.dtype, "y")):  # fmt: skip
        _check(t, n, dt, name)
    _check_weight(pw, geo)
    return [
        Launch("prologue", (st.xm, st.xe), (KB + NBX, TP // 16, 1), 256, 0,
               (x, D, A, ws["xb"], ws["xs1"], ws["xs4"], ws["xa"] if R else None, ws["fl"], T, K, TP, KB, R, st.KX,
                NBX, int(D is not None))),
        Launch("decode", (bits, st.xm, NT, st.tg, RT), (gx, 1, gz), 32 * WR * wk, smem,
               (pw.qweight, pw.scales, ws["xb"], ws["xs1"], ws["xs4"], ws["xa"] if R else None, ws["fl"], x, D, B,
                bias, y, N, geo.NT, geo.KC, geo.G, g, T, TP, K, KB, R, NBX, int(D is not None), int(R > 0),
                int(bias is not None), WR, wk, cps)),
    ]  # fmt: skip


def all_kernel_names() -> list[tuple[str, str]]:
    """Every ``(kernel, name expression)`` this backend can launch, whatever the config: the
    set tests/test_cupy_compile.py compiles for every architecture."""
    out = []
    for bits in (2, 3, 4, 8):
        for xm in range(3):
            for nt in (1, 2) if xm != XMODE[torch.float32] else (1,):
                for tg in (0, 1):
                    for rt in range(1, config.rt_cap(bits, xm, nt) + 1):
                        out.append(("decode", f"ttq_decode<{bits}, {xm}, {nt}, {tg}, {rt}>"))
    for dt, xm in XMODE.items():
        out.append(("prologue", f"ttq_prologue<{xm}, ttq::{ELEM[dt]}>"))
        out.append(("colnorm", f"ttq_colnorm<ttq::{ELEM[dt]}>"))
        for bits in (2, 3, 4, 8):
            out.append(("quantize", f"ttq_quantize<{bits}, ttq::{ELEM[dt]}>"))
            out.append(("dequant", f"ttq_dequant<{bits}, ttq::{ELEM[dt]}>"))
    out.append(("scale", "ttq_scale"))
    return out


def kernel_names(pw: PackedWeight, dtype: torch.dtype, device, max_T: int = 1 << 16) -> set[tuple[str, str]]:
    """``(kernel, name expression)`` of every kernel `qmatmul` may launch for ``pw`` and ``dtype``.

    What `BACKEND.prepare` compiles ahead of time (CUDA-graph capture cannot compile).
    """
    names = set()
    T = 1
    while T <= max_T:
        if uses_decode_kernel(pw, T, device):
            pro, dec = decode_setup(pw, T, dtype, device).names(pw.bits)
            names |= {("prologue", pro), ("decode", dec)}
        else:
            names.add(("dequant", f"ttq_dequant<{pw.bits}, ttq::{ELEM[dtype]}>"))
        T = T + 1 if T < 16 else 2 * T  # every T of the decode tiles, then the buckets
    return names


def qmatmul(
    x: torch.Tensor,
    pw: PackedWeight,
    D: torch.Tensor | None,
    A: torch.Tensor | None,
    B: torch.Tensor | None,
    bias: torch.Tensor | None,
    run: Runner,
) -> torch.Tensor:
    """Stages 4-5 for a ``cupy_mma`` weight: x ``[T, K]`` -> ``[T, N]`` in x.dtype (fp32 accumulation).

    Decode path (T below ``DEQUANT_MIN_T``, group size a multiple of 16): the prologue
    and the MMA decode kernel, low-rank (r <= 64) and bias fused.  Otherwise: the
    weight dequantized once into x's dtype and ``torch.matmul`` (cuBLAS on a GPU).
    """
    T = x.shape[0]
    dt = x.dtype
    lr = A is not None
    fused_lr = lr and A.shape[0] <= config.RMAX_FUSED
    if uses_decode_kernel(pw, T, x.device):
        y = x.new_empty(T, pw.N)
        Ax = A.to(dt).contiguous() if fused_lr else None
        Bx = B.to(dt).contiguous() if fused_lr else None
        bx = bias.to(dt).contiguous() if bias is not None else None
        run(decode_launches(x, pw, D, Ax, Bx, bx, y))
        if lr and not fused_lr:
            y = (y.float() + (x.float() @ A.float().mT) @ B.float().mT).to(dt)
        return y
    Wd = dequantize(pw, dt, run)
    xs = x if D is None else (x.float() / D).to(dt)
    y = xs @ Wd.mT
    if lr:
        y = y + (x @ A.to(dt).mT) @ B.to(dt).mT
    if bias is not None:
        y = y + bias.to(dt)
    return y
