"""Numba reference kernels: the exact implementation of docs/numerics.md on the CPU.

`int_*_kernel` are pure loops (the reference); `blas` holds the CPU execution path that wraps
exact library calls (oneDNN's int8 convolution, int8 or float32 GEMMs) with the same Numba
shifts and epilogues. Arguments are numpy arrays
already validated and normalised by `dqt_triton.ops`; call the ops, not these, from user code.
"""

from . import blas
from .blas import (
    ConvPlan,
    WeightTable,
    conv_plan,
    float32_gemm_is_exact,
    int_conv2d_blas,
    int_matmul_blas,
    run_conv_plan,
    weight_table,
)
from .common import EPILOGUE_FLOAT, EPILOGUE_RAW, EPILOGUE_REQUANT
from .conv import int_conv2d_kernel
from .elementwise import int_add_kernel, int_lut_kernel, int_mul_kernel
from .matmul import int_matmul_kernel
from .pool import int_adaptive_avg_pool2d_kernel, int_avg_pool2d_kernel, int_max_pool2d_kernel

__all__ = [
    "ConvPlan",
    "WeightTable",
    "blas",
    "conv_plan",
    "run_conv_plan",
    "EPILOGUE_FLOAT",
    "EPILOGUE_RAW",
    "EPILOGUE_REQUANT",
    "float32_gemm_is_exact",
    "int_add_kernel",
    "int_lut_kernel",
    "int_adaptive_avg_pool2d_kernel",
    "int_avg_pool2d_kernel",
    "int_conv2d_blas",
    "int_conv2d_kernel",
    "int_matmul_blas",
    "int_matmul_kernel",
    "int_max_pool2d_kernel",
    "int_mul_kernel",
    "weight_table",
]
