"""Evaluation text shipped with ttqkern (package data): four domains, each with a validation and a test split.

| domain | test | validation | what |
|---|---|---|---|
| ``wiki`` | ``wikitext2`` | ``wikitext2-valid`` | WikiText-2 (Wikipedia articles) |
| ``news`` | ``ptb`` | ``ptb-valid`` | Penn Treebank (Wall Street Journal) |
| ``code`` | ``code`` | ``code-valid`` | CPython 3.11.7 standard-library modules |
| ``legal`` | ``legal`` | ``legal-valid`` | GNU licence texts |

(plus ``wikitext2-raw``, the raw form of the WikiText-2 test split).  ``text_path(name)``
gives the file of a named split, ``read_text(name_or_path)`` the evaluation string,
``rows(...)`` its lines, `domains` the table above.  Sources and licences: ``README.md``
in this folder.  Calibrate and tune on the ``-valid`` splits; the test splits are for
reporting only (`is_test` tells them apart).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Text:
    """A shipped text: its file in this package, domain, split and how its lines are joined.

    ``gptq_rows``: WikiText/PTB files are read the way GPTQ-style evaluations read the
    Hugging Face rows (every line joined with a blank line); code and legal text are
    read as they are.
    """

    file: str
    domain: str
    split: str  # "valid" or "test"
    gptq_rows: bool


TEXTS: dict[str, Text] = {
    # "wikitext2" is the tokenized test split: the form whose validation split we also ship.
    "wikitext2": Text("wikitext2/wiki.test.tokens", "wiki", "test", True),
    "wikitext2-valid": Text("wikitext2/wiki.valid.tokens", "wiki", "valid", True),
    "wikitext2-raw": Text("wikitext2/wiki.test.raw-hf.txt", "wiki", "test", True),
    "ptb": Text("ptb/ptb.test.txt", "news", "test", True),
    "ptb-valid": Text("ptb/ptb.valid.txt", "news", "valid", True),
    "code": Text("python-stdlib/stdlib.test.txt", "code", "test", False),
    "code-valid": Text("python-stdlib/stdlib.valid.txt", "code", "valid", False),
    "legal": Text("gnu-licences/licences.test.txt", "legal", "test", False),
    "legal-valid": Text("gnu-licences/licences.valid.txt", "legal", "valid", False),
}
# domain -> (test split, validation split): the pairs the domain-shift experiment uses.
DOMAINS: dict[str, tuple[str, str]] = {
    "wiki": ("wikitext2", "wikitext2-valid"),
    "news": ("ptb", "ptb-valid"),
    "code": ("code", "code-valid"),
    "legal": ("legal", "legal-valid"),
}


def names() -> list[str]:
    """The names `text_path` accepts."""
    return list(TEXTS)


def domains() -> dict[str, tuple[str, str]]:
    """``{domain: (test split name, validation split name)}`` for the four shipped domains."""
    return dict(DOMAINS)


def is_test(name_or_path: str | Path) -> bool:
    """True for a shipped test split (tuning and calibration must refuse it); False for anything else."""
    return isinstance(name_or_path, str) and name_or_path in TEXTS and TEXTS[name_or_path].split == "test"


def text_path(name: str) -> Path:
    """Path of a shipped text by name (see `names`)."""
    if name not in TEXTS:
        raise ValueError(f"unknown text {name!r}: choose one of {names()} or give a file path")
    path = Path(str(importlib.resources.files(__name__).joinpath(TEXTS[name].file)))
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
    """The evaluation string.

    WikiText-2 / PTB (and any file given by path): rows joined with ``"\\n\\n"``, as
    GPTQ joins the Hugging Face rows.  Code and legal text: the file as it is.
    """
    if isinstance(name_or_path, str) and name_or_path in TEXTS and not TEXTS[name_or_path].gptq_rows:
        return resolve(name_or_path).read_text(encoding="utf-8").replace("\r\n", "\n")
    return "\n\n".join(rows(name_or_path))
