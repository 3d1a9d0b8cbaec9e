"""Host side of the Numba qmatmul: pick a kernel family, hold its layout, allocate, launch.

Families (which one runs is decided per weight, then per T):

- ``blocked`` -- bits 4 and 8 in the layout's blocked kind (`gemv_blocked`): AVX-512
  ``vpermps`` tables for 4-bit codes, or the portable dequantize-FMA form when
  `isa.current()` is ``"portable"``; 8-bit codes use target-independent IR either way.
  Asymmetric bits 2 and 3 take it too on AVX-512, their codes widened to nibbles once
  per prepared layer (`cpu_layouts.nibble_fits`).
- ``lut`` -- symmetric bits 2 and 3 in the layout's lut kind (`gemv_lut`), AVX-512 only.
- ``words`` -- the canonical planes read as machine words (`gemv_words`, `gemm`):
  bits 2 / 3 on the portable path and in the asymmetric forms, and group sizes the
  two layouts above do not take.
- ``generic`` -- any canonical weight (`generic`), e.g. g = 37.
- ``prefill`` -- dequantize once, then BLAS: above ``PACKED_MAX_T`` tokens for the
  blocked / lut families (default: never -- their register tiles beat BLAS up to
  T = 512 here, see `config`), from ``DEQUANT_MIN_T`` on for the word-plane paths.

A ``numba_cpu`` weight (what this backend's quantize writes, `cpu_layouts`) is read
in place.  A canonical weight (from another backend, or `ttqkern.ops.pack`) is
converted once: the converted arrays live in a small weak cache keyed by the
weight's tensors (identity, version counter, data pointer), so repeated calls with
the same `PackedWeight` convert it once; the canonical form of a ``numba_cpu``
weight, which the word-plane and prefill paths read, is cached the same way.

`Prepared` is what `prepare` returns: everything that is static per layer (family,
layout arrays, fp32 views of D / A / B / bias, config per token count, buffer
checks) is done once, so that a decode step costs one kernel call plus the
conversion of x and the allocation of y.
"""

from __future__ import annotations

import contextlib
import weakref

import numpy as np
import torch

from ... import reference
from ...format import CANONICAL, PackedWeight
from .. import cpu_layouts as layouts
from . import config, gemm, gemv_blocked, gemv_lut, gemv_words, generic, isa, prologue
from ._common import as_f32, as_np, planes

_EMPTY_U16 = np.empty((0, 0), np.uint16)
_DUMMY_MASKS = tuple(np.int32(1 << i) for i in range(8))
_INT4_MASKS = tuple(np.int32(15 << (4 * i)) for i in range(4))
_INT4_REP = 0x1111  # a nibble value in each of the 4 nibbles of a half word
_NO_PLANE = np.zeros((1, 0, layouts.LUT_ROWS), np.int32)


_forced = {"family": None}


@contextlib.contextmanager
def forced_family(name: str | None):
    """Tests: run the enclosed calls with one family (``"words"`` / ``"generic"`` take any weight
    that fits them; ``"blocked"`` / ``"lut"`` only weights their layouts take)."""
    if name not in (None, "blocked", "lut", "words", "generic"):
        raise ValueError(f"unknown kernel family {name!r}")
    old, _forced["family"] = _forced["family"], name
    try:
        yield
    finally:
        _forced["family"] = old


def family(pw: PackedWeight) -> str:
    """The decode kernel family for a weight on this CPU (see module doc)."""
    f = _forced["family"]
    which = isa.current()
    if f == "generic" or (f == "words" and planes(pw) is not None):
        return f
    if f == "lut" and which == "avx512" and layouts.lut_fits(pw.bits, pw.group_size, pw.sym):
        return f
    if f != "words" and layouts.blocked_fits(pw.bits, pw.group_size):
        return "blocked"  # the 8-bit and the portable 4-bit forms need no AVX-512
    if f != "words" and which == "avx512" and pw.bits in (2, 3) and layouts.lut_fits(pw.bits, pw.group_size, pw.sym):
        return "lut"
    if f in (None, "blocked") and which == "avx512" and layouts.nibble_fits(pw.bits, pw.group_size):
        return "blocked"  # asymmetric 2 / 3-bit codes widened to nibbles (cpu_layouts.nibble_fits)
    return "words" if planes(pw) is not None else "generic"


