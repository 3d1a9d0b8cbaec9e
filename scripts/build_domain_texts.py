"""Build the code and legal evaluation texts shipped in ``ttqkern/data`` (run once, output committed).

    python scripts/build_domain_texts.py [--stdlib DIR] [--licences DIR]

- ``code``: a fixed snapshot of CPython 3.11.7 standard-library modules (PSF licence,
  whose notice ships beside them as ``python-stdlib/LICENSE.txt``); validation and test
  are disjoint module lists.
- ``legal``: the GNU licence texts Debian ships in ``/usr/share/common-licenses``; each
  says "Everyone is permitted to copy and distribute verbatim copies of this license
  document", so they are copied whole and unchanged.  Licences of one family (GPL-1/2
  with LGPL-2/2.1, GPL-3 with LGPL-3, the two GFDLs) stay in one split, so the test split
  holds no near-copy of a validation document.

Documents are joined with one blank line; each split's ``SOURCES.txt`` lists its
documents in order with their sha256, so a rebuild elsewhere can be checked with
``git diff`` (same bytes, or a visibly different snapshot).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "ttqkern" / "data"
STDLIB = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
LICENCES = Path("/usr/share/common-licenses")

CODE = {
    "valid": ["argparse.py", "configparser.py", "textwrap.py", "shlex.py", "string.py", "heapq.py",
              "statistics.py", "csv.py"],
    "test": ["ast.py", "dataclasses.py", "enum.py", "pathlib.py", "json/__init__.py", "json/decoder.py",
             "json/encoder.py", "json/scanner.py"],
}  # fmt: skip
LEGAL = {
    "valid": ["GPL-1", "GPL-2", "LGPL-2", "LGPL-2.1"],
    "test": ["GPL-3", "LGPL-3", "GFDL-1.2", "GFDL-1.3"],
}
VERBATIM = "Everyone is permitted to copy and distribute verbatim copies"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def build(folder: str, src: Path, splits: dict[str, list[str]], stem: str, check=None) -> None:
    out = DATA / folder
    out.mkdir(exist_ok=True)
    for split, files in splits.items():
        docs, lines = [], []
        for f in files:
            raw = (src / f).read_bytes()
            if check:
                check(f, raw)
            docs.append(raw.decode("utf-8").replace("\r\n", "\n").strip("\n"))
            lines.append(f"{_sha(raw)}  {f}")
        (out / f"{stem}.{split}.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
        (out / f"SOURCES.{split}.txt").write_text("\n".join(lines) + "\n")
        print(f"{folder}/{stem}.{split}.txt: {len(files)} documents")


def _verbatim(name: str, raw: bytes) -> None:
    if VERBATIM not in raw.decode("utf-8"):
        raise SystemExit(f"{name}: no verbatim-copying grant in the text; not shipping it")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stdlib", type=Path, default=STDLIB)
    p.add_argument("--licences", type=Path, default=LICENCES)
    a = p.parse_args()
    build("python-stdlib", a.stdlib, CODE, "stdlib")
    shutil.copyfile(a.stdlib / "LICENSE.txt", DATA / "python-stdlib" / "LICENSE.txt")
    build("gnu-licences", a.licences, LEGAL, "licences", check=_verbatim)


if __name__ == "__main__":
    main()
