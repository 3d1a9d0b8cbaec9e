"""ttqkern's folder in the user's cache, and the one way files are written into it.

Everything cached there is keyed by the content of what produced it (a hash of the
inputs in the file or folder name), so entries are never updated in place: a file is
written once, atomically, and read by any later process, checkout or run.  Standard
library only: the CUDA tools' cache (`ttqkern.backends.sass`) imports it without torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/ttqkern/<parts>`` (default ``~/.cache/ttqkern/...``); not created."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "ttqkern", *parts)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it.

    Parallel writers and readers never see half a file.  Best effort: False (nothing
    written) when the folder cannot be made or written, since a missing cache entry only
    costs recomputing it.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        tmp.replace(path)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
