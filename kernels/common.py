"""Triton building blocks of the integer contract (docs/numerics.md), shared by every kernel.

The Numba twins of these helpers live in `dqt_triton.reference.common`; the tests hold the two
to exact equality.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The contract's constants, defined once on the host side (absolute imports: `python -m
# kernels.aot` imports this package as `kernels` too); WIDTH_TABLE_ROWS and `output_size` are
# here for the launchers.
from dqt_triton.reference.common import (  # noqa: F401
    EPILOGUE_FLOAT,
    EPILOGUE_REQUANT,
    INT32_MAX,
    MAX_SHIFT,
    WIDTH_TABLE_ROWS,
    output_size,
)

# Twins for @triton.jit code: the GPU compiler lets a kernel read a module global only if it is
# a tl.constexpr object (the interpreter does not check).
MAX_SHIFT_C = tl.constexpr(MAX_SHIFT)
EPILOGUE_REQUANT_C = tl.constexpr(EPILOGUE_REQUANT)
EPILOGUE_FLOAT_C = tl.constexpr(EPILOGUE_FLOAT)


def interpreting() -> bool:
    """True when TRITON_INTERPRET is set: kernels run as numpy code on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Lanes per program of the element-wise, pooling and lookup kernels: the GPU's block, and a
# smaller one that keeps interpreted CPU tests quick (the bounds test runs the GPU's).
GPU_BLOCK = 1024
INTERPRETER_BLOCK = 256


def elementwise_block() -> int:
    """BLOCK of the one-lane-per-element kernels on this machine."""
    return INTERPRETER_BLOCK if interpreting() else GPU_BLOCK


# Row positions, in-image offsets and program ids are int32 inside the GEMM and conv kernels
# (int64 everywhere would cost registers in every tile); launchers refuse sizes past INT32_MAX.
# Rows of one GEMM/conv launch: positions run up to M plus one tile per weight-shift bucket.
MAX_ROWS = 2**31 - 2**16


def check_int32_sizes(kernel: str, **sizes: int) -> None:
    """ValueError naming the size that the kernels' int32 arithmetic cannot hold.

    `rows` may be at most MAX_ROWS; any other size (an image's extent, a program count) at most
    INT32_MAX.
    """
    for name, value in sizes.items():
        limit = MAX_ROWS if name == "rows" else INT32_MAX
        if value > limit:
            raise ValueError(f"{kernel} kernel: {name} = {value} exceeds {limit}, the most its int32 "
                             f"indexing holds; split the call (fewer samples per launch)")


@triton.jit
def nested_shift(q, k, ROUND: tl.constexpr, CODE_HI: tl.constexpr):
    """b-bit code from an int32 master code `q` and shift `k` (broadcastable int32).

    floor: q >> k. round: min((q + 2^(k-1)) >> k, CODE_HI >> k); `(1 << k) >> 1` is the
    rounding term without a negative shift at k = 0.
    """
    if ROUND:
        return tl.minimum((q + ((1 << k) >> 1)) >> k, CODE_HI >> k)
    else:
        return q >> k


@triton.jit
def clamp_shift(k):
    """Shift amounts outside [0, 7] are refused by dqt_triton.ops; clamping here keeps a shift
    by >= 32 (undefined on the GPU) out of the kernels even if a caller bypasses the checks."""
    return tl.minimum(tl.maximum(k, 0), MAX_SHIFT_C)


@triton.jit
def grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of program `pid` in grouped ordering: runs of GROUP_M row tiles share each
    weight tile while it is in L2."""
    pids_per_group = GROUP_M * num_pid_n
    first_pid_m = (pid // pids_per_group) * GROUP_M
    group_rows = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % pids_per_group) % group_rows
    pid_n = (pid % pids_per_group) // group_rows
    return pid_m, pid_n


@triton.jit
def rows_of_tile(
    pid_m, num_rows, rows_per_sample,
    sample_order_ptr, bucket_start_ptr, weight_shift_ptr,
    BLOCK_M: tl.constexpr, BUCKETED: tl.constexpr,
):
    """Output rows, their sample, a row mask and the tile's weight shift for M-tile `pid_m`.

    One tile can only use one weight shift, because floor(w / 2^s) does not factor out of a
    dot product. With per-sample weight shifts (BUCKETED) the samples are sorted by shift
    (`sample_order`) and `bucket_start[s]..bucket_start[s+1]` indexes the samples with shift s;
    each bucket gets its own run of tiles, so the grid has at most 7 tiles more than the
    uniform case. Tiles past the last bucket come back with an all-false mask and shift -1.
    """
    offs = tl.arange(0, BLOCK_M)
    if BUCKETED:
        tile = pid_m
        w_shift = pid_m * 0 - 1
        pos_begin = pid_m * 0
        pos_end = pid_m * 0
        for s in tl.static_range(MAX_SHIFT_C + 1):
            start = tl.load(bucket_start_ptr + s) * rows_per_sample
            end = tl.load(bucket_start_ptr + s + 1) * rows_per_sample
            num_tiles = (end - start + BLOCK_M - 1) // BLOCK_M
            hit = (tile >= 0) & (tile < num_tiles)
            w_shift = tl.where(hit, s, w_shift)
            pos_begin = tl.where(hit, start + tile * BLOCK_M, pos_begin)
            pos_end = tl.where(hit, end, pos_end)
            tile = tile - num_tiles
        pos = pos_begin + offs
        row_mask = pos < pos_end
        sample_pos = pos // rows_per_sample
        sample = tl.load(sample_order_ptr + sample_pos, mask=row_mask, other=0)
        rows = sample * rows_per_sample + (pos - sample_pos * rows_per_sample)
    else:
        rows = pid_m * BLOCK_M + offs
        row_mask = rows < num_rows
        sample = rows // rows_per_sample
        w_shift = tl.load(weight_shift_ptr)
    return rows, sample, row_mask, w_shift


@triton.jit
def shifted_left_operand(x, a_shift, ROUND: tl.constexpr, X_UNSIGNED: tl.constexpr):
    """int8 GEMM operand from master activation codes `x` and shifts `a_shift` (broadcastable).

    uint8 codes above 127 do not fit int8, so unsigned codes are offset by -128; the GEMM adds
    128 * (column sums of the shifted weights) back, which is exact. Only `shift_activations`
    calls this: the GEMM kernels take their left operand already shifted, so it reaches the MMA
    as loaded (a wgmma left operand from registers meets a ptxas hazard, triton#9433).
    """
    if X_UNSIGNED:
        return (nested_shift(x.to(tl.int32), a_shift, ROUND, 255) - 128).to(tl.int8)
    else:
        return nested_shift(x.to(tl.int32), a_shift, ROUND, 127).to(tl.int8)


@triton.jit
def mma_step(a, w, w_shift, acc, w_colsum, ROUND: tl.constexpr, X_UNSIGNED: tl.constexpr, PRESHIFTED: tl.constexpr):
    """One K step of the GEMM and conv kernels: acc += a . b, with `a` the pre-shifted int8
    activation tile and b the weight tile `w` as loaded (PRESHIFTED) or nested-shifted by the
    tile's `w_shift` here, whose column sums the uint8 correction then needs. Returns (acc, w_colsum)."""
    if PRESHIFTED:
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)  # both operands straight from memory to the MMA
    else:
        b = nested_shift(w.to(tl.int32), w_shift, ROUND, 127)
        if X_UNSIGNED:
            w_colsum += tl.sum(b, axis=0)
        acc = tl.dot(a, b.to(tl.int8), acc, out_dtype=tl.int32)
    return acc, w_colsum


