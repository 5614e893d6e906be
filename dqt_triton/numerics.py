"""Float-side helpers of the integer contract (docs/numerics.md).

Master codes, nested lower-width codes, and the conversion of float scale ratios into the
integer constants (dyadic multipliers and shifts) that the kernels consume. Everything that
runs per element here is plain torch, so it works on any device and inside autograd.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import AccumulatorOverflowError
from .reference.common import (  # noqa: F401  (defined once)
    INT32_MAX,
    LN_MAX_CHANNELS,
    LN_NORM_BITS,
    MASTER_BITS,
    MAX_SHIFT,
    SOFTMAX_ONE,
    SOFTMAX_OUT,
    WIDTH_TABLE_ROWS,
)

MAX_REQUANT_SHIFT = 62
# Bounds that keep k1*q1 + k2*q2 + k3 (and the multiply form) inside int64 with rounding added.
MAX_OFFSET_ABS = 2**47
SHIFT_RULES = ("floor", "round")


def code_range(bits: int = MASTER_BITS, signed: bool = True) -> tuple[int, int]:
    """Inclusive [lo, hi] of b-bit codes: signed two's complement or unsigned from zero."""
    if not 1 <= bits <= MASTER_BITS:
        raise ValueError(f"bits must be in [1, {MASTER_BITS}], got {bits}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def check_shift_rule(rule: str) -> bool:
    """Validate a shift rule name; returns True for the rounding rule."""
    if rule not in SHIFT_RULES:
        raise ValueError(f"shift_rule must be one of {SHIFT_RULES}, got {rule!r}")
    return rule == "round"


def quantize(x: torch.Tensor, scale: torch.Tensor | float, signed: bool) -> torch.Tensor:
    """Master (8-bit) codes clamp(round_half_even(x / scale), lo, hi) as int16 (fits both ranges)."""
    lo, hi = code_range(MASTER_BITS, signed)
    return torch.clamp(torch.round(x / scale), lo, hi).to(torch.int16)


def nested_shift(
    q: torch.Tensor, shift: int | torch.Tensor, signed: bool, rule: str = "floor"
) -> torch.Tensor:
    """b-bit codes from master codes `q` with shift k = 8 - b (scalar or broadcastable tensor).

    floor: q >> k. round: min((q + 2^(k-1)) >> k, hi_b) for k > 0. Result dtype int16.
    """
    round_rule = check_shift_rule(rule)
    q = q.to(torch.int16)
    k = torch.as_tensor(shift, dtype=torch.int16, device=q.device)
    if not round_rule:
        return q >> k
    hi = code_range(MASTER_BITS, signed)[1]
    half = torch.where(k > 0, torch.ones_like(k) << (k - 1).clamp_min(0), torch.zeros_like(k))
    return torch.minimum((q + half) >> k, hi >> k)


def shifted_weight_table(w: torch.Tensor, rule: str = "floor") -> tuple[torch.Tensor, torch.Tensor]:
    """Weight codes at every shift: (int8 ``[8, *w.shape]``, int32 ``[8, N]`` sums over the rest).

    Row k holds `nested_shift(w, k)`; each row keeps w's memory format (channels_last conv
    weights stay channels_last). The Triton kernels read a frozen layer's weights from this
    table instead of shifting them in their K loop; the sums undo their uint8 offset.
    """
    rows = WIDTH_TABLE_ROWS
    if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
        cout, cin, kh, kw = w.shape
        table = torch.empty((rows, cout, kh, kw, cin), dtype=torch.int8, device=w.device).permute(0, 1, 4, 2, 3)
    else:
        table = torch.empty((rows, *w.shape), dtype=torch.int8, device=w.device)
    for k in range(rows):
        table[k].copy_(nested_shift(w, k, signed=True, rule=rule))
    return table, table.sum(dim=tuple(range(2, table.dim())), dtype=torch.int32)


def accumulator_bound(reduction_size: int, x_signed: bool, bias_abs_max: int = 0) -> int:
    """Worst-case |acc| in master units: K * max|x| * max|w| + max|bias|."""
    x_abs_max = 128 if x_signed else 255
    return reduction_size * x_abs_max * 128 + int(bias_abs_max)


def check_accumulator(
    reduction_size: int, x_signed: bool, bias_abs_max: int = 0, where: str = "layer"
) -> None:
    """Refuse a layer whose int32 accumulator could overflow at any width (docs/numerics.md 4.3)."""
    bound = accumulator_bound(reduction_size, x_signed, bias_abs_max)
    if bound > INT32_MAX:
        kind = "int8" if x_signed else "uint8"
        raise AccumulatorOverflowError(
            f"{where}: accumulator overflow risk: reduction size K={reduction_size} with {kind} "
            f"activations and int8 weights gives a worst case of {bound} (bias max "
            f"{int(bias_abs_max)}), beyond int32 ({INT32_MAX}); split the reduction or shrink the bias"
        )


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Dyadic (M, S) with M * 2^-S ~= real, |M| in [2^30, 2^31), S in [0, 62].

    |M * 2^-S - real| <= 2^-(S+1), so the relative error is at most 2^-31. Ratios below 2^-32
    in magnitude get S = 62 and a smaller |M| (absolute error still <= 2^-63). real = 0 gives
    (0, 1). A negative ratio (batch norm with a negative gamma folded in) gives a negative M.
    """
    if not math.isfinite(real):
        raise ValueError(f"requantization ratio must be finite, got {real}")
    if real < 0:
        multiplier, shift = quantize_multiplier(-real)
        return -multiplier, shift
    if real == 0.0:
        return 0, 1
    mantissa, exponent = math.frexp(real)  # real = mantissa * 2^exponent, mantissa in [0.5, 1)
    multiplier = round(mantissa * (1 << 31))
    if multiplier == 1 << 31:
        multiplier //= 2
        exponent += 1
    shift = 31 - exponent
    if shift < 0:
        raise ValueError(f"requantization ratio {real} is too large (>= 2^31) for a dyadic multiplier")
    if shift > MAX_REQUANT_SHIFT:
        multiplier = round(real * 2.0**MAX_REQUANT_SHIFT)
        shift = MAX_REQUANT_SHIFT
    return int(multiplier), int(shift)


def requant_constants(
    input_scale: float, weight_scale: torch.Tensor, output_scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel (multiplier int32, shift int32) for D_x * D_w[n] / D_y."""
    ratios = (torch.as_tensor(weight_scale, dtype=torch.float64) * input_scale / output_scale).flatten()
    pairs = [quantize_multiplier(float(r)) for r in ratios.tolist()]
    multiplier = torch.tensor([p[0] for p in pairs], dtype=torch.int32)
    shift = torch.tensor([p[1] for p in pairs], dtype=torch.int32)
    return multiplier, shift


@dataclass(frozen=True)
class ElementwiseConstants:
    """Integer constants of y = round_shift(k1*q1 + k2*q2 + k3, shift) (add) or of
    y = round_shift(k1*q1*q2 + k2*q1 + k3*q2 + k4, shift) (multiply)."""

    k1: int
    k2: int
    k3: int
    k4: int
    shift: int


def _common_shift(ratios: list[float]) -> int:
    """Largest shift keeping every round(r * 2^S) below 2^30 (S <= 62)."""
    largest = max(abs(r) for r in ratios)
    if not math.isfinite(largest):
        raise ValueError(f"scale ratios must be finite, got {ratios}")
    if largest == 0.0:
        return 0
    exponent = math.frexp(largest)[1]  # largest < 2^exponent
    shift = min(MAX_REQUANT_SHIFT, 30 - exponent)
    if shift < 0:
        raise ValueError(f"scale ratio {largest} is too large (>= 2^30) for int32 constants")
    return shift


def add_constants(scale_a: float, scale_b: float, scale_out: float) -> ElementwiseConstants:
    """Constants of the integer residual add y = a + b for symmetric codes (k3 = 0).

    k_i = round(D_i / D_y * 2^S); each ratio is represented within 2^-(S+1).
    """
    ratios = [scale_a / scale_out, scale_b / scale_out]
    shift = _common_shift(ratios)
    k1, k2 = (round(r * 2.0**shift) for r in ratios)
    return ElementwiseConstants(int(k1), int(k2), 0, 0, shift)


def rescale_constants(scale_in: float, scale_out: float) -> ElementwiseConstants:
    """Constants that move codes of step `scale_in` to step `scale_out`: the add's form with
    one operand, y = round_shift(k1*q, S) (k2 = k3 = 0); equal steps give k1 = 2^S, the identity."""
    shift = _common_shift([scale_in / scale_out])
    return ElementwiseConstants(int(round(scale_in / scale_out * 2.0**shift)), 0, 0, 0, shift)


def mul_constants(scale_a: float, scale_b: float, scale_out: float) -> ElementwiseConstants:
    """Constants of the integer product y = a * b for symmetric codes (k2 = k3 = k4 = 0)."""
    ratio = scale_a * scale_b / scale_out
    shift = _common_shift([ratio])
    return ElementwiseConstants(int(round(ratio * 2.0**shift)), 0, 0, 0, shift)


#: Element-wise functions a lookup table can carry, on real values (float64 tensors).
LUT_FUNCTIONS = {
    "silu": torch.nn.functional.silu,
    "sigmoid": torch.sigmoid,
    "hardswish": torch.nn.functional.hardswish,
    "hardsigmoid": torch.nn.functional.hardsigmoid,
    "gelu": lambda v: torch.nn.functional.gelu(v),
    "gelu_tanh": lambda v: torch.nn.functional.gelu(v, approximate="tanh"),
    "tanh": torch.tanh,
}


def lut_table(function: str, in_scale: float, in_signed: bool, out_scale: float, out_signed: bool) -> torch.Tensor:
    """The 256-entry code table of y = f(x): entry i is the output code of input code
    i - 128 (int8 input) or i (uint8), clamp(floor(f(code * in_scale) / out_scale + 1/2), lo, hi),
    computed in float64 on the CPU (docs/numerics.md section 5)."""
    if function not in LUT_FUNCTIONS:
        raise ValueError(f"no lookup table for {function!r}; known: {sorted(LUT_FUNCTIONS)}")
    for name, step in (("in_scale", in_scale), ("out_scale", out_scale)):
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"lut_table: {name} must be finite and positive, got {step}")
    lo_in = -128 if in_signed else 0
    codes = torch.arange(lo_in, lo_in + 256, dtype=torch.float64)
    real = LUT_FUNCTIONS[function](codes * in_scale)
    lo, hi = code_range(MASTER_BITS, out_signed)
    out = torch.floor(real / out_scale + 0.5).clamp(lo, hi)
    return out.to(torch.int8 if out_signed else torch.uint8)


