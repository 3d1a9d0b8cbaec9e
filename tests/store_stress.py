"""Worker processes for the config-store concurrency test (`test_store_reliability.py`).

``python store_stress.py write DIR PREFIX N``: N saves of distinct keys ``PREFIX/i``.
``python store_stress.py read DIR STOP``: reads ``DIR/cpu.json`` in a loop (through the
store's own reader, as `load` does) until the file ``STOP`` exists; prints one JSON
line: loads, loads that were not a complete config file, the most entries seen.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's ttqkern

from ttqkern.tuning import store  # noqa: E402


def write(directory: Path, prefix: str, n: int) -> None:
    for i in range(n):
        store.save("cpu", {f"{prefix}/{i}": {"BLOCK_N": i}}, directory)


def read(directory: Path, stop: Path) -> None:
    path = directory / "cpu.json"
    loads = bad = most = 0
    while not path.exists() and not stop.exists():  # before the first save there is nothing to read
        time.sleep(0.001)
    while True:
        done = stop.exists()  # one more read after the writers finished
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entries = store._read(path)
        loads += 1
        if caught or not isinstance(entries, dict):
            bad += 1
        most = max(most, len(entries))
        if done:
            break
        time.sleep(0.0005)  # leave the writers a core (2-core machines)
    print(json.dumps({"loads": loads, "bad": bad, "most": most, "pid": os.getpid()}))


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        read(Path(sys.argv[2]), Path(sys.argv[3]))
