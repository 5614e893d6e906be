"""Integer ops of transformers (docs/numerics.md section 10): the product of two activations
(`int_bmm`), softmax (`int_softmax`), LayerNorm (`int_layernorm`) and embedding lookups
(`int_embedding`).

Each op checks its inputs, brings them to one normal form (3-D or 2-D contiguous codes, per-row
int32 shifts) and runs it on the chosen backend: the Numba loops of `reference.transformer`, the
vectorised torch int64 path of the `cpu` backend (an independent formulation of the same
integers), or the Triton kernels.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from .dispatch import resolve_backend
from .numerics import (
    INT32_MAX,
    LN_MAX_CHANNELS,
    LN_NORM_BITS,
    MAX_OFFSET_ABS,
    MAX_REQUANT_SHIFT,
    MAX_SHIFT,
    SOFTMAX_ONE,
    SOFTMAX_OUT,
    check_shift_rule,
    nested_shift,
)
from .ops_common import CODE_RANGE, NUMPY_OUT, ShiftArg, is_int, require_codes, require_tensor, same_device, \
    triton_kernels
from .reference import transformer as ref
from .reference.common import LN_STD_BITS

SOFTMAX_MAX_COLUMNS = 65_535  # keeps the row sum of 2^15-unit exp entries inside int31
LN_MAX_EPS_UNITS = 2**61


def _max_abs(dtype: torch.dtype) -> int:
    return 255 if dtype == torch.uint8 else 128


def _token_shift(value: ShiftArg, lead: tuple, tokens: int, name: str, op: str, device) -> torch.Tensor:
    """int32 [G, tokens] shifts from an int or a tensor of shape [*lead, tokens] (or broadcastable
    to it: a per-sample [B, 1, tokens] serves every head)."""
    groups = math.prod(lead)
    if is_int(value):
        if not 0 <= value <= MAX_SHIFT:
            raise ValueError(f"{op}: {name}={value} is outside the shift range [0, {MAX_SHIFT}]")
        return torch.full((groups, tokens), int(value), dtype=torch.int32, device=device)
    value = require_tensor(value, name, op)
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must be an int or an integer tensor, got dtype {value.dtype}")
    try:
        value = value.to(device).expand(*lead, tokens)
    except RuntimeError:
        raise ValueError(f"{op}: {name} of shape {tuple(value.shape)} does not give one shift per token of "
                         f"shape {(*lead, tokens)}") from None
    if value.numel() and (int(value.min()) < 0 or int(value.max()) > MAX_SHIFT):
        raise ValueError(f"{op}: {name} values must lie in [0, {MAX_SHIFT}], got min {int(value.min())} "
                         f"max {int(value.max())}")
    return value.reshape(groups, tokens).to(torch.int32).contiguous()


def _requant_constants(op: str, multiplier, shift) -> tuple[int, int, int]:
    """(mode, M, S): raw (mode 0) without a multiplier, else the requantizing epilogue."""
    if multiplier is None and shift is None:
        return 0, 0, 0
    if not is_int(multiplier) or not is_int(shift):
        raise TypeError(f"{op}: multiplier and shift must both be ints (or both None for the raw int32 sum), "
                        f"got {multiplier!r} and {shift!r}")
    if abs(int(multiplier)) > INT32_MAX:
        raise ValueError(f"{op}: |multiplier| = {abs(int(multiplier))} exceeds {INT32_MAX}")
    if not 0 <= shift <= MAX_REQUANT_SHIFT:
        raise ValueError(f"{op}: shift must be in [0, {MAX_REQUANT_SHIFT}], got {shift}")
    return 1, int(multiplier), int(shift)


def int_bmm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_shift: ShiftArg = 0,
    b_shift: ShiftArg = 0,
    b_token_axis: int = -2,
    shift_rule: str = "floor",
    multiplier: Optional[int] = None,
    shift: Optional[int] = None,
    out_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """``a @ b`` of two code tensors (attention's ``Q K^T`` and ``P V``), docs/numerics.md 10.1.

    a ``[..., M, K]``, b ``[..., K, N]`` (equal leading axes), uint8 or int8. ``a_shift``: an int
    or one shift per row of a (``[..., M]``); ``b_shift``: an int or one per token of b, its rows
    (``b_token_axis=-2``, ``[..., K]``) or its columns (``-1``, ``[..., N]``). Without
    ``multiplier``/``shift`` the result is the int32 sum in master units; with them, codes
    ``clamp(round_shift(v * multiplier, shift))`` of ``out_dtype`` (default int8).
    """
    op = "int_bmm"
    a = require_codes(a, "a", op)
    b = require_codes(b, "b", op)
    device = same_device(op, a=a, b=b)
    if a.dim() < 2 or b.dim() != a.dim() or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"{op}: a [..., M, K] and b [..., K, N] need equal leading axes and K, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if b_token_axis not in (-1, -2):
        raise ValueError(f"{op}: b_token_axis must be -2 (b's rows) or -1 (its columns), got {b_token_axis!r}")
    round_rule = check_shift_rule(shift_rule)
    lead, (M, K), N = tuple(a.shape[:-2]), a.shape[-2:], b.shape[-1]
    bound = K * _max_abs(a.dtype) * _max_abs(b.dtype)
    if bound > INT32_MAX:
        raise ValueError(f"{op}: K={K} can overflow the int32 accumulator ({bound} > 2^31 - 1)")
    ka = _token_shift(a_shift, lead, M, "a_shift", op, device)
    kb = _token_shift(b_shift, lead, N if b_token_axis == -1 else K, "b_shift", op, device)
    mode, mult, rshift = _requant_constants(op, multiplier, shift)
    if mode == 0:
        if out_dtype not in (None, torch.int32):
            raise ValueError(f"{op}: the raw sum is int32; pass multiplier and shift for {out_dtype} codes")
        dtype, lo, hi = torch.int32, 0, 0
    else:
        dtype = torch.int8 if out_dtype is None else out_dtype
        if dtype not in CODE_RANGE:
            raise ValueError(f"{op}: out_dtype must be uint8 or int8, got {dtype}")
        lo, hi = CODE_RANGE[dtype]
    G = math.prod(lead)
    a3, b3 = a.reshape(G, M, K), b.reshape(G, K, N)
    b_on_n = b_token_axis == -1
    name = resolve_backend(backend, device, op)
    if name == "triton":
        out = triton_kernels().int_bmm(a3.contiguous(), b3.contiguous(), ka, kb, b_on_n, bool(round_rule), mode,
                                       mult, rshift, lo, hi, dtype)
    elif name == "reference":
        out_np = np.empty((G, M, N), NUMPY_OUT[dtype])
        ref.int_bmm_kernel(a3.contiguous().numpy(), b3.contiguous().numpy(), ka.numpy(), kb.numpy(), b_on_n,
                           bool(round_rule), CODE_RANGE[a.dtype][1], CODE_RANGE[b.dtype][1], mode, mult, rshift,
                           lo, hi, out_np)
        out = torch.from_numpy(out_np)
    else:
        out = _bmm_cpu(a3, b3, ka, kb, b_on_n, shift_rule, mode, mult, rshift, lo, hi, dtype)
    return out.reshape(*lead, M, N)


def _bmm_cpu(a, b, ka, kb, b_on_n, rule, mode, mult, rshift, lo, hi, dtype) -> torch.Tensor:
    """The cpu path: master-unit operands as float64 (products < 2^16 and sums < 2^31: exact)."""
    ka64, kb64 = ka.long(), kb.long()
    a_eff = (nested_shift(a, ka64[:, :, None], a.dtype == torch.int8, rule).long() << ka64[:, :, None]).double()
    kb_view = kb64[:, None, :] if b_on_n else kb64[:, :, None]
    b_eff = (nested_shift(b, kb_view, b.dtype == torch.int8, rule).long() << kb_view).double()
    v = torch.bmm(a_eff, b_eff).long()
    if mode == 0:
        return v.to(torch.int32)
    return round_shift_codes(v * mult, rshift).clamp_(lo, hi).to(dtype)


def round_shift_codes(v: torch.Tensor, s) -> torch.Tensor:
    """round_shift of int64 values (section 3.5): (v + 2^(s-1)) >> s, identity at s = 0 (an int s
    or a tensor of them; torch on any device: the cpu backend and the training path share it)."""
    if isinstance(s, int):
        return v if s == 0 else (v + (1 << (s - 1))) >> s
    half = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp_min(0), torch.zeros_like(s))
    return (v + half) >> s


def check_softmax_table(table: torch.Tensor, op: str = "int_softmax") -> None:
    """The values of an exp table (read on the host): `int_softmax` checks them on every call, an
    integer program once, when it places the table on its device."""
    table = require_tensor(table, "table", op)
    if table.dtype != torch.int32 or table.shape != (256,):
        raise ValueError(f"{op}: table must be int32 with 256 entries, got {table.dtype} {tuple(table.shape)}")
    lo_t, hi_t = int(table.min()), int(table.max())
    if lo_t < 0 or hi_t > SOFTMAX_ONE or int(table[0]) < 1:
        raise ValueError(f"{op}: table entries must lie in [0, {SOFTMAX_ONE}] with table[0] >= 1, got min {lo_t} "
                         f"max {hi_t} and table[0] = {int(table[0])}")


def int_softmax(x: torch.Tensor, table: torch.Tensor, *, causal: bool = False,
                backend: Optional[str] = None) -> torch.Tensor:
    """Softmax over the last axis of score codes (docs/numerics.md 10.2): uint8 codes of step
    1/255 from the int32 exp table ``table[256]`` (`numerics.softmax_table`). ``causal`` keeps
    column n of row m of each ``[M, N]`` matrix only if ``n <= m + N - M``."""
    check_softmax_table(table)
    return run_softmax(x, table, causal=causal, backend=backend)


def run_softmax(x: torch.Tensor, table: torch.Tensor, *, causal: bool = False,
                backend: Optional[str] = None) -> torch.Tensor:
    """`int_softmax` with a table whose values `check_softmax_table` has passed: shapes and dtypes
    are checked, no tensor value is read on the host (no GPU synchronisation per call)."""
    op = "int_softmax"
    x = require_codes(x, "x", op)
    table = require_tensor(table, "table", op)
    if table.dtype != torch.int32 or table.shape != (256,):
        raise ValueError(f"{op}: table must be int32 with 256 entries, got {table.dtype} {tuple(table.shape)}")
    device = same_device(op, x=x, table=table)
    if not isinstance(causal, bool):
        raise TypeError(f"{op}: causal must be a bool, got {type(causal).__name__}")
    if x.dim() < 1 or (causal and x.dim() < 2):
        raise ValueError(f"{op}: x must have a last axis{' and a row axis (causal)' if causal else ''}, "
                         f"got shape {tuple(x.shape)}")
    N = x.shape[-1]
    M = x.shape[-2] if x.dim() >= 2 else 1
    if N > SOFTMAX_MAX_COLUMNS:
        raise ValueError(f"{op}: {N} columns exceed {SOFTMAX_MAX_COLUMNS} (the int32 row sum)")
    if causal and M > N:
        raise ValueError(f"{op}: a causal softmax needs M <= N (row m keeps columns n <= m + N - M), got {M} x {N}")
    x3 = x.reshape(math.prod(x.shape[:-2]), M, N)  # explicit: -1 cannot be inferred for empty inputs
    name = resolve_backend(backend, device, op)
    if name == "triton":
        out = triton_kernels().int_softmax(x3.contiguous(), table.contiguous(), causal)
    elif name == "reference":
        out_np = np.empty(tuple(x3.shape), np.uint8)
        ref.int_softmax_kernel(x3.contiguous().numpy(), table.contiguous().numpy(), causal, out_np)
        out = torch.from_numpy(out_np)
    else:
        out = softmax_codes(x3.long(), table, causal).to(torch.uint8)
    return out.reshape(x.shape)


def softmax_codes(v: torch.Tensor, table: torch.Tensor, causal: bool) -> torch.Tensor:
    """int64 softmax codes of int64 score codes v [..., M, N] (section 10.2; torch on any device:
    the cpu backend and the training path share it)."""
    M, N = v.shape[-2:]
    if v.numel() == 0:
        return torch.zeros_like(v)
    keep = torch.ones(M, N, dtype=torch.bool, device=v.device)
    if causal:
        keep = torch.arange(N, device=v.device)[None, :] <= torch.arange(M, device=v.device)[:, None] + (N - M)
    top = v.masked_fill(~keep, -(1 << 20)).amax(-1, keepdim=True)
    e = table.to(v.device).long()[(top - v).clamp(0, 255)].masked_fill_(~keep, 0)
    total = e.sum(-1, keepdim=True)
    return (2 * SOFTMAX_OUT * e + total) // (2 * total)


def check_layernorm_constants(mult: torch.Tensor, offset: torch.Tensor, op: str = "int_layernorm") -> None:
    """The values of LayerNorm's folded constants (read on the host): `int_layernorm` checks them
    on every call, an integer program once, when it places them on its device."""
    mult, offset = require_tensor(mult, "mult", op), require_tensor(offset, "offset", op)
    if mult.numel() and offset.numel() and (int(mult.abs().max()) > 2**30 or int(offset.abs().max()) > MAX_OFFSET_ABS):
        raise ValueError(f"{op}: |mult| must be <= 2^30 and |offset| <= 2^47")


def int_layernorm(x: torch.Tensor, mult: torch.Tensor, offset: torch.Tensor, *, shift: int, eps_units: int,
                  out_dtype: torch.dtype = torch.int8, backend: Optional[str] = None) -> torch.Tensor:
    """LayerNorm over the last axis of codes (docs/numerics.md 10.3) with the folded affine map
    ``mult`` (int32 ``[C]``), ``offset`` (int64 ``[C]``), ``shift`` and ``eps_units`` from
    `numerics.layernorm_constants`; output codes of ``out_dtype``."""
    check_layernorm_constants(mult, offset)
    return run_layernorm(x, mult, offset, shift=shift, eps_units=eps_units, out_dtype=out_dtype, backend=backend)


def run_layernorm(x: torch.Tensor, mult: torch.Tensor, offset: torch.Tensor, *, shift: int, eps_units: int,
                  out_dtype: torch.dtype = torch.int8, backend: Optional[str] = None) -> torch.Tensor:
    """`int_layernorm` with constants whose values `check_layernorm_constants` has passed: shapes,
    dtypes and the int arguments are checked, no tensor value is read on the host."""
    op = "int_layernorm"
    x = require_codes(x, "x", op)
    mult = require_tensor(mult, "mult", op)
    offset = require_tensor(offset, "offset", op)
    device = same_device(op, x=x, mult=mult, offset=offset)
    C = x.shape[-1] if x.dim() else 0
    if not 1 <= C <= LN_MAX_CHANNELS:
        raise ValueError(f"{op}: the last axis must have 1..{LN_MAX_CHANNELS} channels, got shape {tuple(x.shape)}")
    if mult.dtype != torch.int32 or tuple(mult.shape) != (C,):
        raise ValueError(f"{op}: mult must be int32 [{C}], got {mult.dtype} {tuple(mult.shape)}")
    if offset.dtype != torch.int64 or tuple(offset.shape) != (C,):
        raise ValueError(f"{op}: offset must be int64 [{C}], got {offset.dtype} {tuple(offset.shape)}")
    if not is_int(shift) or not 0 <= shift <= MAX_REQUANT_SHIFT - LN_NORM_BITS:
        raise ValueError(f"{op}: shift must be an int in [0, {MAX_REQUANT_SHIFT - LN_NORM_BITS}], got {shift!r}")
    if not is_int(eps_units) or not 0 <= eps_units <= LN_MAX_EPS_UNITS:
        raise ValueError(f"{op}: eps_units must be an int in [0, 2^61], got {eps_units!r}")
    if out_dtype not in CODE_RANGE:
        raise ValueError(f"{op}: out_dtype must be uint8 or int8, got {out_dtype}")
    lo, hi = CODE_RANGE[out_dtype]
    x2 = x.reshape(-1, C)
    name = resolve_backend(backend, device, op)
    if name == "triton":
        out = triton_kernels().int_layernorm(x2.contiguous(), mult.contiguous(), offset.contiguous(), int(shift),
                                             int(eps_units), lo, hi, out_dtype)
    elif name == "reference":
        out_np = np.empty(tuple(x2.shape), NUMPY_OUT[out_dtype])
        ref.int_layernorm_kernel(x2.contiguous().numpy(), mult.numpy(), offset.numpy(), int(shift), int(eps_units),
                                 lo, hi, out_np)
        out = torch.from_numpy(out_np)
    else:
        out = layernorm_codes(x2, mult, offset, int(shift), int(eps_units)).clamp_(lo, hi).to(out_dtype)
    return out.reshape(x.shape)


def layernorm_codes(x: torch.Tensor, mult: torch.Tensor, offset: torch.Tensor, shift: int,
                    eps_units: int) -> torch.Tensor:
    """Unclamped int64 output codes of the integer LayerNorm over the last axis (torch int64 on
    any device; the cpu backend and the training path share it)."""
    C = x.shape[-1]
    v = x.long()
    total = v.sum(-1, keepdim=True)
    d = C * v - total
    var = (d * d).sum(-1, keepdim=True)
    q = (var // C) * (1 << 2 * LN_STD_BITS) + ((var % C) << 2 * LN_STD_BITS) // C + eps_units
    root = torch.sqrt(q.double()).long()
    for _ in range(2):
        root = root - (root * root > q).long()
    for _ in range(2):
        root = root + ((root + 1) * (root + 1) <= q).long()
    safe = root.clamp_min(1)
    n = torch.div(2 * (d << (LN_STD_BITS + LN_NORM_BITS)) + safe, 2 * safe, rounding_mode="floor")
    n = torch.where(root > 0, n, torch.zeros_like(n))
    return round_shift_codes(mult.long() * n + offset, shift + LN_NORM_BITS)


def int_embedding(ids: torch.Tensor, table: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """``table[ids]``: int8 code rows of a ``[V, D]`` table for token ids given as uint8 or int8
    codes, every id in ``[0, V)`` (docs/numerics.md 10.4). Output ``[*ids.shape, D]`` int8."""
    op = "int_embedding"
    ids = require_codes(ids, "ids", op)
    table = require_codes(table, "table", op, dtypes=(torch.int8,), ndim=2)
    device = same_device(op, ids=ids, table=table)
    V, D = table.shape
    # One host read, and none when the table has a row for every code of the id dtype. V is only
    # compared with ids when it fits their dtype (an int8 128 would wrap to -128).
    signed, top = ids.dtype == torch.int8, CODE_RANGE[ids.dtype][1]
    bad = [ids < 0] if signed else []
    if V <= top:
        bad.append(ids >= V)
    if ids.numel() and bad and bool(torch.stack([b.any() for b in bad]).any()):
        raise ValueError(f"{op}: token ids must lie in [0, {V}) (the table has {V} rows), got min {int(ids.min())} "
                         f"max {int(ids.max())}")
    flat = ids.contiguous().reshape(-1)
    name = resolve_backend(backend, device, op)
    if name == "triton":
        out = triton_kernels().int_embedding(flat, table.contiguous())
    elif name == "reference":
        out_np = np.empty((flat.shape[0], D), np.int8)
        ref.int_embedding_kernel(flat.numpy(), table.contiguous().numpy(), out_np)
        out = torch.from_numpy(out_np)
    else:
        out = table[flat.long()]
    return out.reshape(*ids.shape, D)
