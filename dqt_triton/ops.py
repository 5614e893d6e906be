"""Public integer ops of the DQT contract (docs/numerics.md) and their dispatch.

Every op validates its inputs, normalises them into one plan (`Epilogue`, per-row shift
tensors), and hands that plan to the backend chosen by `dqt_triton.dispatch`. No kernel code
lives here: the Numba kernels are in `dqt_triton.reference`, the Triton ones in
`dqt_triton.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from . import reference as ref
from . import weight_cache
from .dispatch import resolve_backend
from .errors import BackendUnavailableError
from .numerics import (
    INT32_MAX,
    MAX_OFFSET_ABS,
    MAX_REQUANT_SHIFT,
    MAX_SHIFT,
    SHIFT_RULES,
    check_accumulator,
    check_shift_rule,
    shifted_weight_table,
)

ShiftArg = Union[int, torch.Tensor]
IntPair = Union[int, tuple[int, int]]

CODE_DTYPES = (torch.uint8, torch.int8)
# Rows of a width table: one set of epilogue constants per weight shift 0..MAX_SHIFT.
WIDTH_TABLE_ROWS = MAX_SHIFT + 1
_DTYPE_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}
_NUMPY_OUT = {torch.int32: np.int32, torch.uint8: np.uint8, torch.int8: np.int8, torch.float32: np.float32}


@dataclass
class Epilogue:
    """What happens to the master-unit accumulator v = (acc << (ka + kw)) + bias[n] (bias[kw, n]
    for a width table).

    mode: ref.EPILOGUE_RAW (int32 v), ref.EPILOGUE_REQUANT (8-bit codes) or ref.EPILOGUE_FLOAT
    (float32(v) * scale[n]). Each constant is a contiguous tensor on the op's device, either
    [N] (shared by every width) or a width table [8, N] whose row kw[m] serves row m.
    """

    mode: int
    out_dtype: torch.dtype
    bias: torch.Tensor  # int32 [N] or [8, N]
    multiplier: torch.Tensor  # int32 [N] or [8, N]
    shift: torch.Tensor  # int32 [N] or [8, N]
    scale: torch.Tensor  # float32 [N] or [8, N]
    relu: bool
    lo: int
    hi: int


# ----------------------------------------------------------------------------- validation


def _require_tensor(t: object, name: str, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def _require_codes(t: object, name: str, op: str, dtypes=CODE_DTYPES, ndim: int | None = None) -> torch.Tensor:
    t = _require_tensor(t, name, op)
    if t.dtype not in dtypes:
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype {allowed}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _same_device(op: str, **tensors: Optional[torch.Tensor]) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{op}: all tensors must be on one device; {name} is on {dev}, not {first}")
    return first


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _per_row_shift(value: ShiftArg, rows: int, name: str, op: str, device: torch.device) -> torch.Tensor:
    """int32 [rows] shift amounts from a per-layer int or a per-sample tensor, range-checked."""
    if _is_int(value):
        if not 0 <= value <= MAX_SHIFT:
            raise ValueError(f"{op}: {name}={value} is outside the shift range [0, {MAX_SHIFT}]")
        return torch.full((rows,), int(value), dtype=torch.int32, device=device)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be an int or an integer tensor, got {type(value).__name__}")
    if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
        raise TypeError(f"{op}: {name} must have an integer dtype, got {value.dtype}")
    if value.dim() == 0:
        value = value.reshape(1).expand(rows)
    if value.dim() != 1 or value.shape[0] != rows:
        raise ValueError(
            f"{op}: per-sample {name} must have one entry per sample ({rows}), got shape {tuple(value.shape)}"
        )
    value = value.to(device=device)
    if rows and (int(value.min()) < 0 or int(value.max()) > MAX_SHIFT):
        raise ValueError(
            f"{op}: {name} values must lie in the shift range [0, {MAX_SHIFT}], "
            f"got min {int(value.min())} max {int(value.max())}"
        )
    return value.to(torch.int32).contiguous()


def _check_table_shape(t: torch.Tensor, n: int, name: str, op: str) -> None:
    """An epilogue constant is [n] (one entry per output channel, every width) or a width table
    [8, n] (row k for the rows whose weight shift is k)."""
    if t.shape not in ((n,), (WIDTH_TABLE_ROWS, n)):
        raise ValueError(
            f"{op}: {name} must have shape ({n},) (one entry per output channel) or ({WIDTH_TABLE_ROWS}, {n}) "
            f"(a width table: row k for weight shift k), got {tuple(t.shape)}"
        )


def _per_channel(
    value: object, n: int, name: str, op: str, device: torch.device, dtype: torch.dtype, integer: bool
) -> torch.Tensor:
    """[n] or [8, n] tensor from a scalar, an [n] tensor or an [8, n] width table; integer
    tensors must already be integral."""
    if isinstance(value, torch.Tensor):
        if integer and (value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool):
            raise TypeError(f"{op}: {name} must have an integer dtype, got {value.dtype}")
        if not integer and not value.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must have a floating dtype, got {value.dtype}")
        if value.dim() == 0:
            value = value.reshape(1).expand(n)
        _check_table_shape(value, n, name, op)
        if integer:
            return value.to(device=device, dtype=torch.int64).contiguous()
        return value.to(device=device, dtype=dtype).contiguous()
    if integer and _is_int(value):
        return torch.full((n,), int(value), dtype=torch.int64, device=device)
    if not integer and isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value), dtype=dtype, device=device)
    kind = "an int" if integer else "a float"
    raise TypeError(f"{op}: {name} must be {kind} or a tensor, got {type(value).__name__}")


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _check_scalar_range(value: object, lo: int, hi: int, name: str, op: str, what: str) -> None:
    # Python ints are unbounded: check before they become int64 tensors (which would overflow).
    if _is_int(value) and not lo <= int(value) <= hi:
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}] ({what}), got {int(value)}")


def _check_range(t: torch.Tensor, lo: int, hi: int, name: str, op: str, what: str) -> None:
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}] ({what}), got min {int(t.min())} max {int(t.max())}")


def _build_epilogue(
    op: str,
    n: int,
    device: torch.device,
    bias: Optional[torch.Tensor],
    multiplier: object,
    shift: object,
    out_scale: object,
    out_dtype: Optional[torch.dtype],
    relu: bool,
    clamp_max: Optional[int] = None,
) -> Epilogue:
    if not isinstance(relu, bool):
        raise TypeError(f"{op}: relu must be a bool, got {type(relu).__name__}")
    if clamp_max is not None and (multiplier is None or not _is_int(clamp_max)):
        raise ValueError(f"{op}: clamp_max (an int code) applies to the requantizing epilogue only, got "
                         f"{clamp_max!r}" + ("" if multiplier is not None else " without multiplier/shift"))
    if bias is None:
        bias_t = torch.zeros(n, dtype=torch.int32, device=device)
    else:
        bias_t = _require_tensor(bias, "bias", op)
        if bias_t.dtype != torch.int32:
            raise TypeError(f"{op}: bias must be int32 in master accumulator units, got {bias_t.dtype}")
        _check_table_shape(bias_t, n, "bias", op)
        bias_t = bias_t.to(device).contiguous()
    requant = multiplier is not None or shift is not None
    if requant and (multiplier is None or shift is None):
        raise ValueError(f"{op}: requantization needs both multiplier and shift")
    if requant and out_scale is not None:
        raise ValueError(f"{op}: give either multiplier/shift (requantize) or out_scale (dequantize), not both")
    zeros_i = torch.zeros(n, dtype=torch.int32, device=device)
    if requant:
        dtype = out_dtype if out_dtype is not None else (torch.uint8 if relu else torch.int8)
        if dtype not in CODE_DTYPES:
            raise ValueError(f"{op}: requantized output must be uint8 or int8, got out_dtype={dtype}")
        _check_scalar_range(multiplier, -INT32_MAX, INT32_MAX, "multiplier", op, "int32 with |M| <= 2^31 - 1")
        _check_scalar_range(shift, 0, MAX_REQUANT_SHIFT, "shift", op, "requantization right shift")
        mult = _per_channel(multiplier, n, "multiplier", op, device, torch.int64, integer=True)
        _check_range(mult, -INT32_MAX, INT32_MAX, "multiplier", op, "int32 with |M| <= 2^31 - 1")
        rshift = _per_channel(shift, n, "shift", op, device, torch.int64, integer=True)
        _check_range(rshift, 0, MAX_REQUANT_SHIFT, "shift", op, "requantization right shift")
        lo, hi = _DTYPE_RANGE[dtype]
        lo = max(lo, 0) if relu else lo
        if clamp_max is not None:
            if not lo <= clamp_max <= hi:
                raise ValueError(f"{op}: clamp_max must lie in [{lo}, {hi}] (the output codes' range), got {clamp_max}")
            hi = int(clamp_max)
        return Epilogue(ref.EPILOGUE_REQUANT, dtype, bias_t, mult.to(torch.int32), rshift.to(torch.int32),
                        torch.zeros(n, dtype=torch.float32, device=device), relu, lo, hi)
    if out_scale is not None:
        if out_dtype not in (None, torch.float32):
            raise ValueError(f"{op}: the dequantizing epilogue returns float32, got out_dtype={out_dtype}")
        if isinstance(out_scale, (int, float)) and not isinstance(out_scale, bool) and not (
                math.isfinite(out_scale) and abs(out_scale) <= FLOAT32_MAX):
            raise ValueError(f"{op}: out_scale must be finite in float32 (|out_scale| <= {FLOAT32_MAX:.4g}), "
                             f"got {out_scale!r}")
        scale = _per_channel(out_scale, n, "out_scale", op, device, torch.float32, integer=False)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"{op}: out_scale must be finite in float32 (|out_scale| <= {FLOAT32_MAX:.4g}); "
                             "NaN, inf or a value that overflows float32 was given")
        return Epilogue(ref.EPILOGUE_FLOAT, torch.float32, bias_t, zeros_i, zeros_i, scale, relu, 0, 0)
    if out_dtype not in (None, torch.int32):
        raise ValueError(
            f"{op}: out_dtype={out_dtype} needs an epilogue: pass multiplier and shift to requantize "
            "(uint8/int8) or out_scale to dequantize (float32); the raw epilogue returns int32"
        )
    return Epilogue(ref.EPILOGUE_RAW, torch.int32, bias_t, zeros_i, zeros_i,
                    torch.zeros(n, dtype=torch.float32, device=device), relu, 0, 0)


def _pair(value: IntPair, name: str, op: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if _is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if pair is None or len(pair) != 2 or not all(_is_int(v) for v in pair):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


# ----------------------------------------------------------------------------- numba glue


def _np_table(t: torch.Tensor, dtype) -> np.ndarray:
    """An [N] constant as a one-row [1, N] table, a width table [8, N] as it is: the Numba
    kernels always take 2-D tables and pick row kw when there are 8 rows, else row 0."""
    return np.ascontiguousarray(t.numpy().reshape(-1, t.shape[-1]), dtype=dtype)


def _np_epilogue(ep: Epilogue) -> tuple:
    return (
        _np_table(ep.bias, np.int64),
        ep.mode,
        _np_table(ep.multiplier, np.int64),
        _np_table(ep.shift, np.int64),
        _np_table(ep.scale, np.float32),
        ep.relu,
        ep.lo,
        ep.hi,
    )


def _bias_abs_max(ep: Epilogue) -> int:
    """max |bias| over the whole table (every width), in int64 so that -2^31 counts as 2^31."""
    return int(ep.bias.to(torch.int64).abs().max())


def _np_shifts(act_shift: torch.Tensor, weight_shift: torch.Tensor) -> tuple:
    """Per-row activation shifts, and weight shifts as (slot per row, distinct shifts)."""
    distinct, slot = np.unique(weight_shift.numpy().astype(np.int64), return_inverse=True)
    return act_shift.numpy().astype(np.int64), slot.astype(np.int64), distinct


def _cpu_weight_tables(w2d: torch.Tensor, owner: torch.Tensor, shifts: np.ndarray, round_rule: int,
                       cache: bool) -> list:
    """`reference.blas.weight_table` of `w2d` [N, K] at each shift, cached on `owner` if asked."""
    w_np: list[np.ndarray] = []  # one contiguous copy, made on the first miss only

    def build(k: int):
        if not w_np:
            w_np.append(w2d.contiguous().numpy())
        return ref.weight_table(w_np[0], k, round_rule)

    return [weight_cache.lookup(owner, int(k), round_rule, lambda k=int(k): build(k)) if cache else build(int(k))
            for k in shifts]


def _triton_kernels():
    try:
        from . import kernels
    except ImportError as exc:  # triton missing or broken
        raise BackendUnavailableError(f"backend 'triton' cannot be imported: {exc}") from exc
    if not kernels.AVAILABLE:
        raise BackendUnavailableError(f"backend 'triton' needs the triton package: {kernels.IMPORT_ERROR}")
    return kernels


def _triton_epilogue_args(ep: Epilogue) -> tuple:
    return (ep.bias, ep.multiplier, ep.shift, ep.scale)


# ----------------------------------------------------------------------------- public ops


def int_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    act_shift: ShiftArg = 0,
    weight_shift: ShiftArg = 0,
    bias: Optional[torch.Tensor] = None,
    multiplier: Union[int, torch.Tensor, None] = None,
    shift: Union[int, torch.Tensor, None] = None,
    out_scale: Union[float, torch.Tensor, None] = None,
    out_dtype: Optional[torch.dtype] = None,
    relu: bool = False,
    clamp_max: Optional[int] = None,
    shift_rule: str = "floor",
    backend: Optional[str] = None,
    cache_weight: bool = False,
) -> torch.Tensor:
    """Integer matmul ``out[m, n] = epilogue(sum_k s(x[m, k], ka[m]) * s(w[n, k], kw[m]))``.

    Args:
        x: activation codes ``[M, K]``, uint8 (after ReLU) or int8.
        w: weight codes ``[N, K]``, int8 (K-contiguous, like ``nn.Linear.weight``).
        act_shift: activation shift k_a = 8 - bits, an int (per layer) or an integer tensor
            ``[M]`` (per sample); values in [0, 7].
        weight_shift: weight shift k_w, an int or an integer tensor ``[M]``; values in [0, 7].
        bias: int32 ``[N]`` in master accumulator units (scale D_x * D_w[n]), or a width table
            ``[8, N]``: row m adds ``bias[kw[m], n]``.
        multiplier, shift: requantization constants (int, ``[N]`` tensor or ``[8, N]`` width
            table); the output is ``clamp(round_shift(v * multiplier, shift))`` as ``out_dtype``
            (uint8 default with ``relu``, else int8).
        out_scale: float, ``[N]`` float tensor or ``[8, N]`` width table; the output is float32
            ``float32(v) * scale``.

        Width tables hold one set of constants per weight shift (a batch norm per bit-width
        folded into its own constants): row m uses table row ``kw[m]``, with a per-layer or a
        per-sample ``weight_shift``. Scalars and ``[N]`` tensors are shared by every width, and
        the two forms mix freely (e.g. a bias table with one ``[N]`` multiplier).
        out_dtype: output dtype check; int32 for the raw epilogue.
        relu: clamp the accumulator at zero before the epilogue.
        clamp_max: requantizing epilogue only: the largest output code (ReLU6 / Hardtanh's
            upper bound as a code); default the output dtype's maximum.
        shift_rule: "floor" (the paper's truncating shift) or "round".
        backend: "reference", "cpu", "triton" or "auto" (default: see ``use_backend``).
        cache_weight: CPU path: keep the shifted float32 copies of ``w`` between calls (see
            `dqt_triton.weight_cache`; only for weights changed by torch ops, if at all).

    Returns:
        ``[M, N]`` tensor: int32 master-unit accumulator (raw), 8-bit codes, or float32.
    """
    op = "int_matmul"
    x = _require_codes(x, "x", op, ndim=2)
    w = _require_codes(w, "w", op, dtypes=(torch.int8,), ndim=2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x is [M, K]=[{x.shape[0]}, {x.shape[1]}] but w is [N, K]={list(w.shape)}: K differs")
    if x.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError(f"{op}: K and N must be >= 1, got x {tuple(x.shape)}, w {tuple(w.shape)}")
    device = _same_device(op, x=x, w=w, bias=bias)
    round_rule = check_shift_rule(shift_rule)
    M, K = x.shape
    N = w.shape[0]
    ka = _per_row_shift(act_shift, M, "act_shift", op, device)
    kw = _per_row_shift(weight_shift, M, "weight_shift", op, device)
    ep = _build_epilogue(op, N, device, bias, multiplier, shift, out_scale, out_dtype, relu, clamp_max)
    check_accumulator(K, x.dtype == torch.int8, _bias_abs_max(ep), op)
    return _matmul_dispatch(x, w, ka, kw, _is_int(weight_shift), ep, round_rule, resolve_backend(backend, device, op),
                            cache_weight)


def _matmul_dispatch(x, w, ka, kw, per_layer_kw: bool, ep: Epilogue, round_rule: int, name: str,
                     cache_weight: bool, shifted: Optional[tuple] = None) -> torch.Tensor:
    """Run a validated matmul on backend `name`; ka, kw are int32 [M] on x's device. `shifted`
    (Triton only): w's pre-shifted (table, column sums), which the kernel reads instead of w."""
    M, N = x.shape[0], w.shape[0]
    if name == "triton":
        # A per-layer shift goes to the kernels as one entry, so they skip bucketing rows by shift.
        w_arg, colsum = shifted if shifted is not None else (w, None)
        return _triton_kernels().int_matmul(
            x, w_arg, ka, kw[:1].contiguous() if per_layer_kw else kw, *_triton_epilogue_args(ep),
            bool(round_rule), ep.mode, ep.relu, ep.lo, ep.hi, ep.out_dtype, colsum,
        )
    out = np.empty((M, N), _NUMPY_OUT[ep.out_dtype])
    if M == 0:
        return torch.from_numpy(out)
    x_hi = 127 if x.dtype == torch.int8 else 255
    act_np, slot_np, distinct = _np_shifts(ka, kw)
    if name == "reference":
        weights = w.contiguous().numpy()
        kernel = ref.int_matmul_kernel
    else:
        weights = _cpu_weight_tables(w, w, distinct, round_rule, cache_weight)
        kernel = ref.int_matmul_blas
    kernel(x.contiguous().numpy(), weights, act_np, slot_np, distinct, round_rule, x_hi, *_np_epilogue(ep), out)
    return torch.from_numpy(out)


def int_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    act_shift: ShiftArg = 0,
    weight_shift: ShiftArg = 0,
    bias: Optional[torch.Tensor] = None,
    multiplier: Union[int, torch.Tensor, None] = None,
    shift: Union[int, torch.Tensor, None] = None,
    out_scale: Union[float, torch.Tensor, None] = None,
    out_dtype: Optional[torch.dtype] = None,
    relu: bool = False,
    clamp_max: Optional[int] = None,
    shift_rule: str = "floor",
    backend: Optional[str] = None,
    cache_weight: bool = False,
) -> torch.Tensor:
    """Integer 2-D convolution with the same shifts and epilogues as :func:`int_matmul`.

    Args:
        x: activation codes ``[B, C, H, W]`` (any memory format; channels_last is fastest).
        w: weight codes ``[Cout, C / groups, KH, KW]`` int8, like ``nn.Conv2d.weight``.
        stride, padding, dilation, groups: as in ``torch.nn.functional.conv2d``; padding
            contributes code 0.
        act_shift, weight_shift: int, or integer tensor ``[B]`` for per-sample shifts.
        Other arguments: see :func:`int_matmul`; per-channel tensors have Cout entries, width
            tables are ``[8, Cout]`` and image b uses row ``kw[b]`` for all its pixels.

    Returns:
        ``[B, Cout, OH, OW]`` tensor in channels_last memory format.
    """
    op = "int_conv2d"
    x = _require_codes(x, "x", op, ndim=4)
    w = _require_codes(w, "w", op, dtypes=(torch.int8,), ndim=4)
    device = _same_device(op, x=x, w=w, bias=bias)
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
    B, C, H, W = x.shape
    Cout, Cg, KH, KW = w.shape
    if C % groups or Cout % groups:
        raise ValueError(f"{op}: in channels ({C}) and out channels ({Cout}) must be divisible by groups ({groups})")
    if Cg != C // groups:
        raise ValueError(f"{op}: w has {Cg} input channels per group but x has {C} channels / {groups} groups = {C // groups}")
    if Cg == 0 or KH == 0 or KW == 0 or Cout == 0:
        raise ValueError(f"{op}: empty weight shape {tuple(w.shape)}")
    sh, sw = _pair(stride, "stride", op, 1)
    ph, pw = _pair(padding, "padding", op, 0)
    dh, dw = _pair(dilation, "dilation", op, 1)
    OH, OW = _out_size(H, KH, sh, ph, dh), _out_size(W, KW, sw, pw, dw)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: input {H}x{W} is too small for kernel {KH}x{KW} with padding {padding}, dilation {dilation}")
    round_rule = check_shift_rule(shift_rule)
    ka = _per_row_shift(act_shift, B, "act_shift", op, device)
    kw = _per_row_shift(weight_shift, B, "weight_shift", op, device)
    ep = _build_epilogue(op, Cout, device, bias, multiplier, shift, out_scale, out_dtype, relu, clamp_max)
    check_accumulator(Cg * KH * KW, x.dtype == torch.int8, _bias_abs_max(ep), op)
    geometry = (sh, sw, ph, pw, dh, dw, groups)
    return _conv_dispatch(x, w, geometry, (OH, OW), ka, kw, _is_int(weight_shift), ep, round_rule,
                          resolve_backend(backend, device, op), cache_weight)