# The real value of one softmax output code (docs/numerics.md 10.2), 1/255 rounded to float32 as every
# step is: the training path holds it in a float32 tensor, and the program must use the same value.
SOFTMAX_STEP = float(torch.tensor(1.0 / SOFTMAX_OUT, dtype=torch.float32))
LN_MAX_SHIFT = 50
LN_MAX_EPS_UNITS = 2**61


def softmax_table(in_scale: float) -> torch.Tensor:
    """The softmax exp table of score codes with step `in_scale` (docs/numerics.md 10.2):
    E[d] = floor(2^15 exp(-d * in_scale) + 1/2), d = 0..255, int32, in float64 on the CPU."""
    if not (math.isfinite(in_scale) and in_scale > 0):
        raise ValueError(f"softmax_table: in_scale must be finite and positive, got {in_scale}")
    d = torch.arange(256, dtype=torch.float64)
    return torch.floor(SOFTMAX_ONE * torch.exp(-d * float(in_scale)) + 0.5).to(torch.int32)


@dataclass(frozen=True)
class LayerNormConstants:
    """Integer constants of a LayerNorm (docs/numerics.md 10.3)."""

    mult: torch.Tensor  # A [C] int32
    offset: torch.Tensor  # B [C] int64
    shift: int  # S
    eps_units: int  # E_ps


