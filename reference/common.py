"""Scalar building blocks of the integer contract (docs/numerics.md), jitted with Numba, and the
contract's constants and output-size rule, which the dispatch layer and the Triton kernels
import from here.

Every reference kernel composes these helpers, so one definition of the nested shift, the
rounding shift and the epilogue serves them all. Arithmetic is done in int64: the contract's
int32 accumulator can never overflow because `dqt_triton.ops` refuses such layers up front.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# The contract's numeric constants (docs/numerics.md section 1), defined here, below every
# layer that uses them: dqt_triton.numerics and the Triton kernels import them from this module.
MASTER_BITS = 8  # width of the master codes every narrower width is a shift of
MAX_SHIFT = MASTER_BITS - 1  # the largest activation or weight shift
INT32_MAX = 2**31 - 1

# Fixed points of the transformer ops (section 10): the softmax exp table's value of exp(0) and
# its output code of probability 1 (step 1/255); the LayerNorm's 2^LN_STD_BITS units of the
# standard deviation and 2^LN_NORM_BITS units of the normalised value, and its widest row.
SOFTMAX_ONE = 1 << 15
SOFTMAX_OUT = 255
LN_STD_BITS = 8
LN_NORM_BITS = 12
LN_MAX_CHANNELS = 1 << 14

# Epilogue selectors shared with the dispatch layer and the Triton kernels.
EPILOGUE_RAW = 0  # int32 accumulator in master units (+ bias)
EPILOGUE_REQUANT = 1  # dyadic requantization to 8-bit codes
EPILOGUE_FLOAT = 2  # float32 dequantization (training path)

# Rows of a width table (docs/numerics.md section 3.5): one set of epilogue constants per
# weight shift 0..MAX_SHIFT.
WIDTH_TABLE_ROWS = MAX_SHIFT + 1


def output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool = False) -> int:
    """Output length along one axis of a convolution or pooling window (torch's formula,
    docs/numerics.md sections 3.1 and 6): floor mode, or in ceil mode rounded up as long as the
    last window starts inside the input or its left padding.

    Plain integer arithmetic: the dispatch layer, the Triton launchers and their fake (Meta)
    implementations (symbolic sizes under torch.compile) call it as it is, the Numba kernels
    through `output_size_jit`.
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


# The same function compiled for the Numba kernels (which cannot call plain Python).
output_size_jit = njit(cache=True, inline="always")(output_size)


@njit(cache=True, inline="always")
def nested_shift(q: int, k: int, round_rule: bool, code_hi: int) -> int:
    """b-bit code from an 8-bit master code: floor shift, or rounding shift clamped at the top."""
    if k == 0:
        return q
    if round_rule:
        v = (q + (1 << (k - 1))) >> k
        top = code_hi >> k
        return top if v > top else v
    return q >> k


@njit(cache=True, inline="always")
def round_shift(v: int, s: int) -> int:
    """Arithmetic right shift by s rounding half up: (v + 2^(s-1)) >> s, identity for s == 0."""
    if s == 0:
        return v
    return (v + (np.int64(1) << (s - 1))) >> s


@njit(cache=True, inline="always")
def clamp(v: int, lo: int, hi: int) -> int:
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


@njit(cache=True, inline="always")
def table_row(table, w_shift):
    """Row of a [T, N] epilogue table for weight shift `w_shift`: T == 1 is one row shared by
    every width, T == 8 a width table (one row per weight shift, docs/numerics.md section 3.5)."""
    return w_shift if table.shape[0] > 1 else 0


@njit(cache=True, inline="always")
def apply_epilogue(acc, w_shift, n, bias, mode, multiplier, rshift, scale, relu, lo, hi, out, m):
    """Write out[m, n] from the master-unit accumulator `acc` (int64, no bias yet) of a row
    with weight shift `w_shift`. bias, multiplier, rshift and scale are [T, N] tables (T in {1, 8})."""
    acc += bias[table_row(bias, w_shift), n]
    if relu and acc < 0:
        acc = 0
    if mode == EPILOGUE_RAW:
        out[m, n] = acc
    elif mode == EPILOGUE_REQUANT:
        mult = np.int64(multiplier[table_row(multiplier, w_shift), n])
        out[m, n] = clamp(round_shift(acc * mult, rshift[table_row(rshift, w_shift), n]), lo, hi)
    else:
        out[m, n] = np.float32(acc) * scale[table_row(scale, w_shift), n]


@njit(cache=True, inline="always")
def dot_rows_i32(a, a0, b, length, acc_out):
    """acc_out[n] = sum_i a[a0 + i] * b[n, i] for int16 codes, stored as the contract's int32.

    Storing into an int32 buffer (overflow is refused up front) lets LLVM run the reduction
    in 32-bit lanes, about twice as fast as an int64 accumulator.
    """
    for n in range(acc_out.shape[0]):
        acc = np.int64(0)
        for i in range(length):
            acc += np.int64(a[a0 + i]) * np.int64(b[n, i])
        acc_out[n] = acc
