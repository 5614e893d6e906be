"""CPU execution path: Numba shifts and epilogues around an exact float32 library GEMM.

int8 x int8 products summed over a K-chunk stay integers of magnitude <= 2^24 when the chunk is
short enough, and every float32 integer up to 2^24 is exact, so any summation order (blocking,
FMA, threads) gives the exact integer. Chunk results are converted to int32 and added, so the
result equals the pure reference bit for bit (the oracle tests in tests/reference check it).

Unshifted uint8 activations (up to 255) are offset by -128 before the GEMM and
128 * (per-channel sums of the shifted weights) is added back: the products then stay within
128 * 128 instead of 255 * 128, which doubles the exact chunk length and halves the number
of GEMM calls at 8-bit activations. The shifted float32 weights (`WeightTable`) are built once
per (weight, shift, rule) and may be cached by the caller (`dqt_triton.ops`, ``cache_weight``).

Ungrouped convolutions skip im2col: torch's float32 convolution (oneDNN's direct algorithm, or
im2col and GEMM) runs on the shifted codes, one call per chunk of input channels, under the same
2^24 bound. Direct convolution only multiplies and adds codes, so it is exact like the GEMM; a
reduced-precision float32 mode (bf16/tf32) turns the path off (`float32_conv_is_exact`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from numba import njit, prange

from .common import apply_epilogue, nested_shift, output_size
from .matmul import shifted_weight_table

FLOAT32_EXACT_LIMIT = 1 << 24
UINT8_OFFSET = 128
WEIGHT_ABS_MAX = 128
MAX_COLS_BYTES = 64 << 20
# Below these output sizes im2col is as fast as the library convolution (int_conv2d_blas).
LIBRARY_CONV_MIN_MAP = 64  # output pixels per sample
LIBRARY_CONV_MIN_PIXELS = 4096  # output pixels per call


def float32_gemm_is_exact() -> bool:
    """False when torch is allowed to run float32 matmuls in reduced precision (bf16/tf32)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn_matmul = getattr(torch.backends.mkldnn, "matmul", None)
    precision = getattr(mkldnn_matmul, "fp32_precision", "ieee")
    return precision in ("ieee", "none")


def float32_conv_is_exact() -> bool:
    """False when torch may run float32 convolutions or matmuls in reduced precision."""
    mkldnn_conv = getattr(torch.backends.mkldnn, "conv", None)
    precision = getattr(mkldnn_conv, "fp32_precision", "ieee")
    return float32_gemm_is_exact() and precision in ("ieee", "none")


def shifted_abs_max(code_abs_max: int, min_shift: int) -> int:
    """Largest |code| after a shift of at least `min_shift` (either shift rule)."""
    return max(1, code_abs_max >> min_shift)