# --- layouts, converted once and cached weakly ------------------------------------------

_cache: dict = {}


def _version(t: torch.Tensor) -> int:
    # tensors made under torch.inference_mode (a model's generate) have no version counter
    return -1 if t.is_inference() else t._version


def _cached(pw: PackedWeight, what: str, build):
    """``build()`` for this weight, cached while its qweight tensor lives (and is not modified)."""
    ts = pw.tensors()
    k = (what, pw.layout, pw.bits, pw.group_size, pw.shape, pw.sym, pw.zero,
         *((n, id(t), _version(t), t.data_ptr()) for n, t in sorted(ts.items())))  # fmt: skip
    hit = _cache.get(k)
    if hit is not None and hit[0]() is pw.qweight:
        return hit[1]
    value = build()
    if len(_cache) > 256:  # bounded: a model's layers, a few generations
        _cache.clear()
    _cache[k] = (weakref.ref(pw.qweight), value)
    weakref.finalize(pw.qweight, _cache.pop, k, None)
    return value


def canonical(pw: PackedWeight) -> PackedWeight:
    """The canonical form (the word-plane, generic and prefill paths read it): cached conversion."""
    if pw.layout == CANONICAL or layouts.kind(pw.bits, pw.group_size, pw.sym) == "plain":
        return pw  # a plain numba_cpu weight holds the canonical tensors
    return _cached(pw, "canonical", pw.canonical)


def decode_arrays(pw: PackedWeight, fam: str) -> tuple[np.ndarray, ...]:
    """The arrays a blocked / lut kernel reads: ``(codes, sm)`` or ``(plane, hi plane, sm)``."""
    native = pw.layout == layouts.NUMBA_CPU and layouts.kind(pw.bits, pw.group_size, pw.sym) == fam
    if fam == "blocked":
        if native:
            return pw.qweight.numpy(), pw.scales.numpy()
        return _cached(pw, fam, lambda: tuple(t.numpy() for t in layouts.blocked_arrays(canonical(pw))))
    if native:
        hi = pw.qweight_hi.numpy() if pw.bits == 3 else _NO_PLANE
        return pw.qweight.numpy(), hi, pw.scales.numpy()

    def build():
        q, hi, sm = layouts.lut_arrays(canonical(pw))
        return q.numpy(), hi.numpy() if hi is not None else _NO_PLANE, sm.numpy()

    return _cached(pw, fam, build)


# --- prepared layers -----------------------------------------------------------------


def _tag(n: int) -> tuple:
    return (0,) * n


