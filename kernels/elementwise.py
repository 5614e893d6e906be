"""Element-wise integer add and multiply (docs/numerics.md section 5) over flat code tensors, the
lookup tables, and the per-sample activation shift that feeds a pre-shifted GEMM."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import clamp_shift, elementwise_block, shifted_left_operand


@triton.jit
def _round_shift_clamp(v, shift, lo, hi):
    """clamp(round_shift(v, shift), lo, hi) for int64 v; (1 << s) >> 1 is 0 at s = 0."""
    v = (v + ((tl.full((), 1, tl.int64) << shift) >> 1)) >> shift
    return tl.minimum(tl.maximum(v, lo), hi)


# Constants are plain ints; no specialisation on their values (== 1, divisibility), so one
# compiled kernel serves every layer's constants.
_RUNTIME_INTS = ["numel", "k1", "k2", "k3", "k4", "shift", "lo", "hi"]


@triton.jit(do_not_specialize=_RUNTIME_INTS[:4] + _RUNTIME_INTS[5:])
def int_add_kernel(a_ptr, b_ptr, out_ptr, numel, k1, k2, k3, shift, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0).to(tl.int64)
    b = tl.load(b_ptr + offs, mask=mask, other=0).to(tl.int64)
    v = k1.to(tl.int64) * a + k2.to(tl.int64) * b + k3.to(tl.int64)
    tl.store(out_ptr + offs, _round_shift_clamp(v, shift.to(tl.int64), lo, hi).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def int_mul_kernel(a_ptr, b_ptr, out_ptr, numel, k1, k2, k3, k4, shift, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0).to(tl.int64)
    b = tl.load(b_ptr + offs, mask=mask, other=0).to(tl.int64)
    v = k1.to(tl.int64) * a * b + k2.to(tl.int64) * a + k3.to(tl.int64) * b + k4.to(tl.int64)
    tl.store(out_ptr + offs, _round_shift_clamp(v, shift.to(tl.int64), lo, hi).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def int_lut_kernel(x_ptr, table_ptr, out_ptr, numel, offset, BLOCK: tl.constexpr):
    """out = table[x + offset]: a 256-entry lookup per code (offset 128 for int8 codes)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    index = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.int32) + offset
    tl.store(out_ptr + offs, tl.load(table_ptr + index, mask=mask, other=0), mask=mask)


def launch_lut(x: torch.Tensor, table: torch.Tensor, offset: int) -> torch.Tensor:
    """table[x + offset] for contiguous codes x and a 256-entry code table on x's device."""
    if not x.is_contiguous() or table.shape != (256,) or not table.is_contiguous():
        raise ValueError("lut kernel: x must be contiguous and table 256 contiguous entries")
    out = torch.empty(x.shape, dtype=table.dtype, device=x.device)
    numel = x.numel()
    if numel:
        block = elementwise_block()
        int_lut_kernel[(triton.cdiv(numel, block),)](x, table, out, numel, offset, BLOCK=block)
    return out


def launch_elementwise(name: str, a: torch.Tensor, b: torch.Tensor, constants: list[int], shift: int,
                       lo: int, hi: int, out_dtype: torch.dtype) -> torch.Tensor:
    """Flat element-wise op `name` ("int_add" or "int_mul") on contiguous equal-shape code tensors."""
    if a.shape != b.shape or not a.is_contiguous() or not b.is_contiguous():
        raise ValueError(f"{name} kernel: a and b must be contiguous tensors of one shape")
    kernel, arity = (int_add_kernel, 3) if name == "int_add" else (int_mul_kernel, 4)
    if len(constants) != arity:
        raise ValueError(f"{name} kernel takes {arity} constants, got {len(constants)}")
    out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    numel = a.numel()
    if numel:
        block = elementwise_block()
        kernel[(triton.cdiv(numel, block),)](a, b, out, numel, *constants, shift, lo, hi, BLOCK=block)
    return out


@triton.jit
def shift_activations_kernel(x_ptr, act_shift_ptr, out_ptr, numel, SAMPLE_ELEMS, ROUND: tl.constexpr,
                             X_UNSIGNED: tl.constexpr, BLOCK: tl.constexpr):
    """The GEMM's left operand once per call: nested_shift(x, a_shift[sample]) as int8 (minus 128 for
    uint8 codes), sample = flat index // SAMPLE_ELEMS, so the K loop only loads it."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a_shift = clamp_shift(tl.load(act_shift_ptr + offs // SAMPLE_ELEMS, mask=mask, other=0))
    x = tl.load(x_ptr + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, shifted_left_operand(x, a_shift, ROUND, X_UNSIGNED), mask=mask)


def shift_activations(x: torch.Tensor, act_shift: torch.Tensor, round_rule: bool, sample_elems: int) -> torch.Tensor:
    """int8 codes of x (contiguous in its memory order) shifted by each sample's act_shift,
    uint8 codes offset by -128: the left operand of the GEMM and conv kernels."""
    out = torch.empty_like(x, dtype=torch.int8)
    numel = x.numel()
    if numel:
        block = elementwise_block()
        shift_activations_kernel[(triton.cdiv(numel, block),)](
            x, act_shift, out, numel, sample_elems, ROUND=bool(round_rule), X_UNSIGNED=x.dtype == torch.uint8,
            BLOCK=block)
    return out
