"""`torch.library` registration of the Triton kernels as `torch.ops.dqt_triton.*`.

Each op has a fake (Meta) implementation that only computes the output's shape, dtype and
layout (and checks the epilogue tables' shapes like the real op), so `torch.compile` can trace
models that call them without running a kernel.
"""

from __future__ import annotations

from typing import Optional

import torch

from .common import output_size
from .elementwise import launch_elementwise, launch_lut
from .gemm import epilogue_table_strides, launch_int_conv2d, launch_int_matmul
from .pool import launch_adaptive_avg_pool2d, launch_pool2d
from .transformer import launch_int_bmm, launch_int_embedding, launch_int_layernorm, launch_int_softmax

Tensor = torch.Tensor


@torch.library.custom_op("dqt_triton::int_matmul", mutates_args=())
def int_matmul(
    x: Tensor, w: Tensor, act_shift: Tensor, weight_shift: Tensor,
    bias: Tensor, multiplier: Tensor, rshift: Tensor, scale: Tensor,
    round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int, out_dtype: torch.dtype,
    w_colsum: Optional[Tensor] = None,
) -> Tensor:
    """Integer matmul kernel; arguments as in `gemm.launch_int_matmul` (bias, multiplier, rshift
    and scale are each [N] or an [8, N] width table indexed by the row's weight shift; w is
    [N, K], or an [8, N, K] pre-shifted table with its w_colsum)."""
    return launch_int_matmul(x, w, act_shift, weight_shift, bias, multiplier, rshift, scale,
                             round_rule, epilogue, relu, lo, hi, out_dtype, w_colsum)


@int_matmul.register_fake
def _(x, w, act_shift, weight_shift, bias, multiplier, rshift, scale, round_rule, epilogue, relu, lo, hi, out_dtype,
      w_colsum=None):
    epilogue_table_strides((bias, multiplier, rshift, scale), w.shape[-2])
    return x.new_empty((x.shape[0], w.shape[-2]), dtype=out_dtype)


@torch.library.custom_op("dqt_triton::int_conv2d", mutates_args=())
def int_conv2d(
    x: Tensor, w: Tensor, geometry: list[int], act_shift: Tensor, weight_shift: Tensor,
    bias: Tensor, multiplier: Tensor, rshift: Tensor, scale: Tensor,
    round_rule: bool, epilogue: int, relu: bool, lo: int, hi: int, out_dtype: torch.dtype,
    w_colsum: Optional[Tensor] = None,
) -> Tensor:
    """Implicit-GEMM conv2d kernel; arguments as in `gemm.launch_int_conv2d` (epilogue constants
    [Cout] or [8, Cout] width tables; w plain or an [8, ...] pre-shifted table with w_colsum)."""
    return launch_int_conv2d(x, w, geometry, act_shift, weight_shift, bias, multiplier, rshift, scale,
                             round_rule, epilogue, relu, lo, hi, out_dtype, w_colsum)


