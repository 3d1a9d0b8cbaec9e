"""`TTQLinear`: an inference-time drop-in for `torch.nn.Linear`."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from . import _checks as C
from . import _dispatch, backends, calibration, defaults, ops, reference
from .format import CANONICAL, PLANE_FIELDS, PackedWeight
from .quant import ActScaling, QuantFormat

MODES = ("dynamic", "prompt", "static")
_STATE = (*PLANE_FIELDS, "D")  # the quantization state: runtime buffers, not in the state_dict


class TTQLinear(nn.Module):
    """A linear layer whose weight is quantized from the activations it multiplies.

    Holds the full-precision residual ``weight`` ``[N, K]`` (W - B A), the static
    low-rank factors ``lowrank_A`` ``[r, K]`` / ``lowrank_B`` ``[N, r]`` and ``bias``.

    Modes:
    - ``dynamic``: every forward computes D from its x, quantizes, multiplies.
    - ``prompt``: a call whose sequence length (``x.shape[-2]`` for 3-D+ x, T for
      2-D x) is >= ``min_tokens`` is a new prompt and requantizes; shorter calls
      (decode steps) reuse that packed weight and D.  D is pooled over every token
      of the call: a batch of prompts shares one quantization, so a prompt's output
      depends on its batch-mates (docs/numerics.md, "prompt mode and batches").
    - ``static``: quantize once; D from calibration activations fed through
      `calibrate` (alpha searched per layer when ``search_alpha``: the AWQ baseline),
      or D = 1 without calibration (the RTN baseline).
    ``quantize_calls`` counts requantizations (a tensor underneath, so that
    ``torch.compile`` does not recompile for every prompt).

    Device and dtype moves (``.to``, ``.half()``, ``.cuda()``) apply to the weights;
    the current packed weight and D keep their own dtypes (fp32 scales, uint8 codes)
    and only follow the device, so a packed weight stays exactly what it was
    quantized as; the next requantization quantizes the moved weight.

    ``requantizer`` (prompt and dynamic modes): None computes D from x with the
    layer's alpha; otherwise a callable ``(layer, x) -> (alpha, D, PackedWeight)``
    that chooses them per prompt, e.g. `ttqkern.alpha_search.AlphaSearch`; the
    alpha it chose is kept in ``last_alpha``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        r: int = 16,
        bits: int = 4,
        group_size: int = 128,
        alpha: float = defaults.ALPHA,
        lam: float = defaults.LAM,
        p: float = defaults.P,
        sym: bool = False,
        zero: str = "float",
        beta: float = 1.0,
        mode: str = "dynamic",
        min_tokens: int = 2,
        search_alpha: bool = False,
        requantizer=None,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        C.check_rank(r, out_features, in_features)
        self.fmt = QuantFormat(bits, group_size, sym, zero, beta)
        self.scaling = ActScaling(alpha, lam, p)
        backends.check_name(backend)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(min_tokens, int) or min_tokens < 1:
            raise ValueError(f"min_tokens must be an int >= 1, got {min_tokens!r}")
        if requantizer is not None and not callable(requantizer):
            raise TypeError(f"requantizer must be None or a callable (layer, x) -> (alpha, D, pw), got {requantizer!r}")
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.mode, self.min_tokens, self.search_alpha = mode, min_tokens, search_alpha
        self.backend = backend
        self.requantizer, self.last_alpha = requantizer, None
        kw = dict(device=device, dtype=dtype)
        self.register_buffer("weight", torch.empty(out_features, in_features, **kw))
        self.register_buffer("lowrank_A", torch.empty(r, in_features, **kw) if r else None)
        self.register_buffer("lowrank_B", torch.empty(out_features, r, **kw) if r else None)
        self.register_buffer("bias", torch.empty(out_features, **kw) if bias else None)
        for name in _STATE:
            self.register_buffer(name, None, persistent=False)
        self._stats: calibration.ColumnStats | None = None
        self._packed: PackedWeight | None = None
        self._layout = CANONICAL
        self._run = None  # the backend's prepared decode callable and what it was prepared for
        # a tensor, not an int: torch.compile guards on an int attribute's value, so a counter
        # bumped per prompt would recompile the model for every prompt (issue 12, finding 19)
        self.register_buffer("_quantize_count", torch.zeros((), dtype=torch.int64, device=device), persistent=False)

    @property
    def quantize_calls(self) -> int:
        """How many times this layer quantized its weight (reads a tensor: a device sync on GPUs)."""
        return int(self._quantize_count)

    # the format and scaling fields, read as plain attributes (alpha is set by calibration)
    bits = property(lambda self: self.fmt.bits)
    group_size = property(lambda self: self.fmt.group_size)
    sym = property(lambda self: self.fmt.sym)
    zero = property(lambda self: self.fmt.zero)
    beta = property(lambda self: self.fmt.beta)
    lam = property(lambda self: self.scaling.lam)
    p = property(lambda self: self.scaling.p)

    @property
    def alpha(self) -> float:
        return self.scaling.alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        self.scaling = replace(self.scaling, alpha=value)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, *, r: int = 16, bits: int = 4, group_size: int = 128, mode: str = "dynamic", **kw
    ) -> TTQLinear:
        """Build from an `nn.Linear` (weight ``[N, K]``): SVD split once, weights copied.

        Other keywords (alpha, lam, p, sym, zero, beta, min_tokens, search_alpha,
        requantizer, backend) are as in the constructor.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        W = linear.weight.detach()
        m = cls(
            linear.in_features, linear.out_features, linear.bias is not None,
            r=r, bits=bits, group_size=group_size, mode=mode, device=W.device, dtype=W.dtype, **kw,
        )  # fmt: skip
        A, B, W_res = ops.lowrank(W, r)
        m.weight.copy_(W_res)
        if r:
            m.lowrank_A.copy_(A)
            m.lowrank_B.copy_(B)
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach())
        return m

    # -- quantization state -------------------------------------------------
    @property
    def packed(self) -> PackedWeight | None:
        """The current `PackedWeight`, or None before the first quantization."""
        if self.qweight is None:
            return None
        if self._packed is None or self._packed.qweight is not self.qweight:
            fmt = self.fmt.resolved(self.in_features)
            self._packed = PackedWeight.build(
                fmt, (self.out_features, self.in_features), qweight=self.qweight, qweight_hi=self.qweight_hi,
                scales=self.scales, offsets=self.mins if self.mins is not None else self.zeros, layout=self._layout,
            )  # fmt: skip
        return self._packed

    def _store(self, pw: PackedWeight, D: torch.Tensor | None) -> None:
        # straight into _buffers: nn.Module.__setattr__ reads the old value first, and under
        # torch.compile that read becomes a guard ("qweight is None") that the next prompt fails
        for name in PLANE_FIELDS:
            self._buffers[name] = getattr(pw, name)
        self._buffers["D"] = D
        self._layout = pw.layout
        self._packed = pw
        self._run = None
        self._quantize_count += 1

    def _quantize(self, D: torch.Tensor | None) -> PackedWeight:
        # self.weight is this module's own buffer: checked at construction, contiguous
        return ops.run_quantize(self.weight.contiguous(), D, self.fmt, self.backend)

    def _act_scale(self, x: torch.Tensor) -> torch.Tensor:
        return ops.run_act_scale(ops._tokens(x), self.scaling, self.backend)

    def _from_activations(self, x: torch.Tensor) -> tuple[PackedWeight, torch.Tensor]:
        if self.requantizer is not None:
            self.last_alpha, D, pw = self.requantizer(self, x)
            return pw, D
        D = self._act_scale(x)
        return self._quantize(D), D

    def requantize(self, x: torch.Tensor) -> None:
        """Quantize the weight from the activations x ``[..., K]`` and keep it."""
        self._check_x(x)
        self._store(*self._from_activations(x))

    def reset(self) -> None:
        """Drop the packed weight (and calibration), e.g. before a new prompt."""
        for name in _STATE:
            setattr(self, name, None)
        self._packed = None
        self._run = None
        self._stats = None

    def _apply(self, fn, recurse=True):
        # Weights follow fn (device and dtype); the quantization state follows the device only.
        state = {n: self._buffers.pop(n) for n in _STATE}
        try:
            super()._apply(fn, recurse)
        finally:
            held = [t for t in state.values() if t is not None]
            if held:
                device = fn(torch.empty(0, device=held[0].device)).device
                state = {n: None if t is None else t.to(device) for n, t in state.items()}
            self._buffers.update(state)
            self._packed = None
            self._run = None
        return self

    # -- static mode: calibration -------------------------------------------
    def start_calibration(self, max_tokens: int = 512) -> None:
        """Following forwards run in full precision and record column statistics."""
        if self.mode != "static":
            raise RuntimeError(f"calibration is for mode='static', this layer is mode={self.mode!r}")
        self._stats = calibration.ColumnStats(self.in_features, self.p, max_tokens)

    def finish_calibration(self) -> float | None:
        """Quantize from the statistics recorded; returns the alpha used (None for RTN)."""
        stats, self._stats = self._stats, None
        if stats is None or stats.tokens == 0:
            self._store(self._quantize(None), None)
            return None
        if self.search_alpha:
            alpha, D, pw = calibration.search_alpha(
                self.weight, stats, lam=self.lam, bits=self.bits, group_size=self.group_size,
                sym=self.sym, zero=self.zero, beta=self.beta, backend=self.backend,
            )  # fmt: skip
        else:
            alpha = self.alpha
            D = reference.scale_from_norms(stats.norms().to(self.weight.device), self.lam, alpha)
            pw = self._quantize(D)
        self.alpha = alpha
        self._store(pw, D)
        return alpha

    def full_precision(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` with the original (unquantized) weight ``W_res + B A``."""
        y = nn.functional.linear(x, self.weight, self.bias)
        if self.r:
            y = y + nn.functional.linear(nn.functional.linear(x, self.lowrank_A), self.lowrank_B)
        return y

    # -- forward --------------------------------------------------------------
    def _check_x(self, x: torch.Tensor) -> None:
        # cheap, and enough for the kernels' buffer assumptions: dtype, rank, K, device
        if not isinstance(x, torch.Tensor) or x.dtype not in C.FLOAT_DTYPES or x.dim() < 1:
            C.check_tensor(x, "x", min_dims=1)
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x's last dim ({x.shape[-1]}) must equal in_features ({self.in_features})")
        if x.device != self.weight.device:
            raise RuntimeError(f"x is on {x.device}, this layer on {self.weight.device}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., K]`` fp32/fp16/bf16 -> ``[..., N]`` in x's dtype."""
        self._check_x(x)
        y = self._decode_step(x)
        if y is not None:
            return y
        if self._stats is not None:
            self._stats.update(x)
            return self.full_precision(x)
        if self.mode == "dynamic":
            pw, D = self._from_activations(x)
            self._quantize_count += 1
            return self._matmul(x, pw, D)
        if self.mode == "prompt":
            seq = x.shape[-2] if x.dim() >= 2 else 1
            # the length test first: a prompt then never reads the state, so torch.compile
            # guards on nothing that changes from one prompt to the next (finding 19)
            if seq >= self.min_tokens or self.qweight is None:
                self.requantize(x)
        elif self.qweight is None:  # static, never calibrated: RTN
            self.finish_calibration()
        return self._matmul(x, self.packed, self.D)

    def _operands(self):
        A, B = (self.lowrank_A, self.lowrank_B) if self.r else (None, None)
        return A, B, self.bias

    def _matmul(self, x: torch.Tensor, pw: PackedWeight, D: torch.Tensor | None) -> torch.Tensor:
        A, B, bias = self._operands()
        x2 = ops._tokens(x)
        if _dispatch.direct(x2):
            y = self._prepared(pw, D, A, B, bias)(x2)
        else:
            y = ops.run_qmatmul(x2, pw, D, A, B, bias, self.backend)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _decode_step(self, x: torch.Tensor) -> torch.Tensor | None:
        """The eager decode step on the prepared callable, or None when the full path must run.

        Same result as the rest of `forward` for a call that reuses the packed weight
        (prompt mode below ``min_tokens``, static mode) with unchanged operands; it only
        skips the attribute lookups and stamp building that cost a few microseconds
        per call on layers whose kernel takes ten.
        """
        run = self._run
        if run is None or self._stats is not None or self.mode == "dynamic":
            return None
        if self.mode == "prompt" and (x.shape[-2] if x.dim() >= 2 else 1) >= self.min_tokens:
            return None
        buf = self._buffers
        qweight, D, operands = run[2]
        if buf["qweight"] is not qweight or buf["D"] is not D or torch.compiler.is_compiling():
            return None
        for t, v in operands:
            if t is not None and t._version != v:
                return None
        if self.r and (buf["lowrank_A"] is not operands[0][0] or buf["lowrank_B"] is not operands[1][0]):
            return None
        if buf["bias"] is not operands[2][0] or not _dispatch.direct(x):
            return None
        x2 = x.reshape(-1, self.in_features)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        return run[1](x2).view(*x.shape[:-1], self.out_features)

    def _prepared(self, pw, D, A, B, bias):
        """The backend's prepared qmatmul for the current operands (rebuilt when any of them changed)."""
        stamp = (id(pw), id(D), *(None if t is None else (id(t), t._version) for t in (A, B, bias)))
        if self._run is None or self._run[0] != stamp:
            be = backends.resolve(self.backend, self.weight.device)
            tensors = [None if t is None else t.contiguous() for t in (D, A, B, bias)]
            fn = be.prepare(_dispatch.readable(pw, be), *tensors)
            # what `_decode_step` checks before reusing fn: the stored weight, D and the operands' versions
            self._run = (stamp, fn, (self._buffers["qweight"], D, tuple((t, None if t is None else t._version)
                                                                       for t in (A, B, bias))))  # fmt: skip
        return self._run[1]

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"r={self.r}, bits={self.bits}, group_size={self.group_size}, mode={self.mode!r}, "
            f"alpha={self.alpha}, lam={self.lam}, p={self.p}, backend={self.backend!r}"
        )
