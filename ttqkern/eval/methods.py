"""The methods the evaluation compares: fp, RTN, AWQ and TTQ with rank r, by name."""

from __future__ import annotations

import copy
import re

from torch import nn

from ..model import quantize_model

METHOD_RE = re.compile(r"^(fp|rtn|awq|ttq(\d+))$")


def parse_method(name: str) -> tuple[str, int | None]:
    """``"fp"|"rtn"|"awq"|"ttq<r>"`` -> ``(method, r)``; r is the low-rank for ttq, 0 for rtn/awq."""
    m = METHOD_RE.match(name)
    if not m:
        raise ValueError(f"unknown method {name!r}: use fp, rtn, awq or ttq<r> (e.g. ttq0, ttq16)")
    if m.group(2) is not None:
        return "ttq", int(m.group(2))
    return name, (None if name == "fp" else 0)


def label(method: str, r: int | None) -> str:
    """Display name: fp32, RTN, AWQ, TTQ r=<r>."""
    return {"fp": "fp32", "rtn": "RTN", "awq": "AWQ"}.get(method, f"TTQ r={r}")


def quantized_copy(
    model: nn.Module,
    method: str,
    *,
    bits: int,
    group_size: int,
    r: int = 0,
    calib: list | None = None,
    backend: str = "auto",
    progress: bool = False,
    **options,
) -> nn.Module:
    """A deep copy of ``model`` with linear layers quantized by ``method`` (rtn, awq, ttq).

    TTQ layers run in ``prompt`` mode: each forward over a window (T >= 2) requantizes
    from that window.  AWQ is calibrated on ``calib`` (empty: RTN).  ``options`` are
    further `ttqkern.QuantConfig` fields for TTQ (alpha, lam, p, beta, requantizer).
    """
    m = copy.deepcopy(model)
    kw = {"method": method, "bits": bits, "group_size": group_size, "r": r, "backend": backend, "progress": progress}
    if method == "ttq":
        kw.update(mode="prompt", **options)
    return quantize_model(m, calib=calib if method == "awq" else None, **kw)
