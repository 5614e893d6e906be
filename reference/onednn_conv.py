"""Direct int8 convolutions through oneDNN's quantized convolution, returning exact accumulators.

torch's x86 quantization backend exposes oneDNN's int8 convolution (``onednn::qconv2d_pointwise``,
uint8 activations x int8 weights -> int32 accumulators, VNNI/AMX). Asked for a float32 output
with every scale 1.0 and no requantization, it returns ``float32(acc)``: exact wherever
``|acc| < 2^24`` and rounded above. Since rounding to float32 is monotone, an output with
``|y| < 2^24`` came from an accumulator below 2^24 and is that accumulator exactly; the caller
checks every output (or knows the bound holds for the layer) and computes the rare others
again on an exact route. Signed int8 activations go in as ``code + 128`` with zero point 128,
which oneDNN subtracts (padding included) in its int32 accumulator.

No im2col and no shift pass at shift 0: this is the CPU path's convolution where the CPU
multiplies int8 natively. `conv_probe` checks, once, that the library really gives the exact
integers here (oneDNN without VNNI may saturate int16 partial products).
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import numpy as np
import torch

log = logging.getLogger(__name__)

FLOAT32_EXACT_LIMIT = 1 << 24
SIGNED_ZERO_POINT = 128  # int8 codes c enter as c + 128 (uint8) with this zero point
PACKED_SHAPES = 4  # packed copies kept per weight table (one sample or more, two input sizes)


def available() -> bool:
    """True when this torch build has oneDNN's int8 convolution."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qconv2d_pointwise")


class PackedConv:
    """One layer's shifted int8 weights packed for oneDNN, with the geometry they were packed for."""

    def __init__(self, w: torch.Tensor, stride, padding, dilation, groups: int, zero_point: int, x_shape=None):
        cout = w.shape[0]
        self.scales = torch.ones(cout, dtype=torch.float64)
        self.zero_points = torch.zeros(cout, dtype=torch.int64)
        self.geometry = ([int(s) for s in stride], [int(p) for p in padding], [int(d) for d in dilation], int(groups))
        self.zero_point = int(zero_point)
        # Packed for one input shape: oneDNN picks its weight layout by shape, and weights packed
        # for another (or for none) are reordered at every call (measured: 6 ms for a 1x1
        # 160 -> 960 convolution at 7x7 that runs in 0.05 ms).
        self.weight = torch.ops.onednn.qconv_prepack(w, self.scales, 1.0, self.zero_point, *self.geometry,
                                                     None if x_shape is None else list(x_shape))
        self.nbytes = w.numel()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """float32 accumulators [B, OH, OW, Cout] (NHWC memory) of uint8 x [B, C, H, W]."""
        y = torch.ops.onednn.qconv2d_pointwise(
            x, 1.0, self.zero_point, self.weight, self.scales, self.zero_points, None, *self.geometry,
            1.0, 0, torch.float32, "none", [], "")
        return y.permute(0, 2, 3, 1)


def packed(cache: dict, values: np.ndarray, w_shape, stride, padding, dilation, groups: int,
           zero_point: int, x_shape) -> PackedConv:
    """The `PackedConv` of weight codes `values` [Cout, KH*KW*C/g] (NHWC order, `w_shape` =
    (Cout, KH, KW, C/g)) for inputs of `x_shape` [B, C, H, W], kept in `cache` (a weight
    table's) per geometry, zero point and input class, the last `PACKED_SHAPES` classes.

    The class is (one sample or more, C, H, W): oneDNN chose one weight layout for every batch
    from 2 to 32 on the shapes we measured (1x1, 3x3, depthwise, the 7x7 stem), and another for
    one sample on some 1x1 convolutions; packing per exact batch would repack at every call in
    dynamic mode, where a width's group of samples changes size from batch to batch."""
    key = (tuple(stride), tuple(padding), tuple(dilation), int(groups), int(zero_point), x_shape[0] == 1,
           tuple(x_shape[1:]))
    conv = cache.pop(key, None)
    if conv is None:
        w = torch.from_numpy(values).view(*w_shape).permute(0, 3, 1, 2).contiguous()
        conv = PackedConv(w, stride, padding, dilation, groups, zero_point, x_shape)
        for old in list(cache)[:max(0, len(cache) - PACKED_SHAPES + 1)]:
            cache.pop(old, None)  # oldest first; another thread may have dropped it already
    cache[key] = conv  # most recent last
    return conv


def supported(stride_h: int, stride_w: int, dil_h: int, dil_w: int) -> bool:
    """True for the geometries this path hands to oneDNN: equal strides and no dilation.

    Measured with torch 2.13 on an AMX Xeon (random convolutions against float64 torch): strides
    (1, 2) gave wrong accumulators (6 of about 330 cases), and dilation 2 crashed the process
    (segmentation fault, e.g. a 7x1 kernel on a 16x1 input with padding 1). Those convolutions
    run on im2col and the int8 GEMM instead."""
    return stride_h == stride_w and dil_h == dil_w == 1


def within_exact_limit(k: int, x_abs_max: int, w_abs_max: int) -> bool:
    """True when no accumulator of a layer with reduction length `k` can reach 2^24."""
    return k * x_abs_max * w_abs_max < FLOAT32_EXACT_LIMIT


@functools.lru_cache(maxsize=None)
def conv_probe() -> Optional[str]:
    """None when the library convolution gives the exact accumulators on shapes that exercise its
    edge cases (extreme codes that saturate int16 partial sums, padding with the signed zero
    point, strides, depthwise and grouped), else a description of the first wrong one."""
    if not available():
        return "no oneDNN int8 convolution in this torch build"
    gen = torch.Generator().manual_seed(0)
    cases = (  # (batch, C, H, Cout, kernel, stride, padding, groups, signed)
        (2, 16, 7, 8, 3, 1, 1, 1, False), (1, 3, 9, 5, 7, 2, 3, 1, False), (3, 24, 6, 24, 3, 2, 1, 24, True),
        (2, 8, 5, 12, 3, 1, 1, 4, True), (1, 64, 4, 16, 1, 1, 0, 1, False), (2, 32, 6, 16, 3, 1, 1, 1, True),
    )
    for b, c, h, cout, k, s, p, g, signed in cases:
        lo, hi = (-128, 128) if signed else (0, 256)
        x = torch.randint(lo, hi, (b, h, h, c), generator=gen)
        w = torch.randint(-128, 128, (cout, k, k, c // g), generator=gen, dtype=torch.int8)
        x[0], w[0] = hi - 1, -128  # 255 * -128 twice overflows an int16 pair sum
        zp = SIGNED_ZERO_POINT if signed else 0
        codes = (x + zp).to(torch.uint8).permute(0, 3, 1, 2)
        conv = PackedConv(w.permute(0, 3, 1, 2).contiguous(), (s, s), (p, p), (1, 1), g, zp, codes.shape)
        got = conv(codes).permute(0, 3, 1, 2).double()
        want = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2).double(), w.permute(0, 3, 1, 2).double(),
                                          stride=s, padding=p, groups=g)
        if not torch.equal(got, want):
            return f"conv {c}->{cout}, {k}x{k}, stride {s}, groups {g}, {'int8' if signed else 'uint8'} codes"
    return None
