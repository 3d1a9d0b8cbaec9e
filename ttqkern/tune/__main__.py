"""``python -m ttqkern.tune --<mode>``: dispatch to the mode's own command line."""

from __future__ import annotations

import importlib
import sys

from . import MODES


def main(argv=None) -> int:
    """Pick the one ``--<mode>`` flag out of argv and hand the rest to that mode's ``main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = "python -m ttqkern.tune"
    usage = f"usage: {prog} --<mode> [options]; modes: " + ", ".join(f"--{m} ({h})" for m, (_, h) in MODES.items())
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        print(f"Options of a mode: {prog} --<mode> --help")
        return 0
    chosen = [a[2:] for a in argv if a.startswith("--") and a[2:] in MODES]
    if len(chosen) != 1:
        flags = [a for a in argv if a.startswith("--")]
        if chosen:
            what = f"one mode per run, got {', '.join('--' + c for c in chosen)}"
        else:
            what = f"unknown mode {flags[0]}" if flags else "no mode given"
        print(f"{prog}: error: {what}\n{usage}", file=sys.stderr)
        return 2
    mode = chosen[0]
    rest = [a for a in argv if a != f"--{mode}"]
    return importlib.import_module(MODES[mode][0]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
