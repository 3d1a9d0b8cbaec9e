"""Compile the backend's kernels for a GPU target exactly as the JIT would, without a GPU.

`capture(target, fn)` runs host code ``fn()`` (the backend's own launchers, on CPU
tensors) with every ``kernel[grid](...)`` launch replaced by an ahead-of-time
``triton.compile`` for ``target``: the JIT's own binder computes the
specialization (16-byte aligned pointers and integers get ``tt.divisibility =
16``, integers equal to 1 become constants), so the code is what the GPU would
run.  Nothing is launched; each launch is recorded as a `Launch` with its grid,
options and compiled kernel (cubin, PTX, metadata).  Compilations are cached per
process by (kernel, signature, constants, attributes, options, target).  Torch's own
matrix products inside the block (the prefill path's cuBLAS ``F.linear``) return
uninitialised tensors of the right shape: their inputs are outputs of kernels that
were not launched, and computing them on the CPU cost the compile check 75 s of its 94.

Requires TRITON_INTERPRET unset when the kernels were decorated (interpreted
kernels cannot be compiled).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

_OPTION_NAMES = ("num_warps", "num_stages", "enable_fp_fusion", "num_ctas", "maxnreg")


def parse_target(spec: str) -> GPUTarget:
    """``sm_90`` / ``sm_80`` / ``cuda:90`` / ``hip:gfx942`` -> a `GPUTarget`."""
    spec = spec.strip().lower()
    if spec.startswith("sm_"):
        return GPUTarget("cuda", int(spec[3:].rstrip("a")), 32)
    backend, _, arch = spec.partition(":")
    if backend == "cuda":
        return GPUTarget("cuda", int(arch), 32)
    if backend == "hip":
        return GPUTarget("hip", arch, 64)
    raise ValueError(f"target must be sm_<NN>, cuda:<NN> or hip:<gfx...>, got {spec!r}")


@dataclass
class Launch:
    """One intercepted launch: the kernel, its grid and launch options, and what it compiled to."""

    kernel: str
    grid: tuple[int, int, int]
    options: dict
    constexprs: dict
    compiled: object = field(repr=False)  # triton CompiledKernel

    @property
    def ctas(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def num_warps(self) -> int:
        return int(self.compiled.metadata.num_warps)

    @property
    def shared(self) -> int:
        return int(self.compiled.metadata.shared)

    def asm(self, kind: str):
        """``"cubin"`` (bytes), ``"ptx"``, ``"ttgir"``, ``"amdgcn"``, ... when the target produced it."""
        return self.compiled.asm.get(kind)


_cache: dict = {}


def _freeze(v):
    if isinstance(v, dict):
        return tuple(sorted((str(k), _freeze(x)) for k, x in v.items()))
    if isinstance(v, list | tuple):
        return tuple(_freeze(x) for x in v)
    return v if isinstance(v, int | float | str | bool | type(None)) else str(v)


def _grid3(grid, bound_args) -> tuple[int, int, int]:
    if callable(grid):
        grid = grid(bound_args)
    g = (*(int(v) for v in grid), 1, 1)
    return g[0], g[1], g[2]


class _NoMatmul(TorchDispatchMode):
    """Matrix products return ``torch.empty`` of their result's shape and dtype; every other op runs."""

    _OPS = frozenset(("mm", "addmm", "bmm", "baddbmm", "mv", "addmv"))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in self._OPS:
            with torch._C._DisableTorchDispatch():
                meta = func(*(a.to("meta") if isinstance(a, torch.Tensor) else a for a in args),
                            **{k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})  # fmt: skip
            device = next(a.device for a in args if isinstance(a, torch.Tensor))
            return torch.empty(meta.shape, dtype=meta.dtype, device=device)
        return func(*args, **kwargs)


@contextlib.contextmanager
def capture(target: GPUTarget):
    """Within the block, kernel launches compile for ``target`` and are appended to the yielded list."""
    backend = make_backend(target)
    launches: list[Launch] = []
    binders: dict[int, object] = {}

    def aot_run(self, *args, grid, warmup, **kwargs):
        binder = binders.get(id(self))
        if binder is None:
            binder = binders[id(self)] = create_function_from_signature(self.signature, self.params, backend)
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound_args, specialization, options)
        opts = {k: getattr(options, k) for k in _OPTION_NAMES if hasattr(options, k)}
        key = (self.__name__, id(self), _freeze(signature), _freeze(constexprs), _freeze(attrs), _freeze(opts),
               str(target))  # fmt: skip
        kernel = _cache.get(key)
        if kernel is None:
            kernel = triton.compile(ASTSource(self, signature, constexprs, attrs), target=target, options=opts)
            _cache[key] = kernel
        named = {self.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
        launches.append(Launch(self.__name__, _grid3(grid, bound_args), opts, named, kernel))
        return kernel

    saved = JITFunction.run
    JITFunction.run = aot_run
    try:
        with _NoMatmul():
            yield launches
    finally:
        JITFunction.run = saved


def ptxas_flags(launch: Launch) -> tuple[str, ...]:
    """The register-allocation flags Triton's NVIDIA backend passes ``ptxas`` for ``launch`` (triton 3.9:
    ``--regAllocOptLevel=2``, and ``--fmad=false`` without FP fusion): re-assembling its PTX with them
    (`sass.ptxas_usage`) reports the registers and spills of the cubin Triton made."""
    return ("--regAllocOptLevel=2",) + (() if launch.options.get("enable_fp_fusion", True) else ("--fmad=false",))
