"""Reference integer conv2d: direct loops over NHWC activations and [Cout, KH, KW, Cin/g] weights."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .common import apply_epilogue, dot_rows_i32, nested_shift, output_size_jit
from .matmul import shifted_weight_table


@njit(parallel=True, cache=True)
def int_conv2d_kernel(
    x, w, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
    act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """x [B, H, W, Cin] codes, w [Cout, KH, KW, Cin/groups] int8, out [B*OH*OW, Cout] (NHWC rows);
    the epilogue tables are [T, Cout] as in `int_matmul_kernel` (row w_shift of sample b when T == 8).

    Each output pixel gathers its shifted input patch once (ordered group, kh, kw, c; padding
    contributes code 0, the zero of signed and unsigned codes), then takes one dot product per
    output channel with the matching weight row.
    """
    B, H, W, C = x.shape
    Cout, KH, KW, Cg = w.shape
    Cout_g = Cout // groups
    Kg = KH * KW * Cg
    OH = output_size_jit(H, KH, stride_h, pad_h, dil_h, False)
    OW = output_size_jit(W, KW, stride_w, pad_w, dil_w, False)
    w_table = shifted_weight_table(w, weight_shifts, round_rule).reshape(
        weight_shifts.shape[0], groups, Cout_g, Kg
    )
    for row in prange(B * OH):
        b = row // OH
        oh = row % OH
        a_shift = act_shift[b]
        slot = weight_slot[b]
        w_shift = weight_shifts[slot]
        total_shift = a_shift + w_shift
        patch = np.empty(groups * Kg, np.int16)
        acc = np.empty(Cout, np.int32)
        for ow in range(OW):
            for g in range(groups):
                for i in range(KH):
                    ih = oh * stride_h - pad_h + i * dil_h
                    for j in range(KW):
                        iw = ow * stride_w - pad_w + j * dil_w
                        base = g * Kg + (i * KW + j) * Cg
                        inside = ih >= 0 and ih < H and iw >= 0 and iw < W
                        for c in range(Cg):
                            patch[base + c] = (
                                nested_shift(np.int64(x[b, ih, iw, g * Cg + c]), a_shift, round_rule, x_hi)
                                if inside else 0
                            )
            for g in range(groups):
                dot_rows_i32(patch, g * Kg, w_table[slot, g], Kg, acc[g * Cout_g:(g + 1) * Cout_g])
            m = (b * OH + oh) * OW + ow
            for co in range(Cout):
                v = np.int64(acc[co]) << total_shift
                apply_epilogue(v, w_shift, co, bias, mode, multiplier, rshift, scale, relu, lo, hi, out, m)
    return out
