"""Perplexity over windows, with every window's NLL kept for the confidence intervals."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PerplexityResult:
    """exp(mean NLL) over every predicted token of the windows, and forward throughput.

    window_nll: mean next-token NLL of each window (nats; windows of equal length, so
    the log-perplexity is their mean and intervals resample them: `ttqkern.eval.stats`).
    tokens: window tokens fed; seconds: time in the model's forward (TTQ's per-window
    requantization included).
    """

    ppl: float
    nll: float
    window_nll: list[float]
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def exp_nll(nll: float) -> float:
    """exp(nll) without overflow (inf beyond ~1e304)."""
    return math.exp(nll) if nll < 700 else float("inf")


@torch.no_grad()
def perplexity(model: nn.Module, wins: list[torch.Tensor], *, desc: str = "ppl", progress: bool = False):
    """Next-token NLL of each window ``[1, seqlen]`` (int64 ids); each window is one forward.

    Each window is its own prompt, so TTQ layers in ``prompt`` / ``dynamic`` mode are
    quantized from that window's activations, as in the paper.  Returns a
    `PerplexityResult`.
    """
    per, seconds = [], 0.0
    it = wins
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(wins, desc=desc, leave=False)
    for w in it:
        t0 = time.perf_counter()
        logits = model(w).logits
        seconds += time.perf_counter() - t0
        # fp32 log-softmax; the mean is over the window's seqlen-1 targets
        loss = nn.functional.cross_entropy(logits[0, :-1].float(), w[0, 1:], reduction="mean")
        per.append(float(loss))
    counts = [w.shape[1] - 1 for w in wins]
    mean = sum(n * c for n, c in zip(per, counts, strict=True)) / sum(counts)
    return PerplexityResult(exp_nll(mean), mean, per, sum(w.shape[1] for w in wins), seconds)
