"""dqt-triton: Dynamic Quantization Training with dequantization-free nested integer arithmetic.

The integer contract lives in docs/numerics.md; `dqt_triton.ops` implements it with the Numba
reference on CPU tensors and Triton kernels on CUDA tensors.
"""

import logging

from .dispatch import BACKENDS, use_backend
from .errors import (
    AccumulatorOverflowError,
    BackendUnavailableError,
    CheckpointError,
    DiskFullError,
    DQTError,
    UnsupportedLayerError,
)
from .convert import ConvertConfig
from .model import DQTModel
from .objective import LossConfig
from .runtime import FrozenDQTModel
from .nn import ActQuantizer, DQTConv2d, DQTLinear
from .ops import (
    int_adaptive_avg_pool2d,
    int_add,
    int_avg_pool2d,
    int_bmm,
    int_conv2d,
    int_embedding,
    int_layernorm,
    int_lut,
    int_matmul,
    int_max_pool2d,
    int_mul,
    int_softmax,
)

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "BACKENDS",
    "ConvertConfig",
    "LossConfig",
    "AccumulatorOverflowError",
    "ActQuantizer",
    "BackendUnavailableError",
    "CheckpointError",
    "DQTConv2d",
    "DiskFullError",
    "DQTError",
    "DQTLinear",
    "DQTModel",
    "FrozenDQTModel",
    "UnsupportedLayerError",
    "int_add",
    "int_adaptive_avg_pool2d",
    "int_avg_pool2d",
    "int_lut",
    "int_bmm",
    "int_embedding",
    "int_layernorm",
    "int_softmax",
    "int_conv2d",
    "int_matmul",
    "int_max_pool2d",
    "int_mul",
    "use_backend",
]
