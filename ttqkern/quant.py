"""What a quantization is: two small frozen descriptions, validated once.

`QuantFormat` says how a weight is quantized (bits, group size, form, range
expansion); `ActScaling` says how the activation scale D is made from x (alpha,
lam, p).  The public entry points (`ttqkern.linear`, `TTQLinear`, `quantize_model`,
`ttqkern.ops`) build them from their keyword arguments, so every argument error is
raised here, once, with one message (docs/spec.md §5); code below the entry points
receives these objects and trusts them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum
from numbers import Real

SUPPORTED_BITS = (2, 3, 4, 8)
ZERO_MODES = ("float", "int")


class Form(IntEnum):
    """The three quantization forms (docs/spec.md §2, stage 3), as kernel constants.

    Every form reduces to ``w = s * u + m`` for the stored unsigned code u
    (`ttqkern.format`); kernels only need to know how m is obtained.
    """

    FLOAT = 0  # asymmetric, float minimum: m = mn
    INT = 1  # asymmetric, integer zero-point: m = -s * z
    SYM = 2  # symmetric: u = q + 2^(b-1), m = -s * 2^(b-1)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# beta scales a group's range about its centre; far above a few it only wastes levels,
# and an unbounded value (1e30) gives finite, meaningless codes.
BETA_MAX = 16.0


def check_bits(bits) -> None:
    if not _is_int(bits) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}, got {bits!r}")


def check_group_size(group_size) -> None:
    if not _is_int(group_size):
        raise TypeError(f"group_size must be an int (> 0, or -1 for one group per row), got {group_size!r}")
    if group_size <= 0 and group_size != -1:
        raise ValueError(f"group_size must be > 0, or -1 for one group per row, got {group_size}")


def resolve_group_size(K: int, group_size: int) -> int:
    """The user's ``group_size`` (positive, or -1 = whole row) as a positive length for K columns.

    The one place where -1 becomes K (at least 1, so that an empty row still has a
    well-defined group length).
    """
    return max(K, 1) if group_size == -1 else group_size


@dataclass(frozen=True)
class QuantFormat:
    """How a weight ``[N, K]`` is quantized (docs/spec.md §2, stage 3).

    bits: 2, 3, 4 or 8.  group_size: codes per group along K (> 0), or -1 for one
    group per row (`resolved` turns it into a length).  zero: ``"float"`` (float
    minimum, the default) or ``"int"`` (integer zero-point); sym: symmetric
    (then zero is ``"float"``).  beta: range expansion about the group's centre,
    in (0, 16].
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    zero: str = "float"
    beta: float = 1.0

    def __post_init__(self):
        check_bits(self.bits)
        check_group_size(self.group_size)
        if not isinstance(self.sym, bool):
            raise TypeError(f"sym must be a bool, got {self.sym!r}")
        if self.zero not in ZERO_MODES:
            raise ValueError(f"zero must be one of {list(ZERO_MODES)}, got {self.zero!r}")
        if self.sym and self.zero == "int":
            raise ValueError("zero='int' (integer zero-point) has no meaning with sym=True; use zero='float'")
        b = self.beta
        if not _is_number(b) or not math.isfinite(b) or not 0 < b <= BETA_MAX:
            raise ValueError(f"beta (range expansion) must be a finite number > 0 and <= {BETA_MAX:g}, got {b!r}")
        object.__setattr__(self, "beta", float(b))

    @property
    def form(self) -> Form:
        if self.sym:
            return Form.SYM
        return Form.INT if self.zero == "int" else Form.FLOAT

    def group_for(self, K: int) -> int:
        """The positive group length for K columns."""
        return resolve_group_size(K, self.group_size)

    def resolved(self, K: int) -> QuantFormat:
        """This format with ``group_size`` as a positive length for K columns."""
        return self if self.group_size > 0 else replace(self, group_size=self.group_for(K))


@dataclass(frozen=True)
class ActScaling:
    """How the activation scale ``D_k = (||x[:, k]||_p^2 + lam * mean)^alpha`` is made (stage 1).

    alpha in [0, 1]; lam finite and >= 0 (damping relative to the mean of c); p > 0,
    inf allowed (max |x|).  Defaults: `ttqkern.defaults`.
    """

    alpha: float
    lam: float
    p: float

    def __post_init__(self):
        a, lam, p = self.alpha, self.lam, self.p
        if not _is_number(a) or not 0.0 <= a <= 1.0:
            raise ValueError(f"alpha must be a number in [0, 1], got {a!r}")
        if not _is_number(lam) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if not _is_number(p) or math.isnan(p) or p <= 0:
            raise ValueError(f"p must be a number > 0 (inf allowed), got {p!r}")
        for name in ("alpha", "lam", "p"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def default(cls) -> ActScaling:
        """The shipped defaults (`ttqkern.defaults`)."""
        from . import defaults

        return cls(defaults.ALPHA, defaults.LAM, defaults.P)


__all__ = ["SUPPORTED_BITS", "ZERO_MODES", "ActScaling", "Form", "QuantFormat", "resolve_group_size"]
