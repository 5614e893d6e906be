"""Integer matmul and implicit-GEMM conv2d with runtime nested shifts and fused epilogues.

Both kernels compute, for output row m (a matmul row or an output pixel) and channel n,

    acc = sum_k nested_shift(x[m, k], a_shift[sample]) * nested_shift(w[n, k], w_shift[sample])      (int32)

then the epilogue of docs/numerics.md section 3.5. The activation shift is applied before the
kernel (`shift_activations`, once per call), so the left operand reaches the MMA as loaded; the
weight shift is applied in the K loop, or read from a pre-shifted weight table. Shift amounts
are loaded from device tensors at run time, so changing a bit-width never recompiles. Each
epilogue constant is an [N]
tensor shared by every width or an [8, N] width table: a runtime row stride (0 or N) lets the
tile's weight shift pick its row, with no constexpr variant per form (Triton's usual integer
specialisation of the stride value still applies). Launchers check shapes and dtypes; model
logic and input validation live in dqt_triton.ops.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from .common import (
    MAX_SHIFT, MAX_SHIFT_C, WIDTH_TABLE_ROWS, check_int32_sizes, clamp_shift, epilogue_store, grouped_tile,
    mma_step, output_size, rows_of_tile,
)
from .configs import conv_configs, m_bucket, matmul_configs, prune_conv_configs, prune_matmul_configs
from .elementwise import shift_activations

# Both kernels are tuned per shape, epilogue and flag set, and per alignment of the row strides (it
# decides the vector width of every load); tiles wider than the problem are pruned before timing.
FLAG_KEYS = ["EPILOGUE", "BUCKETED", "PRESHIFTED", "ROUND", "RELU", "X_UNSIGNED"]


@triton.autotune(
    configs=matmul_configs(),
    key=["M_BUCKET", "N", "K", "stride_xm", "stride_wn", *FLAG_KEYS],
    prune_configs_by={"early_config_prune": prune_matmul_configs},
)
@triton.jit
def int_matmul_kernel(
    x_ptr, w_ptr, out_ptr,
    act_shift_ptr, weight_shift_ptr, sample_order_ptr, bucket_start_ptr,
    bias_ptr, multiplier_ptr, rshift_ptr, scale_ptr, w_colsum_ptr,
    M, N, K, M_BUCKET,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    stride_bias, stride_multiplier, stride_rshift, stride_scale, stride_w_width, stride_colsum,
    lo, hi,
    BUCKETED: tl.constexpr, ROUND: tl.constexpr, X_UNSIGNED: tl.constexpr,
    EPILOGUE: tl.constexpr, RELU: tl.constexpr, PRESHIFTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """out[M, N] = epilogue(x[M, K] . shift(w[N, K])^T), one [BLOCK_M, BLOCK_N] tile per program; x holds
    the activation codes already shifted (`shift_activations`: int8, uint8 codes offset by -128)."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M) + (MAX_SHIFT_C if BUCKETED else 0)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = grouped_tile(pid, num_pid_m, num_pid_n, GROUP_M)

    rows, sample, row_mask, w_shift = rows_of_tile(
        pid_m, M, 1, sample_order_ptr, bucket_start_ptr, weight_shift_ptr, BLOCK_M, BUCKETED
    )
    k_tiles = tl.where(w_shift >= 0, tl.cdiv(K, BLOCK_K), 0)
    w_shift = clamp_shift(w_shift)
    a_shift = clamp_shift(tl.load(act_shift_ptr + sample, mask=row_mask, other=0))

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # Row and column bases only: rebuilding the K offsets each step keeps two [BM, BK] / [BK, BN]
    # pointer tiles out of the loop-carried registers (they alone spilled every large tile).
    x_rows = x_ptr + rows[:, None].to(tl.int64) * stride_xm
    w_cols = w_ptr + offs_n[None, :].to(tl.int64) * stride_wn
    if PRESHIFTED:  # the tile's width of a [8, N, K] table of pre-shifted weights
        w_cols += w_shift.to(tl.int64) * stride_w_width

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    w_colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for kt in range(0, k_tiles):
        k_mask = offs_k < K - kt * BLOCK_K
        k_offs = kt * BLOCK_K + offs_k  # int32: the launcher keeps (K - 1) * |stride_k| below 2^31
        x = tl.load(x_rows + k_offs[None, :] * stride_xk, mask=row_mask[:, None] & k_mask[None, :], other=0)
        w = tl.load(w_cols + k_offs[:, None] * stride_wk, mask=k_mask[:, None] & n_mask[None, :], other=0)
        # x padding past K meets zero weights: its value does not matter
        acc, w_colsum = mma_step(x, w, w_shift, acc, w_colsum, ROUND, X_UNSIGNED, PRESHIFTED)

    epilogue_store(
        acc, w_colsum, a_shift, w_shift, rows, row_mask, offs_n, n_mask, out_ptr, stride_om, stride_on,
        bias_ptr, multiplier_ptr, rshift_ptr, scale_ptr, w_colsum_ptr,
        stride_bias, stride_multiplier, stride_rshift, stride_scale, stride_colsum, lo, hi,
        EPILOGUE, RELU, X_UNSIGNED, PRESHIFTED,
    )


