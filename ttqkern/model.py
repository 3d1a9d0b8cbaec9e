"""`quantize_model`: swap a model's `nn.Linear` layers for `TTQLinear`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import defaults
from .nn import TTQLinear
from .quant import ActScaling, QuantFormat

METHODS = ("ttq", "rtn", "awq")


@dataclass
class QuantConfig:
    """How to quantize a model's linear layers.

    method: ``"ttq"`` (D from each prompt's own activations, mode ``prompt`` or
    ``dynamic``), ``"rtn"`` (D = 1, static) or ``"awq"`` (static D from calibration
    activations, alpha searched per layer on the output error, the l2 statistic).
    r: rank of the full-precision low-rank part; None means 16 for ttq, 0 otherwise.
    lam, p: None means `ttqkern.defaults` LAM / P for ttq, and AWQ's classic 0 / 2 otherwise.
    skip: names (last component) of linear layers to leave alone.
    requantizer: for ttq, None (D from the fixed alpha) or a per-prompt chooser such
    as `ttqkern.alpha_search.AlphaSearch` (see `TTQLinear`).
    """

    method: str = "ttq"
    bits: int = 4
    group_size: int = 128
    r: int | None = None
    alpha: float = defaults.ALPHA
    lam: float | None = None
    p: float | None = None
    sym: bool = False
    zero: str = "float"
    beta: float = 1.0
    mode: str = "prompt"
    min_tokens: int = 2
    backend: str = "auto"
    skip: tuple[str, ...] = ("lm_head",)
    calib_max_tokens: int = 512
    requantizer: Callable | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "ttq" and self.mode == "static":
            raise ValueError("method='ttq' quantizes from each prompt: mode must be 'prompt' or 'dynamic'")
        if self.method != "ttq" and self.requantizer is not None:
            raise ValueError(f"requantizer chooses D per prompt: it needs method='ttq', got {self.method!r}")
        kw = self.layer_kwargs()
        # every value error now, before any layer is swapped (the layers build the same objects)
        QuantFormat(kw["bits"], kw["group_size"], kw["sym"], kw["zero"], kw["beta"])
        ActScaling(kw["alpha"], kw["lam"], kw["p"])

    @property
    def format(self) -> QuantFormat:
        """The weight format every swapped layer uses."""
        return QuantFormat(self.bits, self.group_size, self.sym, self.zero, self.beta)

    def layer_kwargs(self) -> dict:
        """Keyword arguments of `TTQLinear.from_linear` for this method."""
        ttq = self.method == "ttq"
        return dict(
            r=(16 if ttq else 0) if self.r is None else self.r,
            bits=self.bits, group_size=self.group_size, alpha=self.alpha,
            # AWQ's classic statistic has no damping; TTQ's default damping is relative to the mean.
            lam=(defaults.LAM if ttq else 0.0) if self.lam is None else self.lam,
            # AWQ keeps its classic l2 statistic whatever TTQ's tuned p is.
            p=(defaults.P if ttq else 2.0) if self.p is None else self.p, sym=self.sym, zero=self.zero, beta=self.beta,
            mode=self.mode if ttq else "static", min_tokens=self.min_tokens,
            search_alpha=self.method == "awq", requantizer=self.requantizer, backend=self.backend,
        )  # fmt: skip


def linear_layers(model: nn.Module, skip: Iterable[str] = ("lm_head",), filter: Callable | None = None):
    """``(name, module)`` of every `nn.Linear` to quantize, in module order."""
    skip = set(skip)
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or name.rsplit(".", 1)[-1] in skip:
            continue
        if filter is None or filter(name, mod):
            yield name, mod


def _progress(items, desc: str, enabled: bool):
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a nicety: the eval extra brings tqdm
        return items
    return tqdm(items, desc=desc, leave=False)


def quantize_model(
    model: nn.Module,
    config: QuantConfig | None = None,
    *,
    calib: Iterable | None = None,
    filter: Callable[[str, nn.Module], bool] | None = None,
    progress: bool = False,
    **overrides,
) -> nn.Module:
    """Replace the model's `nn.Linear` layers by `TTQLinear`, in place; returns the model.

    config: a `QuantConfig` (keyword ``overrides`` set its fields, e.g.
    ``quantize_model(m, method="awq", bits=3)``).  ``lm_head`` is skipped by
    default (``skip=()`` to include it); ``filter(name, module) -> bool`` chooses
    layers.  For ``method="awq"``, ``calib`` is an iterable of model inputs
    (tensors, or dicts of keyword arguments) run once through the model to gather
    activation statistics; with none, AWQ reduces to RTN.
    """
    # replace, not asdict: asdict would turn a dataclass field (a requantizer) into a dict
    config = replace(config, **overrides) if config else QuantConfig(**overrides)
    kwargs = config.layer_kwargs()
    targets = list(linear_layers(model, config.skip, filter))
    if not targets:
        raise ValueError("quantize_model found no nn.Linear layers to quantize (check skip/filter)")
    for name, lin in _progress(targets, f"{config.method}: swapping layers", progress):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, TTQLinear.from_linear(lin, **kwargs))
    if config.method != "ttq":
        calibrate(model, calib or (), max_tokens=config.calib_max_tokens, progress=progress)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, calib: Iterable, *, max_tokens: int = 512, progress: bool = False) -> None:
    """Run calibration inputs through a model of static `TTQLinear` layers, then quantize them."""
    layers = [m for m in model.modules() if isinstance(m, TTQLinear) and m.mode == "static"]
    for m in layers:
        m.start_calibration(max_tokens)
    try:
        for batch in calib:
            model(**batch) if isinstance(batch, dict) else model(batch)
    finally:
        for m in _progress(layers, "quantizing layers", progress):
            m.finish_calibration()