@int_conv2d.register_fake
def _(x, w, geometry, act_shift, weight_shift, bias, multiplier, rshift, scale, round_rule, epilogue, relu, lo, hi,
      out_dtype, w_colsum=None):
    if w.dim() == 5:
        w = w[0]
    epilogue_table_strides((bias, multiplier, rshift, scale), w.shape[0])
    sh, sw, ph, pw, dh, dw = geometry[:6]
    OH, OW = output_size(x.shape[2], w.shape[2], sh, ph, dh), output_size(x.shape[3], w.shape[3], sw, pw, dw)
    return torch.empty((x.shape[0], w.shape[0], OH, OW), dtype=out_dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("dqt_triton::int_elementwise", mutates_args=())
def int_elementwise(
    name: str, a: Tensor, b: Tensor, constants: list[int], shift: int, lo: int, hi: int, out_dtype: torch.dtype
) -> Tensor:
    """Flat `int_add` / `int_mul` kernel on contiguous code tensors of one shape."""
    return launch_elementwise(name, a, b, constants, shift, lo, hi, out_dtype)


@int_elementwise.register_fake
def _(name, a, b, constants, shift, lo, hi, out_dtype):
    return a.new_empty(a.shape, dtype=out_dtype)


@torch.library.custom_op("dqt_triton::int_lut", mutates_args=())
def int_lut(x: Tensor, table: Tensor, offset: int) -> Tensor:
    """Lookup-table kernel: table[x + offset] on contiguous codes."""
    return launch_lut(x, table, offset)


@int_lut.register_fake
def _(x, table, offset):
    return x.new_empty(x.shape, dtype=table.dtype)


@torch.library.custom_op("dqt_triton::int_pool2d", mutates_args=())
def int_pool2d(x: Tensor, geometry: list[int], is_max: bool) -> Tensor:
    """Max or average pooling kernel; geometry = [kh, kw, sh, sw, ph, pw, dh, dw(, ceil_mode)]."""
    return launch_pool2d(x, geometry, is_max)


@int_pool2d.register_fake
def _(x, geometry, is_max):
    kh, kw, sh, sw, ph, pw, dh, dw = geometry[:8]
    ceil_mode = len(geometry) == 9 and bool(geometry[8])
    OH, OW = output_size(x.shape[2], kh, sh, ph, dh, ceil_mode), output_size(x.shape[3], kw, sw, pw, dw, ceil_mode)
    return torch.empty((x.shape[0], x.shape[1], OH, OW), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("dqt_triton::int_adaptive_avg_pool2d", mutates_args=())
def int_adaptive_avg_pool2d(x: Tensor, output_size: list[int]) -> Tensor:
    """Adaptive average pooling kernel to output_size [OH, OW]."""
    return launch_adaptive_avg_pool2d(x, output_size)


@int_adaptive_avg_pool2d.register_fake
def _(x, output_size):
    return torch.empty((x.shape[0], x.shape[1], *output_size), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


@torch.library.custom_op("dqt_triton::int_bmm", mutates_args=())
def int_bmm(
    a: Tensor, b: Tensor, a_shift: Tensor, b_shift: Tensor, b_on_n: bool, round_rule: bool, mode: int,
    multiplier: int, rshift: int, lo: int, hi: int, out_dtype: torch.dtype,
) -> Tensor:
    """Product of two code tensors a [G, M, K] . b [G, K, N] with per-token shifts; arguments as
    in `transformer.launch_int_bmm`."""
    return launch_int_bmm(a, b, a_shift, b_shift, b_on_n, round_rule, mode, multiplier, rshift, lo, hi, out_dtype)


@int_bmm.register_fake
def _(a, b, a_shift, b_shift, b_on_n, round_rule, mode, multiplier, rshift, lo, hi, out_dtype):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]), dtype=out_dtype)


@torch.library.custom_op("dqt_triton::int_softmax", mutates_args=())
def int_softmax(x: Tensor, table: Tensor, causal: bool) -> Tensor:
    """Softmax over the last axis of codes x [G, M, N] with the exp table [256]: uint8 codes."""
    return launch_int_softmax(x, table, causal)


@int_softmax.register_fake
def _(x, table, causal):
    return x.new_empty(x.shape, dtype=torch.uint8)


@torch.library.custom_op("dqt_triton::int_layernorm", mutates_args=())
def int_layernorm(
    x: Tensor, mult: Tensor, offset: Tensor, shift: int, eps_units: int, lo: int, hi: int, out_dtype: torch.dtype
) -> Tensor:
    """LayerNorm over the last axis of codes x [R, C]; arguments as in `transformer.launch_int_layernorm`."""
    return launch_int_layernorm(x, mult, offset, shift, eps_units, lo, hi, out_dtype)


@int_layernorm.register_fake
def _(x, mult, offset, shift, eps_units, lo, hi, out_dtype):
    return x.new_empty(x.shape, dtype=out_dtype)


@torch.library.custom_op("dqt_triton::int_embedding", mutates_args=())
def int_embedding(ids: Tensor, table: Tensor) -> Tensor:
    """table[ids]: int8 rows of table [V, D] for 1-D token ids."""
    return launch_int_embedding(ids, table)


@int_embedding.register_fake
def _(ids, table):
    return table.new_empty((ids.shape[0], table.shape[1]))