@triton.autotune(
    configs=conv_configs(),
    key=["M_BUCKET", "C_GROUP", "COUT_GROUP", "KH", "KW", "STRIDE_H", "STRIDE_W", "stride_xw", "stride_wo",
         *FLAG_KEYS],
    prune_configs_by={"early_config_prune": prune_conv_configs},
)
@triton.jit
def int_conv2d_kernel(
    x_ptr, w_ptr, out_ptr,
    act_shift_ptr, weight_shift_ptr, sample_order_ptr, bucket_start_ptr,
    bias_ptr, multiplier_ptr, rshift_ptr, scale_ptr, w_colsum_ptr,
    M, M_BUCKET, H, W, OH, OW, C_GROUP, COUT_GROUP, KH, KW,
    STRIDE_H, STRIDE_W, PAD_H, PAD_W, DIL_H, DIL_W,
    stride_xb, stride_xh, stride_xw, stride_xc,
    stride_wo, stride_wh, stride_ww, stride_wc,
    stride_om, stride_on,
    stride_bias, stride_multiplier, stride_rshift, stride_scale, stride_w_width, stride_colsum,
    lo, hi,
    BUCKETED: tl.constexpr, ROUND: tl.constexpr, X_UNSIGNED: tl.constexpr,
    EPILOGUE: tl.constexpr, RELU: tl.constexpr, PRESHIFTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Implicit GEMM: rows are output pixels (b, oh, ow), columns the output channels of one
    group, and the reduction runs over (kh, kw, channel block) without materialising im2col.
    x holds the shifted activation codes (`shift_activations`) as NHWC (any strides), w is
    [Cout, KH, KW, C/groups]; padding is code 0, shifted. One grid axis: the row tile varies
    fastest, so neighbouring programs share a weight tile, and no axis meets the 65,535 limit
    of a GPU grid's second and third dimensions."""
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M) + (MAX_SHIFT_C if BUCKETED else 0)
    num_pid_n = tl.cdiv(COUT_GROUP, BLOCK_N)
    pid_m = pid % num_pid_m
    pid_n = (pid // num_pid_m) % num_pid_n
    group = pid // (num_pid_m * num_pid_n)
    pixels = OH * OW
    rows, sample, row_mask, w_shift = rows_of_tile(
        pid_m, M, pixels, sample_order_ptr, bucket_start_ptr, weight_shift_ptr, BLOCK_M, BUCKETED
    )
    c_tiles = tl.cdiv(C_GROUP, BLOCK_K)
    k_tiles = tl.where(w_shift >= 0, KH * KW * c_tiles, 0)
    w_shift = clamp_shift(w_shift)
    a_shift = clamp_shift(tl.load(act_shift_ptr + sample, mask=row_mask, other=0))

    pixel = rows - sample * pixels
    ih0 = (pixel // OW) * STRIDE_H - PAD_H
    iw0 = (pixel % OW) * STRIDE_W - PAD_W
    x_row_ptr = x_ptr + sample.to(tl.int64) * stride_xb + (group * C_GROUP) * stride_xc

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < COUT_GROUP
    channel_out = group * COUT_GROUP + offs_n
    offs_k = tl.arange(0, BLOCK_K)
    w_col_ptr = w_ptr + channel_out[None, :].to(tl.int64) * stride_wo
    if PRESHIFTED:
        w_col_ptr += w_shift.to(tl.int64) * stride_w_width

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    w_colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for kt in range(0, k_tiles):
        # One flat loop over (kh, kw, channel block) keeps the reduction software-pipelined.
        tap = kt // c_tiles
        c0 = (kt - tap * c_tiles) * BLOCK_K
        i = tap // KW
        j = tap - i * KW
        ih = ih0 + i * DIL_H
        iw = iw0 + j * DIL_W
        inside = row_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        channels = c0 + offs_k
        c_mask = channels < C_GROUP
        x_ptrs = x_row_ptr[:, None] + (ih * stride_xh + iw * stride_xw)[:, None] + channels[None, :] * stride_xc
        w = tl.load(
            w_col_ptr + (i * stride_wh + j * stride_ww) + channels[:, None] * stride_wc,
            mask=c_mask[:, None] & n_mask[None, :], other=0,
        )
        # Zero padding is code 0, which the shift of uint8 codes turns into -128.
        a = tl.load(x_ptrs, mask=inside[:, None] & c_mask[None, :], other=-128 if X_UNSIGNED else 0)
        acc, w_colsum = mma_step(a, w, w_shift, acc, w_colsum, ROUND, X_UNSIGNED, PRESHIFTED)

    epilogue_store(
        acc, w_colsum, a_shift, w_shift, rows, row_mask, channel_out, n_mask, out_ptr, stride_om, stride_on,
        bias_ptr, multiplier_ptr, rshift_ptr, scale_ptr, w_colsum_ptr,
        stride_bias, stride_multiplier, stride_rshift, stride_scale, stride_colsum, lo, hi,
        EPILOGUE, RELU, X_UNSIGNED, PRESHIFTED,
    )


# ----------------------------------------------------------------------------- launchers


def weight_shift_buckets(weight_shift: torch.Tensor, samples: int):
    """(bucketed, sample_order, bucket_start) for a [1] (per layer) or [samples] shift tensor.

    Sorting and counting stay on the device (no host sync): bucket_start[s] is the number of
    samples whose weight shift is below s.
    """
    device = weight_shift.device
    if weight_shift.numel() == 1:
        dummy = torch.zeros(1, dtype=torch.int32, device=device)
        return False, dummy, dummy
    shifts = weight_shift.to(torch.int64).clamp(0, MAX_SHIFT)
    order = torch.argsort(shifts, stable=True).to(torch.int32)
    levels = torch.arange(MAX_SHIFT + 2, device=device)
    bucket_start = (shifts[None, :] < levels[:, None]).sum(dim=1).to(torch.int32)
    return True, order, bucket_start


def epilogue_table_strides(epilogue_tensors, n: int) -> list[int]:
    """Row strides of the epilogue constants (bias, multiplier, rshift, scale) for the kernels:
    0 for an [n] tensor shared by every width, n for an [8, n] width table (row = weight shift).
    Also the shape check of the fake implementations in `library.py`."""
    strides = []
    for name, t in zip(("bias", "multiplier", "rshift", "scale"), epilogue_tensors):
        if t.shape not in ((n,), (WIDTH_TABLE_ROWS, n)):
            raise ValueError(f"{name} must be an [{n}] tensor or an [{WIDTH_TABLE_ROWS}, {n}] width table, "
                             f"got {tuple(t.shape)}")
        strides.append(t.stride(0) if t.dim() == 2 else 0)
    return strides


def _check_common(x, w, act_shift, weight_shift, samples, epilogue_tensors, n) -> list[int]:
    """Checks the operands; returns the epilogue table row strides (`epilogue_table_strides`)."""
    if x.dtype not in (torch.uint8, torch.int8) or w.dtype != torch.int8:
        raise TypeError(f"integer kernels take uint8/int8 activations and int8 weights, got {x.dtype}, {w.dtype}")
    if act_shift.shape != (samples,) or act_shift.dtype != torch.int32:
        raise ValueError(f"act_shift must be int32 [{samples}], got {act_shift.dtype} {tuple(act_shift.shape)}")
    if weight_shift.dtype != torch.int32 or weight_shift.shape not in ((1,), (samples,)):
        raise ValueError(f"weight_shift must be int32 [1] or [{samples}], got {weight_shift.dtype} {tuple(weight_shift.shape)}")
    strides = epilogue_table_strides(epilogue_tensors, n)
    for name, t in zip(("bias", "multiplier", "rshift", "scale"), epilogue_tensors):
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")
    devices = {t.device for t in (x, w, act_shift, weight_shift, *epilogue_tensors)}
    if len(devices) != 1:
        raise ValueError(f"all kernel operands must be on one device, got {sorted(map(str, devices))}")
    return strides


def _check_shifted_weights(w: torch.Tensor, w_colsum: Optional[torch.Tensor], table_dim: int) -> bool:
    """True for a pre-shifted weight table (w of `table_dim` dims with its column sums)."""
    if w.dim() != table_dim:
        if w_colsum is not None:
            raise ValueError("w_colsum goes with a pre-shifted [8, ...] weight table only")
        return False
    if w.shape[0] != WIDTH_TABLE_ROWS or w_colsum is None:
        raise ValueError(f"a pre-shifted weight table is [{WIDTH_TABLE_ROWS}, ...] with its w_colsum, got "
                         f"{tuple(w.shape)} and {None if w_colsum is None else tuple(w_colsum.shape)}")
    if w_colsum.dtype != torch.int32 or w_colsum.shape != (WIDTH_TABLE_ROWS, w.shape[1]) or w_colsum.device != w.device:
        raise ValueError(f"w_colsum must be int32 [{WIDTH_TABLE_ROWS}, {w.shape[1]}] on {w.device}, got "
                         f"{w_colsum.dtype} {tuple(w_colsum.shape)} on {w_colsum.device}")
    return True


def _shifted_strides(w: torch.Tensor, w_colsum: Optional[torch.Tensor], shifted: bool) -> tuple[int, int]:
    """(stride between widths of the weight table, row stride of the column sums), 0 if plain."""
    return (w.stride(0), w_colsum.stride(0)) if shifted else (0, 0)


def _checked_grid(kernel: str, *dims: int) -> tuple[int]:
    """A one-axis grid of prod(dims) programs (program ids are int32 in the kernels)."""
    programs = math.prod(dims)
    check_int32_sizes(kernel, programs=programs)
    return (programs,)


def launch_int_matmul(
    x: torch.Tensor, w: torch.Tensor, act_shift: torch.Tensor, weight_shift: torch.Tensor,
    bias: torch.Tensor, multiplier: torch.Tensor, rshift: torch.Tensor, scale: torch.Tensor,
    round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int, out_dtype: torch.dtype,
    w_colsum: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """out [M, N] = epilogue(acc) for x [M, K] codes and w [N, K] int8 (see the module docstring).

    act_shift is int32 [M]; weight_shift is int32 [1] (per layer) or [M] (per sample). bias
    (int32), multiplier (int32), rshift (int32) and scale (float32) are each [N], shared by
    every width, or an [8, N] width table whose row k serves the rows with weight shift k.

    x is shifted once per call (`shift_activations`), so the K loop feeds it to the MMA as
    loaded. w is shifted in the K loop, or may be an [8, N, K] table of weights already shifted
    (`numerics.shifted_weight_table`), with ``w_colsum`` its int32 [8, N] sums over K
    (PRESHIFTED): each tile then picks its width's slice of the table and shifts nothing.
    """
    shifted = _check_shifted_weights(w, w_colsum, 3)
    if x.dim() != 2 or w.dim() != 2 + shifted or x.shape[1] != w.shape[-1]:
        raise ValueError(f"int_matmul kernel: x must be [M, K] and w [N, K] (or [8, N, K] shifted), got "
                         f"{tuple(x.shape)}, {tuple(w.shape)}")
    M, K = x.shape
    table_strides = _check_common(x, w, act_shift, weight_shift, M, (bias, multiplier, rshift, scale), w.shape[-2])
    check_int32_sizes("int_matmul", rows=M)
    out = torch.empty((M, w.shape[-2]), dtype=out_dtype, device=x.device)
    if M == 0:
        return out
    x_shifted = shift_activations(x.contiguous(), act_shift, round_rule, K)
    matmul_on_shifted(x_shifted, x.dtype == torch.uint8, w, act_shift, weight_shift, bias, multiplier, rshift,
                      scale, table_strides, round_rule, epilogue, relu, lo, hi, out, w_colsum)
    return out


def matmul_on_shifted(
    x_shifted: torch.Tensor, x_unsigned: bool, w: torch.Tensor, act_shift: torch.Tensor, weight_shift: torch.Tensor,
    bias: torch.Tensor, multiplier: torch.Tensor, rshift: torch.Tensor, scale: torch.Tensor, table_strides: list[int],
    round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int, out: torch.Tensor,
    w_colsum: Optional[torch.Tensor] = None,
) -> None:
    """The kernel launch of `launch_int_matmul` into `out`, on activations already shifted
    (`shift_activations` of codes whose dtype `x_unsigned` tells), read in place with any strides."""
    M, K = x_shifted.shape
    N = w.shape[-2]
    shifted = w_colsum is not None
    # The kernel steps along K in int32; a K-contiguous copy keeps exotic strides in range.
    if (K - 1) * abs(w.stride(-1)) >= 2**31:
        w = w.contiguous()
    if (K - 1) * abs(x_shifted.stride(1)) >= 2**31:
        x_shifted = x_shifted.contiguous()
    width_strides = _shifted_strides(w, w_colsum, shifted)
    bucketed, order, bucket_start = weight_shift_buckets(weight_shift, M)
    extra = MAX_SHIFT if bucketed else 0

    def grid(meta):
        return _checked_grid("int_matmul", triton.cdiv(M, meta["BLOCK_M"]) + extra, triton.cdiv(N, meta["BLOCK_N"]))

    int_matmul_kernel[grid](
        x_shifted, w, out, act_shift, weight_shift, order, bucket_start,
        bias, multiplier, rshift, scale, w_colsum if shifted else bias,
        M, N, K, m_bucket(M),
        x_shifted.stride(0), x_shifted.stride(1), w.stride(-2), w.stride(-1), out.stride(0), out.stride(1),
        *table_strides, *width_strides,
        lo, hi,
        BUCKETED=bucketed, ROUND=bool(round_rule), X_UNSIGNED=bool(x_unsigned),
        EPILOGUE=int(epilogue), RELU=bool(relu), PRESHIFTED=shifted, GROUP_M=8,
    )


def launch_int_conv2d(
    x: torch.Tensor, w: torch.Tensor, geometry: list[int], act_shift: torch.Tensor, weight_shift: torch.Tensor,
    bias: torch.Tensor, multiplier: torch.Tensor, rshift: torch.Tensor, scale: torch.Tensor,
    round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int, out_dtype: torch.dtype,
    w_colsum: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """out [B, Cout, OH, OW] (channels_last) for x [B, C, H, W] codes and w [Cout, C/g, KH, KW].

    geometry = [stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups]. x is shifted once per
    call into a channels_last int8 copy (`shift_activations`), which gives the coalesced channel
    loads. The epilogue constants are [Cout] or [8, Cout] width tables, as in
    `launch_int_matmul`. w may be an [8, Cout, C/g, KH, KW] table of pre-shifted weights with
    ``w_colsum`` [8, Cout], as there.
    """
    shifted = _check_shifted_weights(w, w_colsum, 5)
    w_plain = w[0] if shifted else w  # one width's view: the geometry checks read it like plain weights
    if x.dim() != 4 or w_plain.dim() != 4 or len(geometry) != 7:
        raise ValueError(f"int_conv2d kernel: x and w must be 4-D and geometry 7 ints, got {tuple(x.shape)}, "
                         f"{tuple(w_plain.shape)}, {geometry}")
    sh, sw, ph, pw, dh, dw, groups = (int(v) for v in geometry)
    B, C, H, W = x.shape
    Cout, Cg, KH, KW = w_plain.shape
    if groups < 1 or C != Cg * groups or Cout % groups:
        raise ValueError(f"int_conv2d kernel: channels {C} -> {Cout} do not split into {groups} groups of {Cg}")
    OH, OW = output_size(H, KH, sh, ph, dh), output_size(W, KW, sw, pw, dw)
    if OH < 1 or OW < 1:
        raise ValueError(f"int_conv2d kernel: empty output {OH}x{OW}")
    table_strides = _check_common(x, w, act_shift, weight_shift, B, (bias, multiplier, rshift, scale), Cout)
    check_int32_sizes("int_conv2d", rows=B * OH * OW, image=C * H * W)
    out = torch.empty((B, OH, OW, Cout), dtype=out_dtype, device=x.device)
    if B > 0:
        x_shifted = shift_activations(x.contiguous(memory_format=torch.channels_last), act_shift, round_rule, C * H * W)
        conv2d_on_shifted(x_shifted, x.dtype == torch.uint8, w, geometry, act_shift, weight_shift, bias, multiplier,
                          rshift, scale, table_strides, round_rule, epilogue, relu, lo, hi, out, w_colsum)
    return out.permute(0, 3, 1, 2)


def conv2d_on_shifted(
    x_shifted: torch.Tensor, x_unsigned: bool, w: torch.Tensor, geometry: list[int], act_shift: torch.Tensor,
    weight_shift: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor, rshift: torch.Tensor,
    scale: torch.Tensor, table_strides: list[int], round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int,
    out: torch.Tensor, w_colsum: Optional[torch.Tensor] = None,
) -> None:
    """The kernel launch of `launch_int_conv2d` into `out` [B, OH, OW, Cout] (dense), on
    activations already shifted, read in place through their strides (any memory format)."""
    shifted = w_colsum is not None
    w_table = w
    w = w[0] if shifted else w
    sh, sw, ph, pw, dh, dw, groups = (int(v) for v in geometry)
    B, C, H, W = x_shifted.shape
    Cout, Cg, KH, KW = w.shape
    _, OH, OW, _ = out.shape
    # Offsets inside one image and one filter are int32 in the kernel; samples and output
    # channels step in int64.
    check_int32_sizes("int_conv2d", image=sum((n - 1) * abs(st) for n, st in zip(x_shifted.shape[1:],
                                                                                 x_shifted.stride()[1:])),
                      filter=sum((n - 1) * abs(st) for n, st in zip(w.shape[1:], w.stride()[1:])))
    width_strides = _shifted_strides(w_table, w_colsum, shifted)
    out_rows = out.view(B * OH * OW, Cout)
    bucketed, order, bucket_start = weight_shift_buckets(weight_shift, B)
    M = B * OH * OW
    extra = MAX_SHIFT if bucketed else 0
    cout_g = Cout // groups

    def grid(meta):
        return _checked_grid("int_conv2d", triton.cdiv(M, meta["BLOCK_M"]) + extra,
                             triton.cdiv(cout_g, meta["BLOCK_N"]), groups)

    # The whole table goes in (its width slices are `stride_w_width` apart), not the view of width 0.
    int_conv2d_kernel[grid](
        x_shifted, w_table, out_rows, act_shift, weight_shift, order, bucket_start,
        bias, multiplier, rshift, scale, w_colsum if shifted else bias,
        M, m_bucket(M), H, W, OH, OW, Cg, cout_g, KH, KW,
        sh, sw, ph, pw, dh, dw,
        x_shifted.stride(0), x_shifted.stride(2), x_shifted.stride(3), x_shifted.stride(1),
        w.stride(0), w.stride(2), w.stride(3), w.stride(1),
        out_rows.stride(0), out_rows.stride(1),
        *table_strides, *width_strides,
        lo, hi,
        BUCKETED=bucketed, ROUND=bool(round_rule), X_UNSIGNED=bool(x_unsigned),
        EPILOGUE=int(epilogue), RELU=bool(relu), PRESHIFTED=shifted,
    )
