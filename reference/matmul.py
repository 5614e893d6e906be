"""Reference integer matmul: out[m, n] = epilogue(sum_k shift(x[m, k]) * shift(w[n, k]))."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import apply_epilogue, dot_rows_i32, nested_shift


@njit(parallel=True, cache=True)
def shifted_weight_table(w, shifts, round_rule):
    """[len(shifts), *w.shape] int16 copies of the int8 weights at each requested shift."""
    flat = w.reshape(w.shape[0], -1)
    table = np.empty((shifts.shape[0], flat.shape[0], flat.shape[1]), np.int16)
    for t in range(shifts.shape[0]):
        k = shifts[t]
        for n in prange(flat.shape[0]):
            for j in range(flat.shape[1]):
                table[t, n, j] = nested_shift(np.int64(flat[n, j]), k, round_rule, 127)
    return table


@njit(parallel=True, cache=True)
def int_matmul_kernel(
    x, w, act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """Pure-loop reference.

    x [M, K] uint8/int8 codes, w [N, K] int8 codes, act_shift[m] and
    weight_shifts[weight_slot[m]] the per-row shifts. bias (int64, master units), multiplier,
    rshift and scale are [T, N] epilogue tables: T == 1 shared by every width, T == 8 indexed
    by the row's weight shift.
    """
    M, K = x.shape
    N = w.shape[0]
    w_table = shifted_weight_table(w, weight_shifts, round_rule)
    for m in prange(M):
        a_shift = act_shift[m]
        slot = weight_slot[m]
        w_shift = weight_shifts[slot]
        xs = np.empty(K, np.int16)
        for k in range(K):
            xs[k] = nested_shift(np.int64(x[m, k]), a_shift, round_rule, x_hi)
        acc = np.empty(N, np.int32)
        dot_rows_i32(xs, 0, w_table[slot], K, acc)
        for n in range(N):
            v = np.int64(acc[n]) << (a_shift + w_shift)
            apply_epilogue(v, w_shift, n, bias, mode, multiplier, rshift, scale, relu, lo, hi, out, m)
    return out