class Prepared:
    """A layer's decode state: ``prepared(x [T, K]) -> y [T, N]`` in x.dtype (x validated by the caller).

    Built by `prepare`; valid as long as the `PackedWeight` it was made from is not
    modified (TTQLinear makes a new one per requantization).  A, B and bias are
    re-read when their tensors change in place (version counters are checked).
    """

    def __init__(self, pw, D, A, B, bias):
        self.pw, self.N, self.K = pw, pw.N, pw.K
        self.family = family(pw)
        self.D_tensor = D
        self.D = as_f32(D)
        self.has_D = D is not None
        self._src = (A, B, bias)
        self._refresh()
        if self.family == "blocked":
            self.arrays = decode_arrays(pw, "blocked")
            self.kernels = (gemv_blocked.gemv, gemv_blocked.gemv_serial)
            self.ktiled = (gemv_blocked.gemv_ktiled, gemv_blocked.gemv_ktiled_serial)
            # 2/3/4-bit codes are nibbles here (`cpu_layouts.blocked_bits`); 4-bit decodes with vpermps on AVX-512
            self.ktag = gemv_blocked.kind_tag(8 if pw.bits == 8 else 4, portable=isa.current() != "avx512")
            g = pw.group_size
            self.gtag = _tag(layouts.CHUNK // g if g < layouts.CHUNK else 1)
            codes, sm = self.arrays
            gemv_blocked.check_buffers(codes, sm, np.empty((1, self.K), np.float32), self.A, self.Bm, self.bias,
                                       np.empty((1, self.N), np.float32), self.N, self.K, layouts.blocked_bits(pw.bits), g, 4)  # fmt: skip
        elif self.family == "lut":
            self.arrays = decode_arrays(pw, "lut")
            self.kernels = (gemv_lut.gemv, gemv_lut.gemv_serial)
            self.ptag = gemv_lut.TWO_PLANES if pw.bits == 3 else gemv_lut.ONE_PLANE
            # symmetric codes, centred on 2^(b-1) in the tables: 3-bit 4 = lo 0 + 4 * hi 1
            if pw.bits == 3:
                self.bases = (gemv_lut.basis(gemv_lut.KIND_PAIR2, 0), gemv_lut.basis(gemv_lut.KIND_QUAD1, 1))
            else:
                kind = gemv_lut.KIND_PAIR2 if pw.bits == 2 else gemv_lut.KIND_SINGLE4
                self.bases = (gemv_lut.basis(kind, 1 << (pw.bits - 1)),) * 2  # the second is unused
            p1, p2, sm = self.arrays
            two = pw.bits == 3
            gemv_lut.check_buffers((p1, p2) if two else (p1,), self.bases if two else self.bases[:1], sm,
                                   np.empty((1, self.K), np.float32), self.A, self.Bm, self.bias,
                                   np.empty((1, self.N), np.float32), self.N, self.K, pw.bits, pw.group_size)  # fmt: skip

    def _refresh(self) -> None:
        A, B, bias = self._src
        self.A = as_f32(A).reshape(-1, self.K) if A is not None else np.empty((0, self.K), np.float32)
        self.Bm = as_f32(B) if B is not None else np.empty((self.N, 0), np.float32)
        self.bias = as_f32(bias)
        # fp32 operands are viewed, so in-place changes are seen; converted copies are re-made when their
        # source changes (version counters), checked on each call
        self._copied = tuple(t for t in self._src if t is not None and t.dtype != torch.float32)
        self._versions = tuple(_version(t) for t in self._copied)
        self._plans = {}

    def _plan(self, T: int) -> tuple:
        """(kernel, its arguments between x and y) for T tokens: the config for this shape, resolved once."""
        plan = self._plans.get(T)
        if plan is not None:
            return plan
        pw = self.pw
        cfg = config.params("qmatmul", bits=pw.bits, group=pw.group_size, T=T, N=self.N, K=self.K)
        if self.family in ("words", "generic") or T > cfg["PACKED_MAX_T"]:
            plan = (None, None, cfg if self.family in ("words", "generic") else {**cfg, "DEQUANT_MIN_T": 1})
        else:
            tp_max = cfg["TILE_TOKENS"]
            TP = -(-T // -(-T // tp_max))  # equal chunks: T = 6 with 4 -> 2 x 3
            rows = cfg["TILE_ROWS"]
            if self.family == "blocked" and layouts.BLOCK_ROWS % rows:
                rows = 4
            NA = cfg["PARTIALS"] if TP == 1 else 1
            kernels = self.kernels
            head = (self.D, self.has_D, self.A, self.Bm, self.bias)
            tiles = (_tag(rows), _tag(TP), _tag(TP * NA))
            if self.family == "blocked":
                kt = cfg["K_TILE"] if TP > 1 else 0  # one token: one sequential stream (config doc)
                kts = (kt,) if 0 < kt < self.arrays[0].shape[1] else ()  # K tiled only when a tile is short of K
                if kts:
                    kernels = self.ktiled
                mid = (*head, self.ktag, *self.arrays, pw.group_size, *tiles, self.gtag, cfg["TASK_BLOCKS"], *kts,
                       cfg["PREFETCH"])  # fmt: skip
            else:
                p1, p2, sm = self.arrays
                mid = (*head, self.ptag, p1, p2, *self.bases, sm, pw.group_size, *tiles, cfg["TASK_BLOCKS"],
                       cfg["PREFETCH"])  # fmt: skip
            plan = (kernels[1] if self.N * self.K <= cfg["SERIAL_MAX"] else kernels[0], mid, cfg)
        if len(self._plans) < 64:
            self._plans[T] = plan
        return plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._copied and tuple(_version(t) for t in self._copied) != self._versions:
            self._refresh()
        T = x.shape[0]
        kernel, mid, cfg = self._plan(T)
        if kernel is None:
            A, B, bias = self._src
            return words_qmatmul(x, canonical(self.pw), self.D_tensor, A, B, bias, cfg)
        if x.dtype == torch.float32 and not x.requires_grad:
            xn = x.numpy()
        else:
            xn = x.detach().to(torch.float32).numpy()
        y = np.empty((T, self.N), np.float32)
        if kernel(xn, *mid, y) is False:  # lut: x~ outside the exact range (rule Q2): dequantize + BLAS
            A, B, bias = self._src
            return words_qmatmul(x, canonical(self.pw), self.D_tensor, A, B, bias, {**cfg, "DEQUANT_MIN_T": 1})
        out = torch.from_numpy(y)
        return out if x.dtype == torch.float32 else out.to(x.dtype)


def prepare(pw: PackedWeight, D=None, A=None, B=None, bias=None) -> Prepared:
    """The decode callable of one layer: ``prepare(...)(x [T, K]) -> y [T, N]`` (see `Prepared`)."""
    return Prepared(pw, D, A, B, bias)


def qmatmul(x, pw, D=None, A=None, B=None, bias=None) -> torch.Tensor:
    """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + b`` (see the package's `qmatmul`)."""
    if x.numel() == 0 or pw.N == 0:
        return reference.qmatmul(x, pw, D, A, B, bias)
    return Prepared(pw, D, A, B, bias)(x)


# --- the word-plane / generic / prefill paths (canonical planes) ----------------------


def _offset_args(pw: PackedWeight):
    """(zp_f, zp_i, off_mode, half) describing the offsets m of ``w = s * u + m``."""
    f0, i0 = np.empty((0, 0), np.float32), np.empty((0, 0), np.int32)
    half = np.float32(1 << (pw.bits - 1))
    if pw.sym:
        return f0, i0, gemv_words.OFF_SYM, half
    if pw.zero == "int":
        return f0, as_np(pw.zeros), gemv_words.OFF_ZEROS, half
    return as_np(pw.mins), i0, gemv_words.OFF_MINS, half


def _epilogue(y: torch.Tensor, u: np.ndarray, B: np.ndarray, bias: np.ndarray) -> torch.Tensor:
    """y += u B^T + bias (fp32, in place) for the BLAS paths."""
    if B.shape[1]:
        y += torch.from_numpy(u) @ torch.from_numpy(B).mT
    if bias.shape[0]:
        y += torch.from_numpy(bias)
    return y


def words_qmatmul(x, pw, D, A, B, bias, cfg) -> torch.Tensor:
    """`qmatmul` on the canonical planes: word-plane kernels, generic kernel or dequantize + BLAS."""
    with config.threads_for(pw.N * pw.K, cfg):
        return _words_qmatmul(x, pw, D, A, B, bias, cfg)


def _words_qmatmul(x, pw, D, A, B, bias, cfg) -> torch.Tensor:
    T, K = x.shape
    N, g = pw.N, pw.group_size
    x32 = as_f32(x)
    G = pw.num_groups
    xp = np.empty((T, G * g), np.float32)
    Xg = np.empty((T, G), np.float32)
    extreme = prologue.prologue(x32, as_f32(D), D is not None, g, xp, Xg)
    scales = as_np(pw.scales)
    zp_f, zp_i, off_mode, half = _offset_args(pw)
    c = np.empty((N, G), np.int32)  # each group's zero code and its value (codes are centred on it)
    m0 = np.empty((N, G), np.float32)
    gemv_words.centres(scales, zp_f, zp_i, off_mode, half, c, m0)
    has_m0 = off_mode != gemv_words.OFF_SYM  # symmetric codes centre exactly: m0 = 0
    prefill = T >= cfg["DEQUANT_MIN_T"]  # compute bound: let BLAS do the GEMM
    pl = planes(pw)
    # x~ too large or too small for the word-plane kernels' scaling (prologue.SAFE_MIN/MAX):
    # the dequantize + BLAS path, exact in range (docs/numerics.md)
    robust = (pl is None and prefill) or extreme
    if A is not None:  # x A^T: [T, r], tiny; the B side is fused per row (one GEMM for prefill)
        if prefill or robust:
            u = (torch.from_numpy(x32) @ A.to(torch.float32).mT).numpy()
        else:
            u = np.empty((T, A.shape[0]), np.float32)
            prologue.lowrank_left(x32, as_f32(A), u)
        Bn = as_f32(B)
    else:
        u, Bn = np.empty((T, 0), np.float32), np.empty((N, 0), np.float32)
    bn = as_f32(bias)
    y = np.empty((T, N), np.float32)

    if robust:  # any layout: Wq' = s * (u - c) + m0 in natural order, then BLAS
        qw = as_np(pw.qweight)
        qhi = as_np(pw.qweight_hi) if pw.bits == 3 else np.empty((0, 0), np.uint8)
        W = np.empty((N, K), np.float32)
        generic.dequantize(qw, qhi, pw.bits, g, K, scales, c, m0, cfg["BLOCK_N"], W)
        yt = torch.from_numpy(xp[:, :K]) @ torch.from_numpy(W).mT
        return _epilogue(yt, u, Bn, bn).to(x.dtype)
    if pl is None:  # group sizes that are not whole words
        qw = as_np(pw.qweight)
        qhi = as_np(pw.qweight_hi) if pw.bits == 3 else np.empty((0, 0), np.uint8)
        generic.generic(qw, qhi, pw.bits, g, xp, Xg, scales, c, m0, has_m0, u, Bn, bn, cfg["BLOCK_N"], y)
        return torch.from_numpy(y).to(x.dtype)

    L = sum(p.words.shape[1] * p.cpw for p in pl)
    fused = T <= cfg["FUSED_MAX_T"] and not prefill
    if fused and pw.bits == 3:  # planes merged into nibble words in registers
        xs3 = np.empty((T, L), np.float32)
        prologue.permute3(xp, xs3)
        lo, hi = pl
        gemv_words.fused3(lo.words, hi.words, _INT4_MASKS, _INT4_REP, lo.Wg, xs3, Xg, scales, c, m0, has_m0,
                          u, Bn, bn, cfg["BLOCK_N"], y)  # fmt: skip
        return torch.from_numpy(y).to(x.dtype)
    T2 = T + (T & 1) if fused and T > 1 else T  # the fused kernel takes tokens 2 at a time
    xs = np.zeros((T2, L), np.float32) if T2 > T else np.empty((T, L), np.float32)
    off = 0
    for p in pl:
        prologue.permute(xp, xs, off, p.words.shape[1], p.nf, p.b, p.factor)
        off += p.words.shape[1] * p.cpw
    p1 = pl[0]
    first = (p1.words, p1.masks, p1.rep, p1.Wg)
    if len(pl) == 2:
        p2 = pl[1]
        second = (p2.words, p2.masks, p2.rep, p2.Wg)
    else:
        second = (_EMPTY_U16, _DUMMY_MASKS, 0, 1)
    off2 = p1.words.shape[1] * p1.cpw  # where the second plane's block starts (= L with one plane)
    if prefill:  # x~ (s (u - c))^T by BLAS on the unpacked rows, + X~ m0^T, + the epilogue
        Wp = np.empty((N, L), np.float32)
        gemm.unpack_rows(*first, *second, off2, scales, c, cfg["BLOCK_N"], Wp)
        yt = torch.from_numpy(xs[:T]) @ torch.from_numpy(Wp).mT
        if has_m0:
            yt += torch.from_numpy(Xg) @ torch.from_numpy(m0).mT
        return _epilogue(yt, u, Bn, bn).to(x.dtype)
    if fused:  # one plane here: 3-bit codes took fused3 above
        gemv_words.fused(*first, xs, Xg, scales, c, m0, has_m0, u, Bn, bn, cfg["BLOCK_N"], y)
    else:
        gemm.buffered(*first, *second, xs, off2, Xg, scales, c, m0, has_m0, u, Bn, bn, cfg["BLOCK_N"], y)
    return torch.from_numpy(y).to(x.dtype)
