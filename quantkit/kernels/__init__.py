"""W4A16 kernels: csrc/ built with torch.utils.cpp_extension, the load-time repack, one w4a16_linear.

    packed = prepare(ql, device="cuda")                 # or prepare_from_checkpoint(qweight, qzeros, ...)
    y = w4a16_linear(x, packed, bias)                     # backend "auto" | "kernel" | "reference" | ...
    layer = W4A16Linear(packed, bias)                     # nn.Module for transformers models

Importing this package never builds or fails: the build happens at first kernel use, and with no GPU or no
compiler ``kernel_available()`` says why and backend="auto" runs the pure-torch reference.
"""

from quantkit.kernels.build import kernel_available
from quantkit.kernels.module import W4A16Linear
from quantkit.kernels.ops import BACKENDS, dequantize_weight, w4a16_linear
from quantkit.kernels.packing import PackedLinear, prepare, prepare_from_checkpoint
from quantkit.kernels.reference import reference_linear, reference_weight
from quantkit.kernels.selfcheck import KernelSelfCheckError, self_check

__all__ = [
    "BACKENDS",
    "KernelSelfCheckError",
    "PackedLinear",
    "W4A16Linear",
    "dequantize_weight",
    "kernel_available",
    "prepare",
    "prepare_from_checkpoint",
    "reference_linear",
    "reference_weight",
    "self_check",
    "w4a16_linear",
]
