"""What the public ops of `dqt_triton.ops` share: input checks, the normalised epilogue plan, and
the handles of their backends.

Every op validates its inputs here and normalises them into one plan (`Epilogue`, per-row shift
tensors) before it hands the plan to a backend: the Numba kernels of `dqt_triton.reference` or
the Triton kernels of `dqt_triton.kernels` (`triton_kernels`). Error messages name the op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, TypedDict, Union

import numpy as np
import torch

from .errors import BackendUnavailableError
from .numerics import INT32_MAX, MAX_REQUANT_SHIFT, MAX_SHIFT
from .reference.common import EPILOGUE_FLOAT, EPILOGUE_RAW, EPILOGUE_REQUANT, WIDTH_TABLE_ROWS

ShiftArg = Union[int, torch.Tensor]
IntPair = Union[int, tuple[int, int]]

CODE_DTYPES = (torch.uint8, torch.int8)
CODE_RANGE = {torch.uint8: (0, 255), torch.int8: (-128, 127)}
NUMPY_OUT = {torch.int32: np.int32, torch.uint8: np.uint8, torch.int8: np.int8, torch.float32: np.float32}
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


class EpilogueOptions(TypedDict, total=False):
    """The epilogue keywords of `int_matmul`, `int_conv2d` and `prepare_layer` (docs/numerics.md
    section 3.5); each may be left out.

    bias: int32 ``[N]`` in master accumulator units, or a width table ``[8, N]``.
    multiplier, shift: requantization constants (int, ``[N]`` tensor or ``[8, N]`` width table).
    out_scale: dequantization scale (float, ``[N]`` float tensor or ``[8, N]`` width table).
    out_dtype: the output dtype (uint8/int8 requantized, float32 dequantized, int32 raw).
    relu: clamp the accumulator at zero before the epilogue (default False).
    clamp_max: requantizing epilogue only: the largest output code.
    """

    bias: Optional[torch.Tensor]
    multiplier: Union[int, torch.Tensor, None]
    shift: Union[int, torch.Tensor, None]
    out_scale: Union[float, torch.Tensor, None]
    out_dtype: Optional[torch.dtype]
    relu: bool
    clamp_max: Optional[int]


@dataclass
class Epilogue:
    """What happens to the master-unit accumulator v = (acc << (k_a + k_w)) + bias[n]
    (bias[k_w, n] for a width table).

    mode: EPILOGUE_RAW (int32 v), EPILOGUE_REQUANT (8-bit codes) or EPILOGUE_FLOAT
    (float32(v) * scale[n]), from `dqt_triton.reference`. Each constant is a contiguous tensor on
    the op's device, either [N] (shared by every width) or a width table [8, N] whose row
    k_w[m] serves row m.
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

    def bias_abs_max(self) -> int:
        """max |bias| over the whole table (every width), in int64 so that -2^31 counts as 2^31."""
        return int(self.bias.to(torch.int64).abs().max())


# ----------------------------------------------------------------------------- validation


def require_tensor(t: object, name: str, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def require_codes(t: object, name: str, op: str, dtypes=CODE_DTYPES, ndim: int | None = None) -> torch.Tensor:
    t = require_tensor(t, name, op)
    if t.dtype not in dtypes:
        allowed = " or ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype {allowed}, got {str(t.dtype).replace('torch.', '')}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def same_device(op: str, **tensors: Optional[torch.Tensor]) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{op}: all tensors must be on one device; {name} is on {dev}, not {first}")
    return first


def is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def per_row_shift(value: ShiftArg, rows: int, name: str, op: str, device: torch.device) -> torch.Tensor:
    """int32 [rows] shift amounts from a per-layer int or a per-sample tensor, range-checked."""
    if is_int(value):
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


def pair(value: IntPair, name: str, op: str, minimum: int) -> tuple[int, int]:
    both = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else None
    if both is None or len(both) != 2 or not all(is_int(v) for v in both):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if min(both) < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(both[0]), int(both[1])


def code_output(op: str, out_dtype: Optional[torch.dtype], relu: bool) -> tuple[torch.dtype, int, int]:
    """(dtype, lo, hi) of 8-bit output codes: uint8 by default with ReLU, else int8; with ReLU
    the lower bound is 0."""
    dtype = out_dtype if out_dtype is not None else (torch.uint8 if relu else torch.int8)
    if dtype not in CODE_DTYPES:
        raise ValueError(f"{op}: out_dtype must be uint8 or int8 (8-bit codes), got {dtype}")
    lo, hi = CODE_RANGE[dtype]
    return dtype, (max(lo, 0) if relu else lo), hi


