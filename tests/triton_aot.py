"""Compile the Triton backend's kernels for GPU targets on a machine without a GPU.

    python tests/triton_aot.py cuda:90 hip:gfx942

Runs the backend's host code on CPU tensors with every launch compiled ahead of
time for each target instead (`ttqkern.backends.triton.aot.capture`: the JIT's
own specialization hints, nothing launched), over a set of launches that
reaches every kernel and its main constexpr branches.  This is how CI checks
that the kernels compile to PTX/cubin (NVIDIA) and AMDGCN (AMD), which the
interpreter cannot tell.  Must run with TRITON_INTERPRET unset.
Prints one line per launch and ``compiled <n> kernels for <target>: <names>``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET: the kernels must be compiled, not interpreted"

from ttqkern.backends.triton import aot  # noqa: E402


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
    quantize(W, None, QuantFormat(3, 37, True, "float", 1.1), False)  # 8 groups per program, two passes, 3-bit
    A, B, _ = reference.lowrank(W, 4)
    bias = torch.randn(64)
    pw4 = reference.quantize(W, D, 4, 64, False, "float", 1.0)
    pw3 = reference.quantize(W, D, 3, 128, False, "float", 1.0)
    pw2 = reference.quantize(W, D, 2, 37, False, "int", 1.0)  # padded word layout
    pw8 = reference.quantize(W, D, 8, 37, True, "float", 1.0)
    qmatmul(torch.randn(1, 256, dtype=torch.float16), pw4, D, A, B, bias, False)  # one token, low rank + bias
    qmatmul(torch.randn(1, 256, dtype=torch.bfloat16), pw3, D, None, None, None, False)  # one token, two planes
    qmatmul(torch.randn(1, 256), pw2, None, None, None, bias, False)  # one token, fp32, int zero-points
    qmatmul(torch.randn(8, 256, dtype=torch.bfloat16), pw4, D, A, B, None, False)  # decode on tensor cores
    qmatmul(torch.randn(64, 256), pw3, D, None, None, bias, False)  # prefill kernel, fp32 (IEEE dot)
    qmatmul(torch.randn(100, 256, dtype=torch.bfloat16), pw8, D, A, B, None, False)  # prefill, 8-bit, padded
    qmatmul(torch.randn(600, 256, dtype=torch.float16), pw3, D, A, B, bias, False)  # dequantize + cuBLAS


def main(argv: list[str]) -> int:
    for spec in argv or ["cuda:90"]:
        t0 = time.perf_counter()
        with aot.capture(aot.parse_target(spec)) as launches:
            representative_launches()
        for lc in launches:
            flags = " ".join(f"{k}={v}" for k, v in lc.constexprs.items())
            print(f"{lc.kernel} [{flags}] shared={lc.shared}B", flush=True)
        names = sorted({lc.kernel for lc in launches})
        print(f"compiled {len(launches)} kernels for {spec}: {', '.join(names)} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
