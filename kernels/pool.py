"""Integer max and average pooling (docs/numerics.md section 6) on channels-last codes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import elementwise_block, output_size

# Warps of the windowed pool's 1,024-lane block: with Triton's default 4, the average pool of int8
# codes spilled 8 bytes on sm_90 (128 registers per thread; bench/results/aot-launches-2026-12-01.md).
# The adaptive pool keeps 4: with 8 it spills 8 bytes there.
POOL_WARPS = 8


@triton.jit
def _output_lanes(total, C, OH, OW, BLOCK: tl.constexpr):
    """This program's output codes, one per lane of a dense NHWC [B, OH, OW, C] buffer:
    (flat offsets, in-range mask, b, oh, ow, c)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    c = offs % C
    pixel = offs // C
    return offs, offs < total, pixel // (OW * OH), (pixel // OW) % OH, pixel % OW, c


@triton.jit
def _rounded_mean(total_sum, count):
    """floor((sum + count // 2) / count): the mean rounded half up. Triton's // truncates, so
    step down where the numerator is negative and not a multiple."""
    numer = total_sum + count // 2
    quot = numer // count
    return tl.where(quot * count > numer, quot - 1, quot)


@triton.jit
def int_pool2d_kernel(
    x_ptr, out_ptr, total, H, W, C, OH, OW,
    KH, KW, SH, SW, PH, PW, DH, DW,
    stride_xb, stride_xh, stride_xw, stride_xc,
    IS_MAX: tl.constexpr, BLOCK: tl.constexpr,
):
    """One output code per lane; out is a dense NHWC buffer [B, OH, OW, C]."""
    offs, mask, b, oh, ow, c = _output_lanes(total, C, OH, OW, BLOCK)
    base = x_ptr + b * stride_xb + c * stride_xc
    if IS_MAX:
        best = tl.full((BLOCK,), -(1 << 40), tl.int64)
    else:
        total_sum = tl.zeros((BLOCK,), tl.int64)
    for i in range(0, KH):
        ih = oh * SH - PH + i * DH
        for j in range(0, KW):
            iw = ow * SW - PW + j * DW
            inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            v = tl.load(base + ih * stride_xh + iw * stride_xw, mask=inside, other=0).to(tl.int64)
            if IS_MAX:
                best = tl.where(inside, tl.maximum(best, v), best)
            else:
                total_sum += v
    if IS_MAX:
        result = best
    else:
        result = _rounded_mean(total_sum, KH * KW)
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def int_adaptive_avg_pool2d_kernel(
    x_ptr, out_ptr, total, H, W, C, OH, OW, KH_MAX, KW_MAX,
    stride_xb, stride_xh, stride_xw, stride_xc,
    BLOCK: tl.constexpr,
):
    """torch's adaptive windows [floor(o*H/OH), ceil((o+1)*H/OH)); the mean rounded half up."""
    offs, mask, b, oh, ow, c = _output_lanes(total, C, OH, OW, BLOCK)
    h0 = (oh * H) // OH
    h1 = ((oh + 1) * H + OH - 1) // OH
    w0 = (ow * W) // OW
    w1 = ((ow + 1) * W + OW - 1) // OW
    base = x_ptr + b * stride_xb + c * stride_xc
    total_sum = tl.zeros((BLOCK,), tl.int64)
    for i in range(0, KH_MAX):
        ih = h0 + i
        for j in range(0, KW_MAX):
            iw = w0 + j
            inside = mask & (ih < h1) & (iw < w1)
            total_sum += tl.load(base + ih * stride_xh + iw * stride_xw, mask=inside, other=0).to(tl.int64)
    result = _rounded_mean(total_sum, (h1 - h0) * (w1 - w0))
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


def adaptive_window_max(size: int, out: int) -> int:
    """The widest adaptive window along one axis."""
    return max(((o + 1) * size + out - 1) // out - (o * size) // out for o in range(out))


def launch_adaptive_avg_pool2d(x: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """Adaptive average pool of codes x [B, C, H, W] to output_size [OH, OW], channels_last out."""
    if x.dim() != 4 or len(output_size) != 2 or min(output_size) < 1:
        raise ValueError(f"adaptive pool kernel: x must be 4-D and output_size 2 ints >= 1, got {tuple(x.shape)}, "
                         f"{output_size}")
    B, C, H, W = x.shape
    OH, OW = (int(v) for v in output_size)
    out = torch.empty((B, OH, OW, C), dtype=x.dtype, device=x.device)
    total = out.numel()
    if total:
        block = elementwise_block()
        int_adaptive_avg_pool2d_kernel[(triton.cdiv(total, block),)](
            x, out, total, H, W, C, OH, OW, adaptive_window_max(H, OH), adaptive_window_max(W, OW),
            x.stride(0), x.stride(2), x.stride(3), x.stride(1), BLOCK=block,
        )
    return out.permute(0, 3, 1, 2)


def launch_pool2d(x: torch.Tensor, geometry: list[int], is_max: bool) -> torch.Tensor:
    """Pool codes x [B, C, H, W] (any memory format); geometry = [kh, kw, sh, sw, ph, pw, dh, dw]
    and optionally ceil_mode (0/1) as a ninth entry.

    Returns [B, C, OH, OW] in channels_last format.
    """
    if x.dim() != 4 or len(geometry) not in (8, 9):
        raise ValueError(f"pool kernel: x must be 4-D and geometry 8 or 9 ints, got {tuple(x.shape)}, {geometry}")
    kh, kw, sh, sw, ph, pw, dh, dw = (int(v) for v in geometry[:8])
    ceil_mode = len(geometry) == 9 and bool(geometry[8])
    B, C, H, W = x.shape
    OH, OW = output_size(H, kh, sh, ph, dh, ceil_mode), output_size(W, kw, sw, pw, dw, ceil_mode)
    out = torch.empty((B, OH, OW, C), dtype=x.dtype, device=x.device)
    total = out.numel()
    if total:
        block = elementwise_block()
        int_pool2d_kernel[(triton.cdiv(total, block),)](
            x, out, total, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw,
            x.stride(0), x.stride(2), x.stride(3), x.stride(1),
            IS_MAX=is_max, BLOCK=block, num_warps=POOL_WARPS,
        )
    return out.permute(0, 3, 1, 2)
