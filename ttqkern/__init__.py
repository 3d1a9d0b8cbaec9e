"""ttqkern: Test-Time Quantization kernels.

Quantize each linear layer's weight at inference time from the activations it is
about to multiply: norm -> scale -> groupwise quantization -> packed low-bit GEMM
-> low-rank add.  See the README, docs/spec.md and `ttqkern.ops` for the stage ops.
"""

from . import backends, ops
from .format import PackedWeight
from .functional import linear
from .model import QuantConfig, calibrate, quantize_model
from .nn import TTQLinear
from .quant import ActScaling, QuantFormat

__version__ = "0.1.0"

__all__ = [
    "ActScaling",
    "PackedWeight",
    "QuantConfig",
    "QuantFormat",
    "TTQLinear",
    "__version__",
    "backends",
    "calibrate",
    "linear",
    "ops",
    "quantize_model",
]