def _conv_dispatch(x, w, geometry: tuple, out_hw: tuple, ka, kw, per_layer_kw: bool, ep: Epilogue,
                   round_rule: int, name: str, cache_weight: bool, shifted: Optional[tuple] = None) -> torch.Tensor:
    """Run a validated conv2d on backend `name`; ka, kw are int32 [B] on x's device; `shifted`
    as in `_matmul_dispatch`."""
    B = x.shape[0]
    Cout = w.shape[0]
    OH, OW = out_hw
    if name == "triton":
        # Weights as [Cout, KH, KW, C/g] in memory: the kernel's channel loads are contiguous.
        w_arg, colsum = shifted if shifted is not None else (w.contiguous(memory_format=torch.channels_last), None)
        return _triton_kernels().int_conv2d(
            x, w_arg, list(geometry), ka, kw[:1].contiguous() if per_layer_kw else kw, *_triton_epilogue_args(ep),
            bool(round_rule), ep.mode, ep.relu, ep.lo, ep.hi, ep.out_dtype, colsum,
        )
    out = np.empty((B * OH * OW, Cout), _NUMPY_OUT[ep.out_dtype])
    if B > 0:
        x_nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
        x_hi = 127 if x.dtype == torch.int8 else 255
        act_np, slot_np, distinct = _np_shifts(ka, kw)
        w_nhwc = w.permute(0, 2, 3, 1)
        if name == "reference":
            ref.int_conv2d_kernel(x_nhwc, w_nhwc.contiguous().numpy(), *geometry, act_np, slot_np, distinct,
                                  round_rule, x_hi, *_np_epilogue(ep), out)
        else:
            tables = _cpu_weight_tables(w_nhwc.reshape(Cout, -1), w, distinct, round_rule, cache_weight)
            ref.int_conv2d_blas(x_nhwc, tuple(w_nhwc.shape), tables, *geometry, act_np, slot_np, distinct,
                                round_rule, x_hi, *_np_epilogue(ep), out)
    return torch.from_numpy(out).view(B, OH, OW, Cout).permute(0, 3, 1, 2)