def layernorm_constants(gamma: torch.Tensor | None, beta: torch.Tensor | None, channels: int, in_scale: float,
                        out_scale: float, eps: float) -> LayerNormConstants:
    """A[c] = round(gamma_c / D_y 2^S), B[c] = round(beta_c / D_y 2^(S+12)), S = min(50, 30 - e)
    with max|gamma| / D_y < 2^e, E_ps = round(eps C^2 2^16 / D_x^2) capped at 2^61 (ties to even,
    float64 on the CPU). gamma / beta None: torch's defaults (1, 0)."""
    for name, step in (("in_scale", in_scale), ("out_scale", out_scale)):
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"layernorm_constants: {name} must be finite and positive, got {step}")
    g = torch.ones(channels, dtype=torch.float64) if gamma is None else gamma.detach().double().cpu().reshape(-1)
    b = torch.zeros(channels, dtype=torch.float64) if beta is None else beta.detach().double().cpu().reshape(-1)
    if g.numel() != channels or b.numel() != channels:
        raise ValueError(f"layernorm_constants: gamma and beta need {channels} entries")
    if not bool(torch.isfinite(g).all() and torch.isfinite(b).all()):
        raise ValueError("layernorm_constants: gamma or beta is not finite (training diverged?)")
    ratio = g / out_scale
    largest = float(ratio.abs().max())
    shift = LN_MAX_SHIFT if largest == 0.0 else min(LN_MAX_SHIFT, 30 - math.frexp(largest)[1])
    if shift < 0:
        raise ValueError(f"layernorm_constants: gamma / out_scale = {largest:g} is too large (>= 2^30)")
    mult = torch.round(ratio * 2.0**shift)
    offset = torch.round(b / out_scale * 2.0**(shift + LN_NORM_BITS))
    if float(offset.abs().max()) > MAX_OFFSET_ABS:
        raise ValueError(f"layernorm_constants: beta / out_scale = {float((b / out_scale).abs().max()):g} is too large "
                         f"for the int64 offset (|B| <= 2^47)")
    eps_units = min(LN_MAX_EPS_UNITS, round(eps * channels * channels * 2.0**16 / in_scale**2))
    return LayerNormConstants(mult.to(torch.int32), offset.to(torch.int64), int(shift), int(eps_units))
