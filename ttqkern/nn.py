"""`TTQLinear`: an inference-time drop-in for `torch.nn.Linear`."""

from __future__ import annotations

import torch
from torch import nn

from . import _checks as C
from . import backends, calibration, defaults, ops, reference
from .format import PackedWeight

MODES = ("dynamic", "prompt", "static")
PACKED_FIELDS = ("qweight", "qweight_hi", "scales", "mins", "zeros")


class TTQLinear(nn.Module):
    """A linear layer whose weight is quantized from the activations it multiplies.

    Holds the full-precision residual ``weight`` ``[N, K]`` (W - B A), the static
    low-rank factors ``lowrank_A`` ``[r, K]`` / ``lowrank_B`` ``[N, r]`` and ``bias``.

    Modes:
    - ``dynamic``: every forward computes D from its x, quantizes, multiplies.
    - ``prompt``: a call whose sequence length (``x.shape[-2]`` for 3-D+ x, T for
      2-D x) is >= ``min_tokens`` is a new prompt and requantizes; shorter calls
      (decode steps) reuse that packed weight and D.
    - ``static``: quantize once; D from calibration activations fed through
      `calibrate` (alpha searched per layer when ``search_alpha``: the AWQ baseline),
      or D = 1 without calibration (the RTN baseline).
    ``quantize_calls`` counts requantizations.

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
        C.check_quant_args(bits, group_size, sym, zero, beta)
        C.check_hparams(alpha, lam, p)
        backends.check_name(backend)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
        if not isinstance(min_tokens, int) or min_tokens < 1:
            raise ValueError(f"min_tokens must be an int >= 1, got {min_tokens!r}")
        if requantizer is not None and not callable(requantizer):
            raise TypeError(f"requantizer must be None or a callable (layer, x) -> (alpha, D, pw), got {requantizer!r}")
        self.in_features, self.out_features = in_features, out_features
        self.r, self.bits, self.group_size = r, bits, group_size
        self.alpha, self.lam, self.p = alpha, lam, p
        self.sym, self.zero, self.beta = sym, zero, beta
        self.mode, self.min_tokens, self.search_alpha = mode, min_tokens, search_alpha
        self.backend = backend
        self.requantizer, self.last_alpha = requantizer, None
        kw = dict(device=device, dtype=dtype)
        self.register_buffer("weight", torch.empty(out_features, in_features, **kw))
        self.register_buffer("lowrank_A", torch.empty(r, in_features, **kw) if r else None)
        self.register_buffer("lowrank_B", torch.empty(out_features, r, **kw) if r else None)
        self.register_buffer("bias", torch.empty(out_features, **kw) if bias else None)
        # Quantization state: runtime data, so not part of the state_dict.
        for name in (*PACKED_FIELDS, "D"):
            self.register_buffer(name, None, persistent=False)
        self._stats: calibration.ColumnStats | None = None
        self.quantize_calls = 0

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
        K = self.in_features
        return PackedWeight(
            qweight=self.qweight, qweight_hi=self.qweight_hi, scales=self.scales, mins=self.mins,
            zeros=self.zeros, bits=self.bits, group_size=K if self.group_size == -1 else self.group_size,
            shape=(self.out_features, K), sym=self.sym, zero="float" if self.sym else self.zero,
        )  # fmt: skip

    def _store(self, pw: PackedWeight, D: torch.Tensor | None) -> None:
        for name in PACKED_FIELDS:
            setattr(self, name, getattr(pw, name))
        self.D = D
        self.quantize_calls += 1

    def _quantize(self, D: torch.Tensor | None) -> PackedWeight:
        return ops.quantize(
            self.weight, D, bits=self.bits, group_size=self.group_size, sym=self.sym,
            zero=self.zero, beta=self.beta, backend=self.backend,
        )  # fmt: skip

    def _from_activations(self, x: torch.Tensor) -> tuple[PackedWeight, torch.Tensor]:
        if self.requantizer is not None:
            self.last_alpha, D, pw = self.requantizer(self, x)
            return pw, D
        D = ops.act_scale(x, p=self.p, lam=self.lam, alpha=self.alpha, backend=self.backend)
        return self._quantize(D), D

    def requantize(self, x: torch.Tensor) -> None:
        """Quantize the weight from the activations x ``[..., K]`` and keep it."""
        self._store(*self._from_activations(x))

    def reset(self) -> None:
        """Drop the packed weight (and calibration), e.g. before a new prompt."""
        for name in (*PACKED_FIELDS, "D"):
            setattr(self, name, None)
        self._stats = None

    # -- static mode: calibration -------------------------------------------
    @property
    def calibrating(self) -> bool:
        return self._stats is not None

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
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[..., K]`` -> ``[..., N]`` in x's dtype."""
        if self._stats is not None:
            self._stats.update(x)
            return self.full_precision(x)
        if self.mode == "dynamic":
            self.quantize_calls += 1
            return self._matmul(x, *self._from_activations(x))
        if self.mode == "prompt":
            seq = x.shape[-2] if x.dim() >= 2 else 1
            if self.qweight is None or seq >= self.min_tokens:
                self.requantize(x)
        elif self.qweight is None:  # static, never calibrated: RTN
            self.finish_calibration()
        return self._matmul(x, self.packed, self.D)

    def _matmul(self, x, pw, D):
        lowrank = (self.lowrank_A, self.lowrank_B) if self.r else None
        return ops.qmatmul(x, pw, D, lowrank=lowrank, bias=self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"r={self.r}, bits={self.bits}, group_size={self.group_size}, mode={self.mode!r}, "
            f"alpha={self.alpha}, lam={self.lam}, p={self.p}, backend={self.backend!r}"
        )
