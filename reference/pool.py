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
    """floor((window_sum + count // 2) / count) with count = kh * kw (zero padding counted)."""
    B, H, W, C = x.shape
    _, OH, OW, _ = out.shape
    count = np.int64(kh * kw)
    half = count // 2
    for row in prange(B * OH):
        b = row // OH
        oh = row % OH
        for ow in range(OW):
            for c in range(C):
                total = np.int64(0)
                for i in range(kh):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j
                        if iw < 0 or iw >= W:
                            continue
                        total += np.int64(x[b, ih, iw, c])
                out[b, oh, ow, c] = (total + half) // count
    return out


@njit(parallel=True, cache=True)
def int_adaptive_avg_pool2d_kernel(x, out):
    """torch's adaptive windows rows [floor(o*H/OH), ceil((o+1)*H/OH)) (columns alike);
    floor((window_sum + count // 2) / count) with count the window's size."""
    B, H, W, C = x.shape
    _, OH, OW, _ = out.shape
    for row in prange(B * OH):
        b = row // OH
        oh = row % OH
        h0 = (oh * H) // OH
        h1 = ((oh + 1) * H + OH - 1) // OH
        for ow in range(OW):
            w0 = (ow * W) // OW
            w1 = ((ow + 1) * W + OW - 1) // OW
            count = np.int64((h1 - h0) * (w1 - w0))
            for c in range(C):
                total = np.int64(0)
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        total += np.int64(x[b, ih, iw, c])
                out[b, oh, ow, c] = (total + count // 2) // count
    return out
