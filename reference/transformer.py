"""Reference kernels of the transformer ops (docs/numerics.md section 10): the product of two
activations, softmax and LayerNorm on codes, and embedding lookups. Pure Numba loops over
arrays that `dqt_triton.ops_transformer` has validated and normalised."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import LN_NORM_BITS, LN_STD_BITS, SOFTMAX_OUT, clamp, nested_shift, round_shift


@njit(cache=True, inline="always")
def floor_div(t, d):
    """floor(t / d) for d > 0 (written so that it needs no floor division of a negative number)."""
    if t >= 0:
        return t // d
    return -((-t + d - 1) // d)


@njit(cache=True, inline="always")
def isqrt(q):
    """The largest r with r * r <= q, for 0 <= q < 2^62: a float64 estimate, then corrected."""
    r = np.int64(np.sqrt(np.float64(q)))
    for _ in range(2):
        if r * r > q:
            r -= 1
    for _ in range(2):
        if (r + 1) * (r + 1) <= q:
            r += 1
    return r


@njit(parallel=True, cache=True)
def int_bmm_kernel(a, b, a_shift, b_shift, b_on_n, round_rule, a_hi, b_hi, mode, multiplier, rshift, lo, hi, out):
    """out[g, m, n] = epilogue(sum_k A[g, m, k] * B[g, k, n]) with A, B the nested codes in master
    units: a [G, M, K] shifted by a_shift[g, m], b [G, K, N] by b_shift[g, n] (b_on_n) or
    b_shift[g, k]. mode 0 writes the int32 sum, 1 requantizes with (multiplier, rshift)."""
    G, M, K = a.shape
    N = b.shape[2]
    for gm in prange(G * M):
        g = gm // M
        m = gm - g * M
        ka = a_shift[g, m]
        row = np.empty(K, np.int64)
        for k in range(K):
            row[k] = nested_shift(np.int64(a[g, m, k]), ka, round_rule, a_hi) << ka
        for n in range(N):
            acc = np.int64(0)
            for k in range(K):
                kb = b_shift[g, n] if b_on_n else b_shift[g, k]
                acc += row[k] * (nested_shift(np.int64(b[g, k, n]), kb, round_rule, b_hi) << kb)
            if mode == 0:
                out[g, m, n] = acc
            else:
                out[g, m, n] = clamp(round_shift(acc * np.int64(multiplier), rshift), lo, hi)
    return out


@njit(parallel=True, cache=True)
def int_softmax_kernel(x, table, causal, out):
    """Softmax over the last axis of x [G, M, N] codes: exp table on max-subtracted codes, an
    integer sum, a rounded division to uint8 codes of step 1/255. With `causal`, row m keeps
    columns n <= m + N - M and writes 0 elsewhere."""
    G, M, N = x.shape
    for gm in prange(G * M):
        g = gm // M
        m = gm - g * M
        last = m + N - M if causal else N - 1
        top = np.int64(-1 << 20)
        for n in range(last + 1):
            v = np.int64(x[g, m, n])
            if v > top:
                top = v
        total = np.int64(0)
        for n in range(last + 1):
            total += np.int64(table[top - np.int64(x[g, m, n])])
        for n in range(N):
            if n <= last:
                e = np.int64(table[top - np.int64(x[g, m, n])])
                out[g, m, n] = (2 * SOFTMAX_OUT * e + total) // (2 * total)
            else:
                out[g, m, n] = 0
    return out


@njit(parallel=True, cache=True)
def int_layernorm_kernel(x, mult, offset, rshift, eps_units, lo, hi, out):
    """LayerNorm over the last axis of x [R, C] codes: integer mean and variance, integer square
    root, the normalised value in 2^-LN_NORM_BITS units, then clamp(round_shift(mult[c] * n +
    offset[c], rshift + LN_NORM_BITS), lo, hi)."""
    R, C = x.shape
    for r in prange(R):
        total = np.int64(0)
        for c in range(C):
            total += np.int64(x[r, c])
        var = np.int64(0)
        for c in range(C):
            d = np.int64(C) * np.int64(x[r, c]) - total
            var += d * d
        q = (var // C) * (1 << (2 * LN_STD_BITS)) + ((var % C) << (2 * LN_STD_BITS)) // C + eps_units
        root = isqrt(q)
        for c in range(C):
            d = np.int64(C) * np.int64(x[r, c]) - total
            n = np.int64(0)
            if root > 0:
                n = floor_div(2 * (d << (LN_STD_BITS + LN_NORM_BITS)) + root, 2 * root)
            v = np.int64(mult[c]) * n + np.int64(offset[c])
            out[r, c] = clamp(round_shift(v, rshift + LN_NORM_BITS), lo, hi)
    return out


@njit(parallel=True, cache=True)
def int_embedding_kernel(ids, table, out):
    """out[i, :] = table[ids[i], :] (ids already checked to lie in [0, V))."""
    D = table.shape[1]
    for i in prange(ids.shape[0]):
        t = np.int64(ids[i])
        for d in range(D):
            out[i, d] = table[t, d]
    return out
