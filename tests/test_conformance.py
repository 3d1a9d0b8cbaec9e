"""Every registered backend, on every device type it runs on here, through the conformance suite.

One `ConformanceSuite` subclass per (backend, device type) found in the registry at
collection time: a backend is tested here as soon as it is registered.  Unavailable
ones are skipped with their reason; CUDA classes carry the ``gpu`` marker.
"""

from __future__ import annotations

import pytest
from conformance import ConformanceSuite

from ttqkern import backends


def _suite_classes():
    for name in backends.names():
        be = backends.get(name)
        device_types = be.device_types if be is not None else ("cpu",)  # an import failure: skipped with its reason
        for device in ("cpu", "cuda"):
            if device not in device_types:
                continue
            cls = type(f"Test_{name}_{device}", (ConformanceSuite,), {"backend": name, "device": device})
            if device == "cuda":
                cls = pytest.mark.gpu(cls)
            yield cls.__name__, cls


globals().update(_suite_classes())
