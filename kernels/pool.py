"""Integer max and average pooling (docs/numerics.md section 6) on channels-last codes."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import interpreting


@triton.jit
def int_pool2d_kernel(
    x_ptr, out_ptr, total, H, W, C, OH, OW,
    KH, KW, SH, SW, PH, PW, DH, DW,
    stride_xb, stride_xh, stride_xw, stride_xc,
    IS_MAX: tl.constexpr, BLOCK: tl.constexpr,
):
    """One output code per lane; out is a dense NHWC buffer [B, OH, OW, C]."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    c = offs % C
    pixel = offs // C
    ow = pixel % OW
    oh = (pixel // OW) % OH
    b = pixel // (OW * OH)
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
        count = KH * KW
        # floor((s + c//2) / c); Triton's // truncates, so step down for negative numerators.
        numer = total_sum + count // 2
        quot = numer // count
        result = tl.where(quot * count > numer, quot - 1, quot)
    tl.store(out_ptr + offs, result.to(out_ptr.dtype.element_ty), mask=mask)


def launch_pool2d(x: torch.Tensor, geometry: list[int], is_max: bool) -> torch.Tensor:
    """Pool codes x [B, C, H, W] (any memory format); geometry = [kh, kw, sh, sw, ph, pw, dh, dw].

    Returns [B, C, OH, OW] in channels_last format.
    """
    if x.dim() != 4 or len(geometry) != 8:
        raise ValueError(f"pool kernel: x must be 4-D and geometry 8 ints, got {tuple(x.shape)}, {geometry}")
    kh, kw, sh, sw, ph, pw, dh, dw = (int(v) for v in geometry)
    B, C, H, W = x.shape
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = torch.empty((B, OH, OW, C), dtype=x.dtype, device=x.device)
    total = out.numel()
    if total:
        block = 256 if interpreting() else 1024
        int_pool2d_kernel[(triton.cdiv(total, block),)](
            x, out, total, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw,
            x.stride(0), x.stride(2), x.stride(3), x.stride(1),
            IS_MAX=is_max, BLOCK=block,
        )
    return out.permute(0, 3, 1, 2)