# ----------------------------------------------------------------------------- prepared layers


@dataclass(frozen=True)
class PreparedLayer:
    """A matmul or conv2d layer validated once, with its weight and epilogue constants on one
    device.

    `prepare_layer` runs every check of `int_matmul` / `int_conv2d` that reads tensor values
    (ranges, accumulator bound) when the layer is built; `run_prepared` then checks only shapes,
    dtypes and devices, which live on the host, so a forward pass through prepared layers never
    waits on the device (no `.item()`, no per-call copy): what a frozen integer program needs on
    a GPU, and what CUDA graphs need to capture it.
    """

    weight: torch.Tensor  # int8 [N, K], or [Cout, C/g, KH, KW] in channels_last memory format
    epilogue: Epilogue
    x_dtype: torch.dtype  # the activation dtype the accumulator bound was checked for
    round_rule: int
    geometry: Optional[tuple]  # conv2d: (sh, sw, ph, pw, dh, dw, groups); None for matmul
    # Triton path: the weights at every shift with their column sums, built on first use on
    # the layer's device (8x the int8 weight bytes), so the kernels' K loop skips the shift.
    _shifted: dict = field(default_factory=dict, compare=False, repr=False)

    def shifted_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[8, *weight.shape]`` int8 pre-shifted weights, ``[8, N]`` int32 sums), cached."""
        if "table" not in self._shifted:
            rule = SHIFT_RULES[self.round_rule]
            self._shifted["table"] = shifted_weight_table(self.weight, rule)
        return self._shifted["table"]


def prepare_layer(
    w: torch.Tensor,
    *,
    x_dtype: torch.dtype,
    device: Union[str, torch.device, None] = None,
    conv: Optional[dict] = None,
    bias: Optional[torch.Tensor] = None,
    multiplier: Union[int, torch.Tensor, None] = None,
    shift: Union[int, torch.Tensor, None] = None,
    out_scale: Union[float, torch.Tensor, None] = None,
    out_dtype: Optional[torch.dtype] = None,
    relu: bool = False,
    clamp_max: Optional[int] = None,
    shift_rule: str = "floor",
) -> PreparedLayer:
    """Validate a layer once and place it on `device` (default: w's).

    Arguments as in `int_matmul` (``conv=None``) or `int_conv2d` (``conv`` a dict with stride,
    padding, dilation and groups); ``x_dtype`` is the dtype of the activations it will get.
    """
    op = "prepare_layer"
    device = torch.device(device) if device is not None else _require_tensor(w, "w", op).device
    if x_dtype not in CODE_DTYPES:
        raise TypeError(f"{op}: x_dtype must be uint8 or int8, got {x_dtype}")
    w = _require_codes(w, "w", op, dtypes=(torch.int8,), ndim=2 if conv is None else 4).to(device)
    if bias is not None:
        bias = _require_tensor(bias, "bias", op).to(device)
    multiplier, shift, out_scale = (v.to(device) if isinstance(v, torch.Tensor) else v
                                    for v in (multiplier, shift, out_scale))
    round_rule = check_shift_rule(shift_rule)
    if conv is None:
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(f"{op}: K and N must be >= 1, got w {tuple(w.shape)}")
        ep = _build_epilogue(op, w.shape[0], device, bias, multiplier, shift, out_scale, out_dtype, relu, clamp_max)
        check_accumulator(w.shape[1], x_dtype == torch.int8, _bias_abs_max(ep), op)
        return PreparedLayer(w.contiguous(), ep, x_dtype, round_rule, None)
    Cout, Cg, KH, KW = w.shape
    groups = conv.get("groups", 1)
    if not _is_int(groups) or groups < 1 or Cout % groups:
        raise ValueError(f"{op}: groups must be an int >= 1 dividing {Cout} output channels, got {groups!r}")
    if Cg == 0 or KH == 0 or KW == 0 or Cout == 0:
        raise ValueError(f"{op}: empty weight shape {tuple(w.shape)}")
    sh, sw = _pair(conv.get("stride", 1), "stride", op, 1)
    ph, pw = _pair(conv.get("padding", 0), "padding", op, 0)
    dh, dw = _pair(conv.get("dilation", 1), "dilation", op, 1)
    ep = _build_epilogue(op, Cout, device, bias, multiplier, shift, out_scale, out_dtype, relu, clamp_max)
    check_accumulator(Cg * KH * KW, x_dtype == torch.int8, _bias_abs_max(ep), op)
    return PreparedLayer(w.contiguous(memory_format=torch.channels_last), ep, x_dtype, round_rule,
                         (sh, sw, ph, pw, dh, dw, groups))


def _trusted_shift(value: ShiftArg, rows: int, name: str, op: str, device: torch.device) -> torch.Tensor:
    """int32 [rows] shifts without reading tensor values: ints are range-checked on the host,
    tensors only for shape (they come from the program, in range by construction)."""
    if _is_int(value):
        return _per_row_shift(value, rows, name, op, device)  # a host int: the public op's check
    if value.shape != (rows,) or value.device != device:
        raise ValueError(f"{op}: per-sample {name} must be [{rows}] on {device}, got {tuple(value.shape)} on "
                         f"{value.device}")
    return value.to(torch.int32).contiguous()


def run_prepared(layer: PreparedLayer, x: torch.Tensor, act_shift: ShiftArg, weight_shift: ShiftArg,
                 backend: Optional[str] = None) -> torch.Tensor:
    """`int_matmul` / `int_conv2d` of a prepared layer, without reading any tensor value on the
    host. Per-sample shift tensors are trusted: they must hold values in [0, 7] (the integer
    program builds them from its candidate widths); the CPU backends still check them, on the
    host where they already are."""
    op = "run_prepared"
    w = layer.weight
    if not isinstance(x, torch.Tensor) or x.dtype != layer.x_dtype:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"{op}: the layer was prepared for {layer.x_dtype} activations, got {got}")
    if x.device != w.device:
        raise ValueError(f"{op}: x is on {x.device}, the prepared layer on {w.device}")
    name = resolve_backend(backend, x.device, op)
    rows = x.shape[0]
    ka = _trusted_shift(act_shift, rows, "act_shift", op, x.device)
    kw = _trusted_shift(weight_shift, rows, "weight_shift", op, x.device)
    if name != "triton" and rows:
        # On the host anyway: a bad shift must not index past the Numba kernels' tables.
        for t, label in ((ka, "act_shift"), (kw, "weight_shift")):
            values = t.numpy()
            if values.min() < 0 or values.max() > MAX_SHIFT:
                raise ValueError(f"{op}: {label} values must lie in [0, {MAX_SHIFT}]")
    if layer.geometry is None:
        if x.dim() != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(f"{op}: x must be [M, {w.shape[1]}], got {tuple(x.shape)}")
        return _matmul_dispatch(x, w, ka, kw, _is_int(weight_shift), layer.epilogue, layer.round_rule, name, True,
                                layer.shifted_weights() if name == "triton" else None)
    sh, sw, ph, pw, dh, dw, groups = layer.geometry
    Cout, Cg, KH, KW = w.shape
    if x.dim() != 4 or x.shape[1] != Cg * groups:
        raise ValueError(f"{op}: x must be [B, {Cg * groups}, H, W], got {tuple(x.shape)}")
    OH, OW = _out_size(x.shape[2], KH, sh, ph, dh), _out_size(x.shape[3], KW, sw, pw, dw)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: input {x.shape[2]}x{x.shape[3]} is too small for kernel {KH}x{KW}")
    return _conv_dispatch(x, w, layer.geometry, (OH, OW), ka, kw, _is_int(weight_shift), layer.epilogue,
                          layer.round_rule, name, True, layer.shifted_weights() if name == "triton" else None)


def _elementwise_operands(op: str, a: object, b: object) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    a = _require_codes(a, "a", op)
    b = _require_codes(b, "b", op)
    if a.shape != b.shape:
        raise ValueError(f"{op}: a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b, _same_device(op, a=a, b=b)


def _check_constants(op: str, shift: int, **constants: int) -> None:
    for name, value in constants.items():
        if not _is_int(value):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
        # The additive offset (k3 of add, k4 of multiply) may reach 2^47; coefficients are int32.
        offset = "k3" if op == "int_add" else "k4"
        limit = MAX_OFFSET_ABS if name == offset else INT32_MAX
        if abs(int(value)) > limit:
            raise ValueError(f"{op}: |{name}| = {abs(int(value))} exceeds {limit}")
    if not _is_int(shift) or not 0 <= shift <= MAX_REQUANT_SHIFT:
        raise ValueError(f"{op}: shift must be an int in [0, {MAX_REQUANT_SHIFT}], got {shift!r}")


def _output_range(op: str, out_dtype: Optional[torch.dtype], relu: bool) -> tuple[torch.dtype, int, int]:
    dtype = out_dtype if out_dtype is not None else (torch.uint8 if relu else torch.int8)
    if dtype not in CODE_DTYPES:
        raise ValueError(f"{op}: out_dtype must be uint8 or int8, got {dtype}")
    lo, hi = _DTYPE_RANGE[dtype]
    return dtype, (max(lo, 0) if relu else lo), hi


def _flat_pair(a: torch.Tensor, b: torch.Tensor):
    """Flat dense tensors in a's layout (channels_last kept), plus a function that rebuilds."""
    if a.dim() == 4 and not a.is_contiguous() and a.is_contiguous(memory_format=torch.channels_last):
        a_p, b_p = a.permute(0, 2, 3, 1).contiguous(), b.permute(0, 2, 3, 1).contiguous()
        return a_p.reshape(-1), b_p.reshape(-1), lambda o: o.view(a_p.shape).permute(0, 3, 1, 2)
    return a.contiguous().reshape(-1), b.contiguous().reshape(-1), lambda o: o.view(a.shape)


def _elementwise(op, a, b, kernel, constants, shift, relu, out_dtype, backend):
    a, b, device = _elementwise_operands(op, a, b)
    _check_constants(op, shift, **constants)
    if not isinstance(relu, bool):
        raise TypeError(f"{op}: relu must be a bool, got {type(relu).__name__}")
    dtype, lo, hi = _output_range(op, out_dtype, relu)
    name = resolve_backend(backend, device, op)
    fa, fb, rebuild = _flat_pair(a, b)
    values = [int(v) for v in constants.values()]
    if name == "triton":
        return rebuild(_triton_kernels().int_elementwise(op, fa, fb, values, int(shift), lo, hi, dtype))
    out = np.empty(fa.shape[0], _NUMPY_OUT[dtype])
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


def _pool_geometry(op, x, kernel_size, stride, padding, dilation, ceil_mode=False):
    x = _require_codes(x, "x", op, ndim=4)
    kh, kw = _pair(kernel_size, "kernel_size", op, 1)
    sh, sw = _pair(stride if stride is not None else (kh, kw), "stride", op, 1)
    ph, pw = _pair(padding, "padding", op, 0)
    dh, dw = _pair(dilation, "dilation", op, 1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{op}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel_size}")
    H, W = x.shape[2], x.shape[3]
    if H + 2 * ph < dh * (kh - 1) + 1 or W + 2 * pw < dw * (kw - 1) + 1:
        raise ValueError(f"{op}: input {H}x{W} is too small for kernel {kernel_size}")
    OH, OW = _pool_out_size(H, kh, sh, ph, dh, ceil_mode), _pool_out_size(W, kw, sw, pw, dw, ceil_mode)
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


def _pool_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output size (docs/numerics.md section 6)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad else out


def _pool(op, x, kernel_size, stride, padding, dilation, backend, ceil_mode=False):
    x, geo, (OH, OW) = _pool_geometry(op, x, kernel_size, stride, padding, dilation, ceil_mode)
    name = resolve_backend(backend, x.device, op)
    if name == "triton":
        return _triton_kernels().int_pool2d(x, list(geo) + ([1] if ceil_mode else []), op == "int_max_pool2d")
    B, C = x.shape[0], x.shape[1]
    out = np.empty((B, OH, OW, C), _NUMPY_OUT[x.dtype])
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
    x = _require_codes(x, "x", op, ndim=4)
    OH, OW = _pair(output_size, "output_size", op, 1)
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: input {x.shape[2]}x{x.shape[3]} has no positions to pool")
    name = resolve_backend(backend, x.device, op)
    if name == "triton":
        return _triton_kernels().int_adaptive_avg_pool2d(x, [OH, OW])
    out = np.empty((x.shape[0], OH, OW, x.shape[1]), _NUMPY_OUT[x.dtype])
    ref.int_adaptive_avg_pool2d_kernel(x.permute(0, 2, 3, 1).contiguous().numpy(), out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def int_lut(x: torch.Tensor, table: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """Look each code up in a 256-entry table: ``table[x + 128]`` for int8 codes, ``table[x]``
    for uint8 (docs/numerics.md section 5: SiLU, Sigmoid, GELU... on codes, exact by
    construction). `table` is uint8 or int8 ``[256]``; the output has its dtype and x's shape."""
    op = "int_lut"
    x = _require_codes(x, "x", op)
    table = _require_codes(table, "table", op)
    if table.shape != (256,):
        raise ValueError(f"{op}: table must have 256 entries (one per 8-bit code), got shape {tuple(table.shape)}")
    device = _same_device(op, x=x, table=table)
    offset = 128 if x.dtype == torch.int8 else 0
    name = resolve_backend(backend, device, op)
    flat = x.contiguous().reshape(-1)
    if name == "triton":
        return _triton_kernels().int_lut(flat, table.contiguous(), offset).view(x.shape)
    out = np.empty(flat.shape[0], _NUMPY_OUT[table.dtype])
    ref.int_lut_kernel(flat.numpy(), table.contiguous().numpy(), offset, out)
    return torch.from_numpy(out).view(x.shape)