def check_relu(op: str, relu: object) -> None:
    if not isinstance(relu, bool):
        raise TypeError(f"{op}: relu must be a bool, got {type(relu).__name__}")


# ----------------------------------------------------------------------------- epilogue


def epilogue_options(op: str, options: dict) -> EpilogueOptions:
    """The epilogue keywords a layer op got, refusing unknown ones as a Python signature would."""
    for name in options:
        if name not in EpilogueOptions.__annotations__:
            raise TypeError(f"{op}() got an unexpected keyword argument {name!r}")
    return options


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
    if integer and is_int(value):
        return torch.full((n,), int(value), dtype=torch.int64, device=device)
    if not integer and isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.full((n,), float(value), dtype=dtype, device=device)
    kind = "an int" if integer else "a float"
    raise TypeError(f"{op}: {name} must be {kind} or a tensor, got {type(value).__name__}")


def _check_scalar_range(value: object, lo: int, hi: int, name: str, op: str, what: str) -> None:
    # Python ints are unbounded: check before they become int64 tensors (which would overflow).
    if is_int(value) and not lo <= int(value) <= hi:
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}] ({what}), got {int(value)}")


def _check_range(t: torch.Tensor, lo: int, hi: int, name: str, op: str, what: str) -> None:
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{op}: {name} must lie in [{lo}, {hi}] ({what}), got min {int(t.min())} max {int(t.max())}")


def build_epilogue(op: str, n: int, device: torch.device, options: EpilogueOptions) -> Epilogue:
    """The checked `Epilogue` of a layer with `n` output channels from its epilogue keywords."""
    bias, multiplier, shift = options.get("bias"), options.get("multiplier"), options.get("shift")
    out_scale, out_dtype = options.get("out_scale"), options.get("out_dtype")
    relu, clamp_max = options.get("relu", False), options.get("clamp_max")
    check_relu(op, relu)
    if clamp_max is not None and (multiplier is None or not is_int(clamp_max)):
        raise ValueError(f"{op}: clamp_max (an int code) applies to the requantizing epilogue only, got "
                         f"{clamp_max!r}" + ("" if multiplier is not None else " without multiplier/shift"))
    if bias is None:
        bias_t = torch.zeros(n, dtype=torch.int32, device=device)
    else:
        bias_t = require_tensor(bias, "bias", op)
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
        dtype, lo, hi = code_output(op, out_dtype, relu)
        _check_scalar_range(multiplier, -INT32_MAX, INT32_MAX, "multiplier", op, "int32 with |M| <= 2^31 - 1")
        _check_scalar_range(shift, 0, MAX_REQUANT_SHIFT, "shift", op, "requantization right shift")
        mult = _per_channel(multiplier, n, "multiplier", op, device, torch.int64, integer=True)
        _check_range(mult, -INT32_MAX, INT32_MAX, "multiplier", op, "int32 with |M| <= 2^31 - 1")
        rshift = _per_channel(shift, n, "shift", op, device, torch.int64, integer=True)
        _check_range(rshift, 0, MAX_REQUANT_SHIFT, "shift", op, "requantization right shift")
        if clamp_max is not None:
            if not lo <= clamp_max <= hi:
                raise ValueError(f"{op}: clamp_max must lie in [{lo}, {hi}] (the output codes' range), got {clamp_max}")
            hi = int(clamp_max)
        return Epilogue(EPILOGUE_REQUANT, dtype, bias_t, mult.to(torch.int32), rshift.to(torch.int32),
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
        return Epilogue(EPILOGUE_FLOAT, torch.float32, bias_t, zeros_i, zeros_i, scale, relu, 0, 0)
    if out_dtype not in (None, torch.int32):
        raise ValueError(
            f"{op}: out_dtype={out_dtype} needs an epilogue: pass multiplier and shift to requantize "
            "(uint8/int8) or out_scale to dequantize (float32); the raw epilogue returns int32"
        )
    return Epilogue(EPILOGUE_RAW, torch.int32, bias_t, zeros_i, zeros_i,
                    torch.zeros(n, dtype=torch.float32, device=device), relu, 0, 0)


# ----------------------------------------------------------------------------- backends


def triton_kernels():
    """The `dqt_triton.kernels` package, or BackendUnavailableError saying why it is unusable."""
    try:
        from . import kernels
    except ImportError as exc:  # triton missing or broken
        raise BackendUnavailableError(f"backend 'triton' cannot be imported: {exc}") from exc
    if not kernels.AVAILABLE:
        raise BackendUnavailableError(f"backend 'triton' needs the triton package: {kernels.IMPORT_ERROR}")
    return kernels
