"""Element-wise integer add and multiply (docs/numerics.md section 5) and code lookup tables."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from . import reference as ref
from .dispatch import resolve_backend
from .numerics import INT32_MAX, MAX_OFFSET_ABS, MAX_REQUANT_SHIFT
from .ops_common import NUMPY_OUT, check_relu, code_output, is_int, require_codes, same_device, triton_kernels


def _elementwise_operands(op: str, a: object, b: object) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    a = require_codes(a, "a", op)
    b = require_codes(b, "b", op)
    if a.shape != b.shape:
        raise ValueError(f"{op}: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b, same_device(op, a=a, b=b)


def _check_constants(op: str, shift: int, **constants: int) -> None:
    for name, value in constants.items():
        if not is_int(value):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
        # The additive offset (k3 of add, k4 of multiply) may reach 2^47; coefficients are int32.
        offset = "k3" if op == "int_add" else "k4"
        limit = MAX_OFFSET_ABS if name == offset else INT32_MAX
        if abs(int(value)) > limit:
            raise ValueError(f"{op}: |{name}| = {abs(int(value))} exceeds {limit}")
    if not is_int(shift) or not 0 <= shift <= MAX_REQUANT_SHIFT:
        raise ValueError(f"{op}: shift must be an int in [0, {MAX_REQUANT_SHIFT}], got {shift!r}")



def _flatpair(a: torch.Tensor, b: torch.Tensor):
    """Flat dense tensors in a's layout (channels_last kept), plus a function that rebuilds."""
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        a_p, b_p = a.permute(0, 2, 3, 1).contiguous(), b.permute(0, 2, 3, 1).contiguous()
        return a_p.reshape(-1), b_p.reshape(-1), lambda o: o.view(a_p.shape).permute(0, 3, 1, 2)
    return a.contiguous().reshape(-1), b.contiguous().reshape(-1), lambda o: o.view(a.shape)


def _elementwise(op, a, b, kernel, constants, shift, relu, out_dtype, backend):
    a, b, device = _elementwise_operands(op, a, b)
    _check_constants(op, shift, **constants)
    check_relu(op, relu)
    dtype, lo, hi = code_output(op, out_dtype, relu)
    name = resolve_backend(backend, device, op)
    fa, fb, rebuild = _flatpair(a, b)
    values = [int(v) for v in constants.values()]
    if name == "triton":
        return rebuild(triton_kernels().int_elementwise(op, fa, fb, values, int(shift), lo, hi, dtype))
    out = np.empty(fa.shape[0], NUMPY_OUT[dtype])
    kernel(fa.numpy(), fb.numpy(), *values, int(shift), lo, hi, out)
    return rebuild(torch.from_numpy(out))


def int_add(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    k1: int,
    k2: int,
    k3: int = 0,
    shift: int,
    relu: bool = False,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Integer add ``clamp(round_shift(k1*a + k2*b + k3, shift))`` of two code tensors.

    Constants come from :func:`dqt_triton.numerics.add_constants`. ``relu`` clamps at zero;
    ``out_dtype`` is uint8 (default with ``relu``) or int8. The result keeps a's layout.
    """
    return _elementwise("int_add", a, b, ref.int_add_kernel, {"k1": k1, "k2": k2, "k3": k3},
                        shift, relu, out_dtype, backend)


def int_mul(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    k1: int,
    k2: int = 0,
    k3: int = 0,
    k4: int = 0,
    shift: int,
    relu: bool = False,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Integer multiply ``clamp(round_shift(k1*a*b + k2*a + k3*b + k4, shift))``.

    Constants come from :func:`dqt_triton.numerics.mul_constants`; see :func:`int_add`.
    """
    return _elementwise("int_mul", a, b, ref.int_mul_kernel, {"k1": k1, "k2": k2, "k3": k3, "k4": k4},
                        shift, relu, out_dtype, backend)


def int_lut(x: torch.Tensor, table: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Look each code up in a 256-entry table: ``table[x + 128]`` for int8 codes, ``table[x]``
    for uint8 (docs/numerics.md section 5: SiLU, Sigmoid, GELU... on codes, exact by
    construction). `table` is uint8 or int8 ``[256]``; the output has its dtype and x's shape."""
    op = "int_lut"
    x = require_codes(x, "x", op)
    table = require_codes(table, "table", op)
    if table.shape != (256,):
        raise ValueError(f"{op}: table must have 256 entries (one per 8-bit code), got shape {tuple(table.shape)}")
    device = same_device(op, x=x, table=table)
    offset = 128 if x.dtype == torch.int8 else 0
    name = resolve_backend(backend, device, op)
    flat = x.contiguous().reshape(-1)
    if name == "triton":
        return triton_kernels().int_lut(flat, table.contiguous(), offset).view(x.shape)
    out = np.empty(flat.shape[0], NUMPY_OUT[table.dtype])
    ref.int_lut_kernel(flat.numpy(), table.contiguous().numpy(), offset, out)
    return torch.from_numpy(out).view(x.shape)
