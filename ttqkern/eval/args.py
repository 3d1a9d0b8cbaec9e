"""Argument types shared by the evaluation and tuning command lines.

Each converts a flag's text and checks it with the library's own validation
(`ttqkern.quant`: bits in `SUPPORTED_BITS`, group sizes, `ActScaling` for the hyper-parameters), so a
CLI says what the library would say.  Errors are `argparse.ArgumentTypeError` naming
the flag.
"""

from __future__ import annotations

import argparse

from .. import backends, data, quant
from .methods import parse_method


def int_list(flag: str, minimum: int | None = None):
    """``"3,4"`` -> ``[3, 4]``; each value >= minimum when given."""

    def parse(s: str) -> list[int]:
        try:
            vals = [int(v) for v in s.split(",") if v.strip() != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, got {s!r}") from None
        if not vals:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
        for v in vals:
            if minimum is not None and v < minimum:
                raise argparse.ArgumentTypeError(f"{flag}: {v} must be >= {minimum}")
        return vals

    return parse


def bit_widths(s: str) -> list[int]:
    """``--bits``: comma list, each one of `SUPPORTED_BITS`."""
    vals = int_list("--bits")(s)
    for v in vals:
        try:
            quant.check_bits(v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"--bits: {e}") from None
    return vals


def group_sizes(s: str):
    """``--group-size``: ``"auto"`` or a comma list of sizes the library accepts (> 0, or -1)."""
    if s == "auto":
        return "auto"
    vals = int_list("--group-size")(s)
    for v in vals:
        try:
            quant.check_group_size(v)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"--group-size: {e}") from None
    return vals


def methods(s: str) -> list[str]:
    """``--methods``: comma list of fp, rtn, awq, ttq<r>."""
    names = [m.strip() for m in s.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("--methods needs at least one of fp, rtn, awq, ttq<r>")
    for n in names:
        try:
            parse_method(n)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return names


def check_backend(p: argparse.ArgumentParser, name: str) -> None:
    """``--backend``: a known name that can run here (auto always can)."""
    try:
        backends.check_name(name)
    except ValueError as e:
        p.error(f"--backend: {e}")
    if name != "auto":
        ok, why = backends.availability(name)
        if not ok:
            p.error(f"--backend {name} is not available here: {why}")


def check_hparams(p: argparse.ArgumentParser, alpha, lam, pnorm) -> None:
    """``--alpha/--lam/--p`` (None: the default) through the library's range check."""
    from .. import defaults

    try:
        quant.ActScaling(
            defaults.ALPHA if alpha is None else alpha,
            defaults.LAM if lam is None else lam,
            defaults.P if pnorm is None else pnorm,
        )
    except ValueError as e:
        p.error(f"--{str(e).split()[0]}: {e}")


def check_text(p: argparse.ArgumentParser, flag: str, value: str, *, validation: bool = False) -> None:
    """A shipped text name or file; ``validation=True`` refuses the shipped test splits."""
    try:
        data.resolve(value)
    except FileNotFoundError as e:
        p.error(f"{flag}: {e}")
    if validation and data.is_test(value):
        valid = [v for _, v in data.domains().values()]
        p.error(f"{flag} {value}: that is a test split; use a validation split ({', '.join(valid)})")


def check_model(p: argparse.ArgumentParser, model: str | None) -> None:
    """``--model``: None (the bundled model) or an existing path."""
    from pathlib import Path

    if model is not None and not Path(model).expanduser().exists():
        p.error(f"--model {model!r} does not exist (give a local Hugging Face folder or a .gguf file)")


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def check_positive(p: argparse.ArgumentParser, **flags) -> None:
    """Each ``flag=(value, minimum)`` with value None or >= minimum."""
    for flag, (v, lo) in flags.items():
        if v is not None and v < lo:
            p.error(f"--{flag.replace('_', '-')} must be >= {lo}, got {v}")
