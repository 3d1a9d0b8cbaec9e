"""Text to model inputs: tokenizing once, perplexity windows, AWQ calibration batches."""

from __future__ import annotations

import torch


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The text tokenized once, without special tokens: int64 ``[n]``."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def window_starts(total: int, n: int | None, spread: bool = True) -> list[int]:
    """Indices of the windows to evaluate among ``total`` non-overlapping ones.

    n None (or >= total): all of them.  Otherwise n indices, evenly spread over the
    whole text when ``spread`` (``floor(i * total / n)``: the windows sample every
    part of the text, so the interval over windows describes the text, not its
    first pages), or the first n.
    """
    if n is None or n >= total:
        return list(range(total))
    if not spread:
        return list(range(n))
    return [i * total // n for i in range(n)]


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None, *, spread: bool = False):
    """Non-overlapping ``[1, seqlen]`` windows (a short tail is dropped, as GPTQ).

    max_windows: None for all, else that many (see `window_starts`; ``spread=False``
    keeps the first ones).
    """
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    total = ids.numel() // seqlen
    if total == 0:
        raise ValueError(f"the text has {ids.numel()} tokens: fewer than one window of seqlen={seqlen}")
    return [ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0) for i in window_starts(total, max_windows, spread)]


def calibration_batches(ids: torch.Tensor, tokens: int, seqlen: int) -> list[torch.Tensor]:
    """The first ``tokens`` tokens as ``[1, <=seqlen]`` chunks (AWQ calibration inputs)."""
    if tokens < 0:
        raise ValueError(f"calibration tokens must be >= 0, got {tokens}")
    if tokens > ids.numel():
        raise ValueError(f"asked for {tokens} calibration tokens, the calibration text has {ids.numel()}")
    ids = ids[:tokens]
    return [ids[i : i + seqlen].unsqueeze(0) for i in range(0, tokens, seqlen)]
