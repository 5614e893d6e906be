"""Reference integer element-wise ops with pre-computed constants (docs/numerics.md, section 5)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import clamp, round_shift


@njit(parallel=True, cache=True)
def int_add_kernel(a, b, k1, k2, k3, shift, lo, hi, out):
    """out = clamp(round_shift(k1*a + k2*b + k3, shift), lo, hi) over flat arrays."""
    for i in prange(a.shape[0]):
        v = np.int64(k1) * np.int64(a[i]) + np.int64(k2) * np.int64(b[i]) + np.int64(k3)
        out[i] = clamp(round_shift(v, shift), lo, hi)
    return out


@njit(parallel=True, cache=True)
def int_mul_kernel(a, b, k1, k2, k3, k4, shift, lo, hi, out):
    """out = clamp(round_shift(k1*a*b + k2*a + k3*b + k4, shift), lo, hi) over flat arrays."""
    for i in prange(a.shape[0]):
        qa = np.int64(a[i])
        qb = np.int64(b[i])
        v = np.int64(k1) * qa * qb + np.int64(k2) * qa + np.int64(k3) * qb + np.int64(k4)
        out[i] = clamp(round_shift(v, shift), lo, hi)
    return out


@njit(parallel=True, cache=True)
def int_lut_kernel(x, table, offset, out):
    """out = table[x + offset] over flat arrays (offset 128 for int8 codes, 0 for uint8)."""
    for i in prange(x.shape[0]):
        out[i] = table[np.int64(x[i]) + offset]
    return out