def _even_chunk(total: int, longest: int) -> int:
    """Chunk length that splits `total` terms evenly into the fewest chunks of at most
    `longest`: the longest run whose partial sums stay exactly representable in float32."""
    chunks = -(-total // longest)
    return -(-total // chunks)


def exact_int_gemm(a: np.ndarray, b: np.ndarray, a_abs_max: int, b_abs_max: int) -> torch.Tensor:
    """int32 a @ b^T for integer-valued float32 arrays with bounded magnitudes.

    a is [R, K] and b [N, K], or batched [G, R, K] and [G, N, K].
    """
    ta = torch.from_numpy(a)
    tb = torch.from_numpy(b).transpose(-1, -2)
    if not float32_gemm_is_exact():
        return torch.matmul(ta.double(), tb.double()).to(torch.int32)
    step = _even_chunk(a.shape[-1], FLOAT32_EXACT_LIMIT // (a_abs_max * b_abs_max))
    acc = None
    for k0 in range(0, a.shape[-1], step):
        part = torch.matmul(ta[..., k0:k0 + step], tb[..., k0:k0 + step, :]).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


class WeightTable(NamedTuple):
    """Shifted weight codes as float32 [N, K] plus their int64 sums over K per output channel [N] (for the offset)."""

    values: np.ndarray
    channel_sums: np.ndarray
    abs_max: int


def weight_table(w2d: np.ndarray, shift: int, round_rule: int) -> WeightTable:
    """The int8 weights [N, K] after the nested shift `shift`, ready for `exact_int_gemm`."""
    shifted = shifted_weight_table(w2d, np.array([shift], np.int64), round_rule)[0]
    return WeightTable(shifted.astype(np.float32), shifted.sum(axis=1, dtype=np.int64),
                       shifted_abs_max(WEIGHT_ABS_MAX, shift))


def _activation_plan(x_hi: int, min_act_shift: int) -> tuple[float, int]:
    """(offset subtracted from shifted activations, largest |shifted activation - offset|)."""
    if x_hi == 255 and min_act_shift == 0:
        return float(UINT8_OFFSET), UINT8_OFFSET
    x_abs_max = 255 if x_hi == 255 else 128
    return 0.0, shifted_abs_max(x_abs_max, min_act_shift)


@njit(parallel=True, cache=True)
def _shift_rows_f32(x, rows, act_shift, round_rule, x_hi, offset):
    out = np.empty((rows.shape[0], x.shape[1]), np.float32)
    for r in prange(rows.shape[0]):
        m = rows[r]
        k = act_shift[m]
        for j in range(x.shape[1]):
            out[r, j] = nested_shift(np.int64(x[m, j]), k, round_rule, x_hi) - offset
    return out


@njit(parallel=True, cache=True)
def _epilogue_rows(acc, dest, total_shift, w_shift, correction, bias, mode, multiplier, rshift, scale, relu, lo, hi,
                   out):
    """out[dest[r]] from GEMM rows acc[r] that all use weight shift `w_shift` (its row of each
    [T, N] epilogue table when T == 8)."""
    for r in prange(acc.shape[0]):
        m = dest[r]
        t = total_shift[r]
        for n in range(acc.shape[1]):
            v = (np.int64(acc[r, n]) + correction[n]) << t
            apply_epilogue(v, w_shift, n, bias, mode, multiplier, rshift, scale, relu, lo, hi, out, m)


def _correction(table: WeightTable, offset: float) -> np.ndarray:
    return table.channel_sums * np.int64(offset)


def int_matmul_blas(
    x, w_tables, act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """`int_matmul_kernel`'s result via exact float32 GEMMs; `w_tables[s]` is the
    `weight_table` of the weights at `weight_shifts[s]`. The epilogue arguments are the [T, N]
    tables of `int_matmul_kernel`."""
    for slot in range(weight_shifts.shape[0]):
        rows = np.flatnonzero(weight_slot == slot)
        if rows.size == 0:
            continue
        table = w_tables[slot]
        offset, x_max = _activation_plan(x_hi, int(act_shift[rows].min()))
        xs = _shift_rows_f32(x, rows, act_shift, round_rule, x_hi, offset)
        acc = exact_int_gemm(xs, table.values, x_max, table.abs_max).numpy()
        total = act_shift[rows] + weight_shifts[slot]
        _epilogue_rows(acc, rows, total, weight_shifts[slot], _correction(table, offset), bias, mode, multiplier,
                       rshift, scale, relu, lo, hi, out)
    return out


@njit(parallel=True, cache=True)
def _shift_samples_f32(x, samples, act_shift, round_rule, x_hi, offset, ph, pw):
    """NHWC float32 codes of `samples` with their activation shift applied, minus `offset`,
    padded by (ph, pw) with code 0 (which becomes -offset like every other code)."""
    _, H, W, C = x.shape
    out = np.full((samples.shape[0], H + 2 * ph, W + 2 * pw, C), -offset, np.float32)
    for s in prange(samples.shape[0]):
        b = samples[s]
        k = act_shift[b]
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    out[s, ph + i, pw + j, c] = nested_shift(np.int64(x[b, i, j, c]), k, round_rule, x_hi) - offset
    return out


def exact_int_conv(xs: np.ndarray, table: "WeightTable", w_shape, x_abs_max: int, stride, dilation) -> np.ndarray:
    """int32 rows [(s, oh, ow), Cout] of an ungrouped convolution of padded NHWC float32 codes
    `xs` with the shifted weights of `table`, by float32 library convolutions over chunks of
    input channels whose partial sums stay exactly representable."""
    Cout, KH, KW, C = w_shape
    x = torch.from_numpy(xs).permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
    w = torch.from_numpy(table.values).view(Cout, KH, KW, C).permute(0, 3, 1, 2)
    step = _even_chunk(C, FLOAT32_EXACT_LIMIT // (x_abs_max * table.abs_max * KH * KW))  # KH*KW*128*128 < 2^24
    acc = None
    for c0 in range(0, C, step):
        part = torch.nn.functional.conv2d(x[:, c0:c0 + step], w[:, c0:c0 + step], stride=stride, dilation=dilation)
        part = part.to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc.permute(0, 2, 3, 1).reshape(-1, Cout).numpy()


@njit(parallel=True, cache=True)
def _im2col_f32(x, samples, act_shift, round_rule, x_hi, offset, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW):
    """cols[(s, oh, ow), g, (kh, kw, c)] with each sample's activation shift applied, minus
    `offset` (padding is code 0, so it becomes -offset like every other code)."""
    _, H, W, C = x.shape
    Cg = C // groups
    Kg = KH * KW * Cg
    shifted = _shift_samples_f32(x, samples, act_shift, round_rule, x_hi, offset, 0, 0)
    cols = np.empty((samples.shape[0] * OH * OW, groups, Kg), np.float32)
    for row in prange(samples.shape[0] * OH):
        s = row // OH
        oh = row % OH
        for ow in range(OW):
            r = (s * OH + oh) * OW + ow
            for i in range(KH):
                ih = oh * sh - ph + i * dh
                for j in range(KW):
                    iw = ow * sw - pw + j * dw
                    base = (i * KW + j) * Cg
                    if ih < 0 or ih >= H or iw < 0 or iw >= W:
                        cols[r, :, base:base + Cg] = -offset
                    else:
                        for g in range(groups):
                            cols[r, g, base:base + Cg] = shifted[s, ih, iw, g * Cg:(g + 1) * Cg]
    return cols


def int_conv2d_blas(
    x, w_shape, w_tables, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
    act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """`int_conv2d_kernel`'s result via im2col and exact float32 GEMMs. `w_shape` is the NHWC
    weight shape (Cout, KH, KW, C/groups); `w_tables[s]` the `weight_table` of its [Cout, KH*KW*C/g]
    view at `weight_shifts[s]`."""
    B, H, W, C = x.shape
    Cout, KH, KW, Cg = w_shape
    OH, OW = output_size(H, KH, stride_h, pad_h, dil_h), output_size(W, KW, stride_w, pad_w, dil_w)
    Kg = KH * KW * Cg
    Cout_g = Cout // groups
    # A 1x1 conv is a GEMM already, and on small outputs im2col costs little: measured on a
    # 2-core EPYC, the library convolution took 0.3-0.6x im2col's time from 8x8 outputs up
    # (batch 64) and up to 1.2x at 4x4 or at one sample.
    direct = groups == 1 and KH * KW > 1 and OH * OW >= LIBRARY_CONV_MIN_MAP and \
        B * OH * OW >= LIBRARY_CONV_MIN_PIXELS and float32_conv_is_exact()
    per_sample = (H + 2 * pad_h) * (W + 2 * pad_w) * C * 4 + OH * OW * Cout * 8 if direct else OH * OW * groups * Kg * 4
    samples_per_tile = max(1, MAX_COLS_BYTES // max(1, per_sample))
    for slot in range(weight_shifts.shape[0]):
        samples = np.flatnonzero(weight_slot == slot)
        table = w_tables[slot]
        for s0 in range(0, samples.size, samples_per_tile):
            tile = samples[s0:s0 + samples_per_tile]
            offset, x_max = _activation_plan(x_hi, int(act_shift[tile].min()))
            pix = np.arange(OH * OW)
            dest = (tile[:, None] * (OH * OW) + pix[None, :]).reshape(-1)
            total = np.repeat(act_shift[tile] + weight_shifts[slot], OH * OW)
            if direct:
                xs = _shift_samples_f32(x, tile, act_shift, round_rule, x_hi, offset, pad_h, pad_w)
                acc = exact_int_conv(xs, table, w_shape, x_max, (stride_h, stride_w), (dil_h, dil_w))
            else:
                cols = _im2col_f32(
                    x, tile, act_shift, round_rule, x_hi, offset, KH, KW,
                    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups, OH, OW,
                )
                if groups == 1:
                    acc = exact_int_gemm(cols[:, 0], table.values, x_max, table.abs_max).numpy()
                else:
                    per_group = np.ascontiguousarray(cols.transpose(1, 0, 2))
                    acc = exact_int_gemm(per_group, table.values.reshape(groups, Cout_g, Kg), x_max, table.abs_max)
                    acc = acc.permute(1, 0, 2).reshape(cols.shape[0], Cout).numpy()
            _epilogue_rows(acc, dest, total, weight_shifts[slot], _correction(table, offset), bias, mode,
                           multiplier, rshift, scale, relu, lo, hi, out)
    return out
