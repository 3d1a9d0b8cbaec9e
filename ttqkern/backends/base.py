"""The backend protocol: what a backend declares and implements.

A backend is one `Backend` subclass instance, exported as ``BACKEND`` by its
package (``ttqkern/backends/<name>/``) and registered by one line in
`ttqkern.backends` (or at run time with `ttqkern.backends.register`).  It declares

- ``name``, ``device_types`` (tensor device types it runs on) and ``preference``
  (``backend="auto"`` takes the available backend with the lowest value for the
  tensors' device type; an int for all its device types or a dict per device
  type, where a missing type means "never chosen by auto there"; the torch
  reference is 100);
- ``tolerances``: how closely it must match the reference in the conformance
  suite (`Tolerances`; docs/spec.md §6 by default);
- ``params``: its tunable kernel parameters (a `ttqkern.tuning.params.ConfigTable`)
  or None;
- ``layouts``: the `PackedWeight` layouts its ``qmatmul`` reads; ``ttqkern.ops``
  converts any other layout (exactly, through the canonical one) before calling it;

and implements the three stage functions plus `available` and `prepare`.

What a backend may assume (checked by `ttqkern.ops` before the call): tensors are
contiguous and on one device of ``device_types``; shapes agree (x ``[T, K]``, W
``[N, K]``, D ``[K]``, A ``[r, K]``, B ``[N, r]``, bias ``[N]``); every dimension is
>= 1 (empty problems are answered in ``ops``); a `PackedWeight` is consistent with
its fields and in one of ``layouts``; the `QuantFormat` is resolved for K.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..format import CANONICAL, PackedWeight
from ..quant import ActScaling, QuantFormat


def _spec_output_tolerances() -> dict:
    return {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass(frozen=True)
class Tolerances:
    """How closely a backend matches the reference (docs/spec.md §6), per check.

    output: per activation dtype, the allowed max abs error of ``qmatmul`` relative
    to ``max(|y_ref|, 1)``.  codes_mismatch: fraction of quantized codes that may
    differ (by at most 1: rounding ties under reassociation).  scales_rtol: group
    scales and mins.  act_scale_rtol: D.
    """

    output: dict = field(default_factory=_spec_output_tolerances)
    codes_mismatch: float = 1e-3
    scales_rtol: float = 1e-5
    act_scale_rtol: float = 1e-5

    def output_tol(self, dtype: torch.dtype) -> float:
        return self.output[dtype]


class Backend:
    """Base class of every backend (see the module docstring for the contract)."""

    name: ClassVar[str]
    device_types: ClassVar[tuple[str, ...]]
    preference: ClassVar[int | dict[str, int]] = 50
    tolerances: ClassVar[Tolerances] = Tolerances()
    params: ClassVar[object | None] = None
    layouts: ClassVar[tuple[str, ...]] = (CANONICAL,)
    # stage functions that are the reference itself (the conformance suite does not
    # compare the reference with itself)
    reference_ops: ClassVar[frozenset[str]] = frozenset()

    def auto_rank(self, device_type: str) -> int | None:
        """This backend's rank for ``backend="auto"`` on ``device_type`` (lower wins; None: never)."""
        if device_type not in self.device_types:
            return None
        pref = self.preference
        return pref.get(device_type) if isinstance(pref, dict) else pref

    def available(self) -> tuple[bool, str]:
        """``(ok, reason)``: can this backend run on this machine, and if not, why."""
        return True, ""

    def act_scale(self, x: torch.Tensor, scaling: ActScaling) -> torch.Tensor:
        """Stage 1: x ``[T, K]`` fp32/fp16/bf16 -> D fp32 ``[K]``."""
        raise NotImplementedError

    def quantize(self, W: torch.Tensor, D: torch.Tensor | None, fmt: QuantFormat) -> PackedWeight:
        """Stages 2-3: W ``[N, K]`` float, D fp32 ``[K]`` or None -> `PackedWeight` (any of its layouts)."""
        raise NotImplementedError

    def qmatmul(self, x: torch.Tensor, pw: PackedWeight, D: torch.Tensor | None, A: torch.Tensor | None,
                B: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """Stages 4-5: ``y = (x / D) Wq'^T + (x A^T) B^T + bias``; x ``[T, K]`` -> ``[T, N]`` in x.dtype."""
        raise NotImplementedError

    def prepare(
        self,
        pw: PackedWeight,
        D: torch.Tensor | None,
        A: torch.Tensor | None,
        B: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A callable ``x [T, K] -> y [T, N]`` for repeated `qmatmul` calls with these operands.

        `ttqkern.TTQLinear` calls this once per requantization and the result once per
        decode step; override it to hoist per-layer work (config lookup, buffers,
        layout preparation) out of the per-token path.  The default binds `qmatmul`.
        """

        def run(x: torch.Tensor) -> torch.Tensor:
            return self.qmatmul(x, pw, D, A, B, bias)

        return run

    def __repr__(self) -> str:
        return f"<ttqkern backend {self.name!r} on {', '.join(self.device_types)}>"
