"""Problem shapes for the kernel tuner: ``TxNxK`` items, ``NxK`` items and model presets.

A tuning case is a token count T and an ``nn.Linear`` weight ``[N, K]`` (``y = x W^T``,
x ``[T, K]``).  Presets list the distinct weight shapes of real models' decoder
layers (from their published configs: hidden size, intermediate size, attention
heads x head dim); ``NxK`` items and presets take their T values from ``--tokens``.
"""

from __future__ import annotations

import argparse

# nn.Linear weight shapes [N, K] of a decoder layer: q/o, k/v, gate/up, down projections
PRESETS: dict[str, list[tuple[int, int]]] = {
    # hidden 576, intermediate 1536, 9 heads / 3 KV heads x 64: the bundled CPU model
    "smollm2-135m": [(576, 576), (192, 576), (1536, 576), (576, 1536)],
    # hidden 4096, intermediate 12288, 32 heads / 8 KV heads x 128
    "qwen3-8b": [(4096, 4096), (1024, 4096), (12288, 4096), (4096, 12288)],
    # hidden 4096, intermediate 14336, 32 heads / 8 KV heads x 128
    "llama3-8b": [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)],
    # hidden 5120, intermediate 25600, 64 heads x 128 (q 8192 wide) / 8 KV heads
    "qwen3-32b": [(8192, 5120), (5120, 8192), (1024, 5120), (25600, 5120), (5120, 25600)],
    "tiny": [(48, 96)],  # smoke tests
}


def parse_shapes(text: str, tokens: list[int]) -> list[tuple[int, int, int]]:
    """``"1x4096x4096,12288x4096,qwen3-8b"`` -> ``[(T, N, K), ...]`` (NxK and presets take each of ``tokens``)."""
    out: list[tuple[int, int, int]] = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        if item in PRESETS:
            out += [(t, n, k) for n, k in PRESETS[item] for t in tokens]
            continue
        parts = item.split("x")
        try:
            dims = [int(p) for p in parts]
        except ValueError:
            dims = []
        if len(dims) == 3:
            out.append((dims[0], dims[1], dims[2]))
        elif len(dims) == 2:
            out += [(t, dims[0], dims[1]) for t in tokens]
        else:
            raise argparse.ArgumentTypeError(
                f"--shapes: {raw.strip()!r} is neither TxNxK, NxK nor a preset ({', '.join(PRESETS)})"
            )
        if any(d < 1 for d in out[-1]):
            raise argparse.ArgumentTypeError(f"--shapes: every dimension must be >= 1, got {raw.strip()!r}")
    seen: set = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def parse_ints(flag: str, text: str, lo: int = 1) -> list[int]:
    """A comma list of ints, each >= ``lo`` (argparse error naming ``flag`` otherwise)."""
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{flag}: not a comma list of integers: {text!r}") from e
    if not vals or any(v < lo for v in vals):
        raise argparse.ArgumentTypeError(f"{flag}: values must be integers >= {lo}, got {text!r}")
    return vals
