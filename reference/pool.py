"""Reference integer pooling on NHWC codes."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def int_max_pool2d_kernel(x, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """Max over each window; padded positions are ignored (they act as minus infinity). The
    channel loop is innermost, so one window tap is a vector max over contiguous NHWC codes."""
    B, H, W, C = x.shape
    _, OH, OW, _ = out.shape
    for row in prange(B * OH):
        b = row // OH
        oh = row % OH
        best = np.empty(C, np.int64)
        for ow in range(OW):
            best[:] = -(1 << 40)
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= H:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        best[c] = max(best[c], np.int64(x[b, ih, iw, c]))
            for c in range(C):
                out[b, oh, ow, c] = best[c]
    return out


@njit(parallel=True, cache=True)
def int_avg_pool2d_kernel(x, kh, kw, sh, sw, ph, pw, out):
    """floor((window_sum + count // 2) / count) with count = kh * kw (zero padding counted).
    Channels innermost: each window tap adds a contiguous run of NHWC codes."""
    B, H, W, C = x.shape
    _, OH, OW, _ = out.shape
    count = np.int64(kh * kw)
    half = count // 2
    for row in prange(B * OH):
        b = row // OH
        oh = row % OH
        total = np.empty(C, np.int64)
        for ow in range(OW):
            total[:] = 0
            for i in range(kh):
                ih = oh * sh - ph + i
                if ih < 0 or ih >= H:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j
                    if iw < 0 or iw >= W:
                        continue
                    for c in range(C):
                        total[c] += np.int64(x[b, ih, iw, c])
            for c in range(C):
                out[b, oh, ow, c] = (total[c] + half) // count
    return out


@njit(parallel=True, cache=True)
def int_adaptive_avg_pool2d_kernel(x, out):
    """torch's adaptive windows rows [floor(o*H/OH), ceil((o+1)*H/OH)) (columns alike);
    floor((window_sum + count // 2) / count) with count the window's size. Parallel over
    (sample, output row, input row of its window) would race; a global pool (1x1 output) has
    one output row per sample, so the work is split over samples and channel blocks."""
    B, H, W, C = x.shape
    _, OH, OW, _ = out.shape
    CB = 64  # channels per task: a global pool at batch 1 still uses every thread
    blocks = (C + CB - 1) // CB
    for task in prange(B * OH * blocks):
        b = task // (OH * blocks)
        oh = (task // blocks) % OH
        c0 = (task % blocks) * CB
        c1 = min(C, c0 + CB)
        h0 = (oh * H) // OH
        h1 = ((oh + 1) * H + OH - 1) // OH
        width = c1 - c0
        total = np.empty(width, np.int64)
        for ow in range(OW):
            w0 = (ow * W) // OW
            w1 = ((ow + 1) * W + OW - 1) // OW
            count = np.int64((h1 - h0) * (w1 - w0))
            total[:] = 0
            for ih in range(h0, h1):
                for iw in range(w0, w1):
                    codes = x[b, ih, iw, c0:c1]
                    for c in range(width):
                        total[c] += np.int64(codes[c])
            for c in range(width):
                out[b, oh, ow, c0 + c] = (total[c] + count // 2) // count
    return out
