import os
import sys

# Idle OpenMP threads sleep instead of spinning.  libgomp's default is to spin for a while after
# every parallel region, so torch's and Numba's pools hold a core that the other pytest-xdist worker
# (or a test's subprocess) needs: with one worker per core, a third of the suite's CPU time went to
# spinning (measured on 2 cores: 293-305 s of CPU without this, 177-228 s with it).  libgomp reads
# the variable once, when torch loads it, so it is set before the import; the subprocesses that
# tests start inherit it.  A run that loaded torch earlier (a plugin) keeps spinning.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# Triton kernels run on CPU tensors under the interpreter when no GPU is present;
# the interpreter is chosen when kernels are decorated, so set it before any import.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from interpreter_speedup import install  # skips the interpreter's repeated no-op patching (its docstring)

    install()

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU core, at most 4.  Every worker compiles the Numba and Triton
    kernels its tests need (the disk caches share what is already built), and past a few workers
    the largest test files bound the run."""
    return max(1, min(os.cpu_count() or 1, 4))


# The longest files run first, the short ones fill in at the end: pytest-xdist hands out whole files
# in collection order, and a long one started last leaves a worker alone with it.  First the files
# dominated by one build when the caches are cold (nvcc for four architectures, Triton for every
# catalog GPU, the bounds-checked Numba build, the Numba kernel matrices, tuning fleets), then those
# that take longest when every cache is warm (the Triton interpreter, the model evals, the emulator).
LONG_FIRST = ("test_gates.py", "test_cupy_compile.py", "test_fuzz_packed.py", "test_numba_kernels.py",
              "test_numba_backend.py", "test_tune_kernels.py", "test_conformance.py", "test_triton.py",
              "test_eval.py", "test_cupy_emulated.py", "test_tuner.py", "test_numerics.py")  # fmt: skip


def pytest_configure(config):
    # pytest-xdist's per-file scheduler would re-sort the files by test count (most first), which puts
    # these few-test, long-build files last; keep the collection order instead
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A private tuned-config folder (``$TTQKERN_CONFIG_DIR``) with the store's cache cleared."""
    from ttqkern.tuning import store

    monkeypatch.setenv("TTQKERN_CONFIG_DIR", str(tmp_path))
    store.load.cache_clear()
    yield tmp_path
    store.load.cache_clear()
