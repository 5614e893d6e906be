"""Integer max, average and adaptive average pooling (docs/numerics.md section 6) of codes."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import reference as ref
from .dispatch import resolve_backend
from .ops_common import NUMPY_OUT, IntPair, pair, require_codes, triton_kernels
from .reference.common import output_size


def _pool_geometry(op, x, kernel_size, stride, padding, dilation, ceil_mode=False):
    x = require_codes(x, "x", op, ndim=4)
    kh, kw = pair(kernel_size, "kernel_size", op, 1)
    sh, sw = pair(stride if stride is not None else (kh, kw), "stride", op, 1)
    ph, pw = pair(padding, "padding", op, 0)
    dh, dw = pair(dilation, "dilation", op, 1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel_size}")
    H, W = x.shape[2], x.shape[3]
    if H + 2 * ph < dh * (kh - 1) + 1 or W + 2 * pw < dw * (kw - 1) + 1:
        raise ValueError(f"{op}: input {H}x{W} is too small for kernel {kernel_size}")
    OH, OW = output_size(H, kh, sh, ph, dh, ceil_mode), output_size(W, kw, sw, pw, dw, ceil_mode)
    if op == "int_max_pool2d":
        for size, k, s, p, d, out, axis in ((H, kh, sh, ph, dh, OH, "rows"), (W, kw, sw, pw, dw, OW, "columns")):
            # Only windows starting in the padding can miss the input; torch gives -inf there,
            # which no code represents.
            for o in range(min(out, -(-p // s) if p else 0)):
                start = o * s - p
                if not any(0 <= start + j * d < size for j in range(k)):
                    raise ValueError(f"{op}: output {axis[:-1]} {o} pools only padding (kernel {k}, stride {s}, "
                                     f"padding {p}, dilation {d} on {size} {axis}); torch would return -inf there, "
                                     "which no integer code represents: use less padding or dilation")
    return x, (kh, kw, sh, sw, ph, pw, dh, dw), (OH, OW)


def _pool(op, x, kernel_size, stride, padding, dilation, backend, ceil_mode=False):
    x, geo, (OH, OW) = _pool_geometry(op, x, kernel_size, stride, padding, dilation, ceil_mode)
    name = resolve_backend(backend, x.device, op)
    if name == "triton":
        return triton_kernels().int_pool2d(x, list(geo) + ([1] if ceil_mode else []), op == "int_max_pool2d")
    B, C = x.shape[0], x.shape[1]
    out = np.empty((B, OH, OW, C), NUMPY_OUT[x.dtype])
    x_nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
    if op == "int_max_pool2d":
        ref.int_max_pool2d_kernel(x_nhwc, *geo, out)
    else:
        ref.int_avg_pool2d_kernel(x_nhwc, *geo[:6], out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def int_max_pool2d(
    x: torch.Tensor,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    *,
    ceil_mode: bool = False,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Max pooling of codes ``[B, C, H, W]`` (torch semantics; padding is ignored; ``ceil_mode``
    as torch's: windows that run past the input's end pool what they cover).

    Returns the input dtype in channels_last format.
    """
    return _pool("int_max_pool2d", x, kernel_size, stride, padding, dilation, backend, ceil_mode)


def int_avg_pool2d(
    x: torch.Tensor,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: IntPair = 0,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Average pooling ``floor((sum + count // 2) / count)`` with count = kernel area.

    Zero padding is counted (torch's ``count_include_pad=True``). Returns the input dtype,
    channels_last.
    """
    return _pool("int_avg_pool2d", x, kernel_size, stride, padding, 1, backend)


def int_adaptive_avg_pool2d(
    x: torch.Tensor,
    output_size: IntPair,
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Adaptive average pooling of codes ``[B, C, H, W]`` to ``output_size`` (torch's windows:
    rows ``[floor(o*H/OH), ceil((o+1)*H/OH))``, columns alike), each the mean rounded half up
    ``floor((sum + count // 2) / count)`` with count the window's size. Output sizes larger than
    the input repeat positions, as torch does. Returns the input dtype, channels_last.
    """
    op = "int_adaptive_avg_pool2d"
    x = require_codes(x, "x", op, ndim=4)
    OH, OW = pair(output_size, "output_size", op, 1)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: input {x.shape[2]}x{x.shape[3]} has no positions to pool")
    name = resolve_backend(backend, x.device, op)
    if name == "triton":
        return triton_kernels().int_adaptive_avg_pool2d(x, [OH, OW])
    out = np.empty((x.shape[0], OH, OW, x.shape[1]), NUMPY_OUT[x.dtype])
    ref.int_adaptive_avg_pool2d_kernel(x.permute(0, 2, 3, 1).contiguous().numpy(), out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