@triton.jit
def add_column_sums(acc, w_colsum, w_colsum_ptr, w_shift, stride_colsum, cols, col_mask,
                    X_UNSIGNED: tl.constexpr, PRESHIFTED: tl.constexpr):
    """Undo the -128 offset of uint8 tiles: + 128 * (column sums of the shifted weights), summed
    in the loop or read from the pre-shifted table's row `w_shift`."""
    if X_UNSIGNED:
        if PRESHIFTED:
            w_colsum = tl.load(w_colsum_ptr + w_shift * stride_colsum + cols, mask=col_mask, other=0)
        acc += 128 * w_colsum[None, :]
    return acc


@triton.jit
def epilogue_store(
    acc, w_colsum, a_shift, w_shift, rows, row_mask, offs_n, n_mask,
    out_ptr, stride_om, stride_on,
    bias_ptr, multiplier_ptr, rshift_ptr, scale_ptr, w_colsum_ptr,
    stride_bias, stride_multiplier, stride_rshift, stride_scale, stride_colsum,
    lo, hi,
    EPILOGUE: tl.constexpr, RELU: tl.constexpr, X_UNSIGNED: tl.constexpr, PRESHIFTED: tl.constexpr,
):
    """The end of every GEMM and conv tile: the uint8 correction (`add_column_sums`), master
    units, bias, ReLU and one of the three epilogues; stores the [BM, BN] tile.

    v = (acc << (a_shift + w_shift)) + bias in int64; requant = clamp(round_shift(v * M, S), lo,
    hi) with an int64 product; float = float32(v) * scale, one IEEE multiply (nothing for FMA to
    fuse). Each constant is read at `ptr + w_shift * stride_* + offs_n`: the tile's weight shift
    `w_shift` picks the row of an [8, N] width table (row stride N), and stride 0 shares one [N]
    row.
    """
    acc = add_column_sums(acc, w_colsum, w_colsum_ptr, w_shift, stride_colsum, offs_n, n_mask, X_UNSIGNED, PRESHIFTED)
    total_shift = a_shift + w_shift
    bias = tl.load(bias_ptr + w_shift * stride_bias + offs_n, mask=n_mask, other=0).to(tl.int64)
    v = (acc.to(tl.int64) << total_shift[:, None].to(tl.int64)) + bias[None, :]
    if RELU:
        v = tl.maximum(v, 0)
    if EPILOGUE == EPILOGUE_REQUANT_C:
        multiplier = tl.load(multiplier_ptr + w_shift * stride_multiplier + offs_n, mask=n_mask, other=0).to(tl.int64)
        rshift = tl.load(rshift_ptr + w_shift * stride_rshift + offs_n, mask=n_mask, other=0).to(tl.int64)
        product = v * multiplier[None, :]
        rounded = (product + ((1 << rshift[None, :]) >> 1)) >> rshift[None, :]
        result = tl.minimum(tl.maximum(rounded, lo), hi)
    elif EPILOGUE == EPILOGUE_FLOAT_C:
        scale = tl.load(scale_ptr + w_shift * stride_scale + offs_n, mask=n_mask, other=0.0)
        # v fits int32 by the accumulator rule; int32 -> float32 rounds to nearest even.
        result = v.to(tl.int32).to(tl.float32) * scale[None, :]
    else:
        result = v
    out_ptrs = out_ptr + rows[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, result.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & n_mask[None, :])
