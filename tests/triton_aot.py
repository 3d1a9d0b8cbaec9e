"""Compile the Triton backend's kernels for GPU targets on a machine without a GPU.

    python tests/triton_aot.py cuda:90 hip:gfx942

Runs the backend's host code on CPU tensors with ``JITFunction.run`` replaced by an
ahead-of-time ``triton.compile`` for each target (nothing is launched), over a set
of launches that reaches every kernel and its main constexpr branches.  This is
how CI checks that the kernels compile to PTX/cubin (NVIDIA) and AMDGCN (AMD),
which the interpreter cannot tell.  Must run with TRITON_INTERPRET unset.
Prints one line per compiled kernel and ``compiled <n> kernels for <target>``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET: the kernels must be compiled, not interpreted"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.uint8: "u8", torch.int32: "i32"}


def parse_target(spec: str) -> GPUTarget:
    """``cuda:<sm>`` (e.g. cuda:90) or ``hip:<arch>`` (e.g. hip:gfx942)."""
    backend, arch = spec.split(":")
    return GPUTarget("cuda", int(arch), 32) if backend == "cuda" else GPUTarget("hip", arch, 64)


def compile_launches(target: GPUTarget, launches) -> list[str]:
    """Run ``launches()`` with every kernel launch compiled for ``target`` instead."""
    compiled = []

    def aot_run(self, *args, grid, warmup, **kwargs):
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in kwargs}
        values = dict(zip(self.arg_names, args, strict=False), **kwargs)  # the rest come as keywords
        signature, constexprs = {}, {}
        for p in self.params:
            v = values[p.name]
            if p.is_constexpr:
                signature[p.name], constexprs[p.name] = "constexpr", v
            elif isinstance(v, torch.Tensor):
                signature[p.name] = "*" + _TYPES[v.dtype]
            elif isinstance(v, bool):
                signature[p.name] = "i1"
            else:
                signature[p.name] = "i32" if isinstance(v, int) else "fp32"
        t0 = time.perf_counter()
        kernel = triton.compile(ASTSource(self, signature, constexprs), target=target, options=options)
        flags = " ".join(f"{k}={v}" for k, v in constexprs.items())
        print(f"{self.__name__} [{flags}] {time.perf_counter() - t0:.2f}s shared={kernel.metadata.shared}B",
              flush=True)  # fmt: skip
        compiled.append(self.__name__)

    saved = JITFunction.run
    JITFunction.run = aot_run
    try:
        launches()
    finally:
        JITFunction.run = saved
    return compiled


def representative_launches():
    """Host calls reaching each kernel and its main branches, with GPU defaults."""
    from ttqkern import reference
    from ttqkern.backends.triton.act_scale import act_scale
    from ttqkern.backends.triton.qmatmul import qmatmul
    from ttqkern.backends.triton.quantize import quantize
    from ttqkern.quant import QuantFormat

    torch.manual_seed(0)
    x = torch.randn(16, 256)
    act_scale(x, 2.0, 1.0, 0.25, False)  # p = 2 fast path
    act_scale(x, 0.5, 1.0, 0.3, False)  # generic p: exp2 / log2
    W, D = torch.randn(64, 256), torch.rand(256) + 0.5
    quantize(W.half(), D, QuantFormat(4, 64, False, "int", 1.0), False)  # one group per program, one tile
    quantize(W, None, QuantFormat(3, 37, True, "float", 1.1), False)  # 8 groups per program, two passes, 3-bit planes
    pw = reference.quantize(W, D, 4, 64, False, "float", 1.0)
    A, B, _ = reference.lowrank(W, 4)
    qmatmul(torch.randn(1, 256, dtype=torch.float16), pw, D, A, B, torch.randn(64), False)  # GEMV, vector units
    qmatmul(torch.randn(8, 256, dtype=torch.bfloat16), pw, D, A, B, None, False)  # GEMV, tl.dot
    qmatmul(torch.randn(64, 256), pw, D, None, None, torch.randn(64), False)  # GEMM fp32 (IEEE dot)
    pw8 = reference.quantize(W, D, 8, 37, False, "int", 1.0)
    qmatmul(torch.randn(100, 256, dtype=torch.bfloat16), pw8, D, A, B, None, False)  # GEMM, tiles span groups


def main(argv: list[str]) -> int:
    for spec in argv or ["cuda:90"]:
        names = compile_launches(parse_target(spec), representative_launches)
        print(f"compiled {len(names)} kernels for {spec}: {', '.join(sorted(set(names)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
