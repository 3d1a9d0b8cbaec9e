"""Evaluation text shipped with ttqkern (package data): WikiText-2 and Penn Treebank.

``text_path(name)`` gives the file of a named split, ``read_text(name_or_path)`` its
text, ``rows(...)`` its lines.  Sources and licences: ``README.md`` in this folder.
Tune and calibrate on the ``-valid`` splits; the test splits are for reporting only.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

# name -> file inside this package.  "wikitext2" is the tokenized test split (the form
# whose validation split we also ship, so calibration/tuning and test match).
TEXTS = {
    "wikitext2": "wikitext2/wiki.test.tokens",
    "wikitext2-valid": "wikitext2/wiki.valid.tokens",
    "wikitext2-raw": "wikitext2/wiki.test.raw-hf.txt",
    "ptb": "ptb/ptb.test.txt",
    "ptb-valid": "ptb/ptb.valid.txt",
}


def names() -> list[str]:
    """The names `text_path` accepts."""
    return list(TEXTS)


def text_path(name: str) -> Path:
    """Path of a shipped text by name (``wikitext2``, ``wikitext2-valid``, ``wikitext2-raw``, ``ptb``, ``ptb-valid``)."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}: choose one of {names()} or give a file path")
    path = Path(str(importlib.resources.files(__name__).joinpath(TEXTS[name])))
    if not path.is_file():
        raise FileNotFoundError(f"text {name!r} should be at {path} (package data missing: reinstall ttqkern)")
    return path


def resolve(name_or_path: str | Path) -> Path:
    """A shipped text's name, or a path to a UTF-8 text file, -> an existing file path."""
    if isinstance(name_or_path, str) and name_or_path in TEXTS:
        return text_path(name_or_path)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"text {str(name_or_path)!r} is neither a file nor one of {names()}")
    return path


def rows(name_or_path: str | Path) -> list[str]:
    """The text's lines, each with its newline (``\\r\\n`` normalised), like the HF dataset rows."""
    text = resolve(name_or_path).read_text(encoding="utf-8").replace("\r\n", "\n")
    return text.splitlines(keepends=True)


def read_text(name_or_path: str | Path) -> str:
    """The evaluation string: rows joined with ``"\\n\\n"``, as GPTQ joins WikiText/PTB rows."""
    return "\n\n".join(rows(name_or_path))
