"""Integer matmul and conv2d (docs/numerics.md section 3), called directly or as prepared layers.

`int_matmul` and `int_conv2d` validate everything on every call; `prepare_layer` validates a
layer once and `run_prepared` then runs it without reading a tensor value on the host. All four
share one layer check (`_layer_epilogue`: the epilogue keywords, `EpilogueOptions`, and the
accumulator rule) and one conv geometry check, and run on the backend `dqt_triton.dispatch`
picks: the Numba reference, the CPU path around an exact float32 GEMM, or the Triton kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch

from . import reference as ref
from . import weight_cache
from .dispatch import resolve_backend
from .numerics import MAX_SHIFT, SHIFT_RULES, check_accumulator, check_shift_rule, shifted_weight_table
from .ops_common import (
    CODE_DTYPES, NUMPY_OUT, Epilogue, EpilogueOptions, IntPair, ShiftArg, build_epilogue, epilogue_options, is_int,
    pair, per_row_shift, require_codes, require_tensor, same_device, triton_kernels,
)
from .reference.common import output_size

if TYPE_CHECKING:
    from typing_extensions import Unpack

Geometry = tuple[int, int, int, int, int, int, int]  # conv2d: (sh, sw, ph, pw, dh, dw, groups)


# ----------------------------------------------------------------------------- shared checks


def _layer_epilogue(op: str, n: int, reduction: int, x_dtype: torch.dtype, device: torch.device,
                    options: EpilogueOptions) -> Epilogue:
    """The checked epilogue of a layer with `n` output channels, refused (AccumulatorOverflowError)
    unless its `reduction` length, activation dtype and bias fit the int32 accumulator (section 3.4)."""
    ep = build_epilogue(op, n, device, options)
    check_accumulator(reduction, x_dtype == torch.int8, ep.bias_abs_max(), op)
    return ep


def _conv_geometry(op: str, w: torch.Tensor, stride: IntPair, padding: IntPair, dilation: IntPair, groups: int,
                   in_channels: Optional[int] = None) -> Geometry:
    """(sh, sw, ph, pw, dh, dw, groups) of a conv2d layer with weights [Cout, C/groups, KH, KW],
    checked; against the input's channels too when `in_channels` is given."""
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
    Cout, Cg, KH, KW = w.shape
    if in_channels is not None:
        C = in_channels
        if C % groups or Cout % groups:
            raise ValueError(f"{op}: in channels ({C}) and out channels ({Cout}) must be divisible by groups "
                             f"({groups})")
        if Cg != C // groups:
            raise ValueError(f"{op}: w has {Cg} input channels per group but x has {C} channels / {groups} groups = "
                             f"{C // groups}")
    elif Cout % groups:
        raise ValueError(f"{op}: out channels ({Cout}) must be divisible by groups ({groups})")
    if Cg == 0 or KH == 0 or KW == 0 or Cout == 0:
        raise ValueError(f"{op}: empty weight shape {tuple(w.shape)}")
    sh, sw = pair(stride, "stride", op, 1)
    ph, pw = pair(padding, "padding", op, 0)
    dh, dw = pair(dilation, "dilation", op, 1)
    return sh, sw, ph, pw, dh, dw, int(groups)


def _conv_output_hw(op: str, x: torch.Tensor, w: torch.Tensor, geometry: Geometry) -> tuple[int, int]:
    """(OH, OW) of the conv2d of x [B, C, H, W] with w [Cout, C/g, KH, KW]; an empty output is refused."""
    sh, sw, ph, pw, dh, dw, _ = geometry
    (H, W), (KH, KW) = x.shape[2:], w.shape[2:]
    OH, OW = output_size(H, KH, sh, ph, dh), output_size(W, KW, sw, pw, dw)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: input {H}x{W} is too small for kernel {KH}x{KW} with padding {(ph, pw)}, "
                         f"dilation {(dh, dw)}")
    return OH, OW


# ----------------------------------------------------------------------------- backends


def _np_table(t: torch.Tensor, dtype) -> np.ndarray:
    """An [N] constant as a one-row [1, N] table, a width table [8, N] as it is: the Numba
    kernels always take 2-D tables and pick row k_w when there are 8 rows, else row 0."""
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


def _np_shifts(a_shift: torch.Tensor, w_shift: torch.Tensor) -> tuple:
    """Per-row activation shifts, and weight shifts as (slot per row, distinct shifts)."""
    distinct, slot = np.unique(w_shift.numpy().astype(np.int64), return_inverse=True)
    return a_shift.numpy().astype(np.int64), slot.astype(np.int64), distinct


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


def _triton_epilogue_args(ep: Epilogue) -> tuple:
    return (ep.bias, ep.multiplier, ep.shift, ep.scale)


# ----------------------------------------------------------------------------- matmul and conv2d


def int_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    *,
    act_shift: ShiftArg = 0,
    weight_shift: ShiftArg = 0,
    shift_rule: str = "floor",
    backend: Optional[str] = None,
    cache_weight: bool = False,
    **epilogue: Unpack[EpilogueOptions],
) -> torch.Tensor:
    """Integer matmul ``out[m, n] = epilogue(sum_k s(x[m, k], k_a[m]) * s(w[n, k], k_w[m]))``.

    Args:
        x: activation codes ``[M, K]``, uint8 (after ReLU) or int8.
        w: weight codes ``[N, K]``, int8 (K-contiguous, like ``nn.Linear.weight``).
        act_shift: activation shift k_a = 8 - bits, an int (per layer) or an integer tensor
            ``[M]`` (per sample); values in [0, 7].
        weight_shift: weight shift k_w, an int or an integer tensor ``[M]``; values in [0, 7].
        shift_rule: "floor" (the paper's truncating shift) or "round".
        backend: "reference", "cpu", "triton" or "auto" (default: see ``use_backend``).
        cache_weight: CPU path: keep the shifted float32 copies of ``w`` between calls (see
            `dqt_triton.weight_cache`; only for weights changed by torch ops, if at all).

    Epilogue keywords (`EpilogueOptions`; each may be left out):
        bias: int32 ``[N]`` in master accumulator units (scale D_x * D_w[n]), or a width table
            ``[8, N]``: row m adds ``bias[k_w[m], n]``.
        multiplier, shift: requantization constants (int, ``[N]`` tensor or ``[8, N]`` width
            table); the output is ``clamp(round_shift(v * multiplier, shift))`` as ``out_dtype``
            (uint8 default with ``relu``, else int8).
        out_scale: float, ``[N]`` float tensor or ``[8, N]`` width table; the output is float32
            ``float32(v) * scale``.

        Width tables hold one set of constants per weight shift (a batch norm per bit-width
        folded into its own constants): row m uses table row ``k_w[m]``, with a per-layer or a
        per-sample ``weight_shift``. Scalars and ``[N]`` tensors are shared by every width, and
        the two forms mix freely (e.g. a bias table with one ``[N]`` multiplier).
        out_dtype: output dtype check; int32 for the raw epilogue.
        relu: clamp the accumulator at zero before the epilogue (default False).
        clamp_max: requantizing epilogue only: the largest output code (ReLU6 / Hardtanh's
            upper bound as a code); default the output dtype's maximum.

    Returns:
        ``[M, N]`` tensor: int32 master-unit accumulator (raw), 8-bit codes, or float32.
    """
    op = "int_matmul"
    options = epilogue_options(op, epilogue)
    x = require_codes(x, "x", op, ndim=2)
    w = require_codes(w, "w", op, dtypes=(torch.int8,), ndim=2)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: x is [M, K]=[{x.shape[0]}, {x.shape[1]}] but w is [N, K]={list(w.shape)}: K differs")
    if x.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError(f"{op}: K and N must be >= 1, got x {tuple(x.shape)}, w {tuple(w.shape)}")
    device = same_device(op, x=x, w=w, bias=options.get("bias"))
    round_rule = check_shift_rule(shift_rule)
    M, K = x.shape
    a_shift = per_row_shift(act_shift, M, "act_shift", op, device)
    w_shift = per_row_shift(weight_shift, M, "weight_shift", op, device)
    ep = _layer_epilogue(op, w.shape[0], K, x.dtype, device, options)
    return _matmul_dispatch(x, w, a_shift, w_shift, is_int(weight_shift), ep, round_rule,
                            resolve_backend(backend, device, op), cache_weight)


def _matmul_dispatch(x, w, a_shift, w_shift, per_layer_w_shift: bool, ep: Epilogue, round_rule: int, name: str,
                     cache_weight: bool, shifted: Optional[tuple] = None) -> torch.Tensor:
    """Run a validated matmul on backend `name`; a_shift, w_shift are int32 [M] on x's device.
    `shifted` (Triton only): w's pre-shifted (table, column sums), which the kernel reads instead of w."""
    if name == "triton":
        # A per-layer shift goes to the kernels as one entry, so they skip bucketing rows by shift.
        w_arg, colsum = shifted if shifted is not None else (w, None)
        return triton_kernels().int_matmul(
            x, w_arg, a_shift, w_shift[:1].contiguous() if per_layer_w_shift else w_shift, *_triton_epilogue_args(ep),
            bool(round_rule), ep.mode, ep.relu, ep.lo, ep.hi, ep.out_dtype, colsum,
        )
    act_np, slot_np, distinct = _np_shifts(a_shift, w_shift)
    tables = None if name == "reference" else \
        (lambda shifts: _cpu_weight_tables(w, w, shifts, round_rule, cache_weight))
    return _matmul_host(x, w, act_np, slot_np, distinct, _np_epilogue(ep), ep.out_dtype, round_rule, tables)


def _matmul_host(x, w, act_np, slot_np, distinct, np_ep: tuple, out_dtype, round_rule: int, tables) -> torch.Tensor:
    """A matmul on the host: the Numba reference when `tables` is None, else the CPU path with
    `tables(distinct)` (its weight tables at those shifts); shifts as numpy (`_np_shifts`)."""
    M, N = x.shape[0], w.shape[0]
    out = np.empty((M, N), NUMPY_OUT[out_dtype])
    if M == 0:
        return torch.from_numpy(out)
    x_hi = 127 if x.dtype == torch.int8 else 255
    if tables is None:
        weights, kernel = w.contiguous().numpy(), ref.int_matmul_kernel
    else:
        weights, kernel = tables(distinct), ref.int_matmul_blas
    kernel(x.contiguous().numpy(), weights, act_np, slot_np, distinct, round_rule, x_hi, *np_ep, out)
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
    shift_rule: str = "floor",
    backend: Optional[str] = None,
    cache_weight: bool = False,
    **epilogue: Unpack[EpilogueOptions],
) -> torch.Tensor:
    """Integer 2-D convolution with the same shifts and epilogues as :func:`int_matmul`.

    Args:
        x: activation codes ``[B, C, H, W]`` (any memory format; channels_last is fastest).
        w: weight codes ``[Cout, C / groups, KH, KW]`` int8, like ``nn.Conv2d.weight``.
        stride, padding, dilation, groups: as in ``torch.nn.functional.conv2d``; padding
            contributes code 0.
        act_shift, weight_shift: int, or integer tensor ``[B]`` for per-sample shifts.
        Other arguments and the epilogue keywords: see :func:`int_matmul`; per-channel tensors
            have Cout entries, width tables are ``[8, Cout]`` and image b uses row ``k_w[b]``
            for all its pixels.

    Returns:
        ``[B, Cout, OH, OW]`` tensor in channels_last memory format.
    """
    op = "int_conv2d"
    options = epilogue_options(op, epilogue)
    x = require_codes(x, "x", op, ndim=4)
    w = require_codes(w, "w", op, dtypes=(torch.int8,), ndim=4)
    device = same_device(op, x=x, w=w, bias=options.get("bias"))
    geometry = _conv_geometry(op, w, stride, padding, dilation, groups, in_channels=x.shape[1])
    out_hw = _conv_output_hw(op, x, w, geometry)
    round_rule = check_shift_rule(shift_rule)
    B = x.shape[0]
    Cout, Cg, KH, KW = w.shape
    a_shift = per_row_shift(act_shift, B, "act_shift", op, device)
    w_shift = per_row_shift(weight_shift, B, "weight_shift", op, device)
    ep = _layer_epilogue(op, Cout, Cg * KH * KW, x.dtype, device, options)
    return _conv_dispatch(x, w, geometry, out_hw, a_shift, w_shift, is_int(weight_shift), ep, round_rule,
                          resolve_backend(backend, device, op), cache_weight)


def _conv_dispatch(x, w, geometry: Geometry, out_hw: tuple, a_shift, w_shift, per_layer_w_shift: bool,
                   ep: Epilogue, round_rule: int, name: str, cache_weight: bool,
                   shifted: Optional[tuple] = None) -> torch.Tensor:
    """Run a validated conv2d on backend `name`; a_shift, w_shift are int32 [B] on x's device;
    `shifted` as in `_matmul_dispatch`."""
    if name == "triton":
        # Weights as [Cout, KH, KW, C/g] in memory: the kernel's channel loads are contiguous.
        w_arg, colsum = shifted if shifted is not None else (w.contiguous(memory_format=torch.channels_last), None)
        return triton_kernels().int_conv2d(
            x, w_arg, list(geometry), a_shift, w_shift[:1].contiguous() if per_layer_w_shift else w_shift,
            *_triton_epilogue_args(ep), bool(round_rule), ep.mode, ep.relu, ep.lo, ep.hi, ep.out_dtype, colsum,
        )
    act_np, slot_np, distinct = _np_shifts(a_shift, w_shift)
    tables = None if name == "reference" else \
        (lambda shifts: _cpu_weight_tables(_nhwc_rows(w), w, shifts, round_rule, cache_weight))
    return _conv_host(x, w, geometry, out_hw, act_np, slot_np, distinct, _np_epilogue(ep), ep.out_dtype, round_rule,
                      tables)


def _nhwc_rows(w: torch.Tensor) -> torch.Tensor:
    """Conv weights [Cout, C/g, KH, KW] as the CPU path's [Cout, KH*KW*C/g] rows."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1)


def _conv_host(x, w, geometry: Geometry, out_hw: tuple, act_np, slot_np, distinct, np_ep: tuple, out_dtype,
               round_rule: int, tables) -> torch.Tensor:
    """A conv2d on the host, as `_matmul_host`; the result is [B, Cout, OH, OW] channels_last."""
    B, Cout = x.shape[0], w.shape[0]
    OH, OW = out_hw
    out = np.empty((B * OH * OW, Cout), NUMPY_OUT[out_dtype])
    if B > 0:
        x_nhwc = x.permute(0, 2, 3, 1).contiguous().numpy()
        x_hi = 127 if x.dtype == torch.int8 else 255
        w_nhwc = w.permute(0, 2, 3, 1)
        if tables is None:
            ref.int_conv2d_kernel(x_nhwc, w_nhwc.contiguous().numpy(), *geometry, act_np, slot_np, distinct,
                                  round_rule, x_hi, *np_ep, out)
        else:
            ref.int_conv2d_blas(x_nhwc, tuple(w_nhwc.shape), tables(distinct), *geometry, act_np, slot_np, distinct,
                                round_rule, x_hi, *np_ep, out)
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
    geometry: Optional[Geometry]  # conv2d: (sh, sw, ph, pw, dh, dw, groups); None for matmul
    # Triton path: the weights at every shift with their column sums, built on first use on
    # the layer's device (8x the int8 weight bytes), so the kernels' K loop skips the shift.
    _shifted: dict = field(default_factory=dict, compare=False, repr=False)
    # CPU path: the numpy epilogue tables and the weight tables per shift, built on first use.
    _host: dict = field(default_factory=dict, compare=False, repr=False)

    def host_epilogue(self) -> tuple:
        """The epilogue constants as the Numba kernels take them (`_np_epilogue`), cached."""
        if "epilogue" not in self._host:
            self._host["epilogue"] = _np_epilogue(self.epilogue)
        return self._host["epilogue"]

    def host_weight_tables(self, shifts: np.ndarray) -> list:
        """The CPU path's weight table (`reference.blas.weight_table`) at each shift, cached
        per shift for the layer's life: a prepared layer's weights do not change."""
        tables = []
        for k in shifts:
            key = ("table", int(k))
            if key not in self._host:
                rows = self.weight if self.geometry is None else _nhwc_rows(self.weight)
                self._host[key] = ref.weight_table(rows.contiguous().numpy(), int(k), self.round_rule)
            tables.append(self._host[key])
        return tables

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
    shift_rule: str = "floor",
    **epilogue: Unpack[EpilogueOptions],
) -> PreparedLayer:
    """Validate a layer once and place it on `device` (default: w's).

    Arguments as in `int_matmul` (``conv=None``) or `int_conv2d` (``conv`` a dict with stride,
    padding, dilation and groups); ``x_dtype`` is the dtype of the activations it will get.
    """
    op = "prepare_layer"
    options = epilogue_options(op, epilogue)
    device = torch.device(device) if device is not None else require_tensor(w, "w", op).device
    if x_dtype not in CODE_DTYPES:
        raise TypeError(f"{op}: x_dtype must be uint8 or int8, got {x_dtype}")
    w = require_codes(w, "w", op, dtypes=(torch.int8,), ndim=2 if conv is None else 4).to(device)
    if options.get("bias") is not None:
        require_tensor(options["bias"], "bias", op)
    options = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in options.items()}
    round_rule = check_shift_rule(shift_rule)
    if conv is None:
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise ValueError(f"{op}: K and N must be >= 1, got w {tuple(w.shape)}")
        ep = _layer_epilogue(op, w.shape[0], w.shape[1], x_dtype, device, options)
        return PreparedLayer(w.contiguous(), ep, x_dtype, round_rule, None)
    geometry = _conv_geometry(op, w, conv.get("stride", 1), conv.get("padding", 0), conv.get("dilation", 1),
                              conv.get("groups", 1))
    Cout, Cg, KH, KW = w.shape
    ep = _layer_epilogue(op, Cout, Cg * KH * KW, x_dtype, device, options)
    return PreparedLayer(w.contiguous(memory_format=torch.channels_last), ep, x_dtype, round_rule, geometry)


def _trusted_shift(value: ShiftArg, rows: int, name: str, op: str, device: torch.device) -> torch.Tensor:
    """int32 [rows] shifts without reading tensor values: ints are range-checked on the host,
    tensors only for shape (they come from the program, in range by construction)."""
    if is_int(value):
        return per_row_shift(value, rows, name, op, device)  # a host int: the public op's check
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
    if layer.geometry is None:
        if x.dim() != 2 or x.shape[1] != w.shape[1]:
            raise ValueError(f"{op}: x must be [M, {w.shape[1]}], got {tuple(x.shape)}")
    else:
        groups = layer.geometry[-1]
        if x.dim() != 4 or x.shape[1] != w.shape[1] * groups:
            raise ValueError(f"{op}: x must be [B, {w.shape[1] * groups}, H, W], got {tuple(x.shape)}")
    if name == "cpu" and layer.geometry is not None and rows and (
            (is_int(act_shift) and is_int(weight_shift)) or rows <= PLAN_ROWS):
        return _planned_conv_host(layer, x, act_shift, weight_shift, op)
    if name != "triton":
        # On the host anyway: shifts are checked here (a bad one must not index past the Numba
        # kernels' tables), and per-layer ints never become tensors.
        act_np = _host_shift(act_shift, rows, "act_shift", op)
        w_np = _host_shift(weight_shift, rows, "weight_shift", op)
        if is_int(weight_shift):
            slot_np, distinct = np.zeros(rows, np.int64), w_np[:1]
        else:
            distinct, slot_np = np.unique(w_np, return_inverse=True)
            slot_np = slot_np.astype(np.int64)
        tables = None if name == "reference" else layer.host_weight_tables
        if layer.geometry is None:
            return _matmul_host(x, w, act_np, slot_np, distinct, layer.host_epilogue(), layer.epilogue.out_dtype,
                                layer.round_rule, tables)
        return _conv_host(x, w, layer.geometry, _conv_output_hw(op, x, w, layer.geometry), act_np, slot_np, distinct,
                          layer.host_epilogue(), layer.epilogue.out_dtype, layer.round_rule, tables)
    a_shift = _trusted_shift(act_shift, rows, "act_shift", op, x.device)
    w_shift = _trusted_shift(weight_shift, rows, "weight_shift", op, x.device)
    if layer.geometry is None:
        return _matmul_dispatch(x, w, a_shift, w_shift, is_int(weight_shift), layer.epilogue, layer.round_rule, name,
                                True, layer.shifted_weights())
    out_hw = _conv_output_hw(op, x, w, layer.geometry)
    return _conv_dispatch(x, w, layer.geometry, out_hw, a_shift, w_shift, is_int(weight_shift), layer.epilogue,
                          layer.round_rule, name, True, layer.shifted_weights())


PLANS_PER_LAYER = 16  # conv plans a prepared layer keeps (input shapes x shifts), most recent last
PLAN_ROWS = 4  # per-sample shifts of up to this many samples are a plan's key too (a controller at batch 1)


def _planned_conv_host(layer: PreparedLayer, x: torch.Tensor, act_shift: ShiftArg, weight_shift: ShiftArg,
                       op: str) -> torch.Tensor:
    """A prepared conv layer on the CPU path by a kept plan (`reference.conv_plan`: tiles,
    packed weights, shift arrays), made once per input shape and shifts: per-layer shifts, or
    per-sample ones for a few samples (dynamic mode at batch 1 meets at most 8 x 8 of them), so
    a frozen program's call does no per-call set-up beyond the output buffer."""
    B, Cout = x.shape[0], layer.weight.shape[0]
    if is_int(act_shift) and is_int(weight_shift):
        shifts = (_int_shift(act_shift, "act_shift", op), _int_shift(weight_shift, "weight_shift", op))
        act_np = w_np = None
    else:
        act_np = _host_shift(act_shift, B, "act_shift", op)
        w_np = _host_shift(weight_shift, B, "weight_shift", op)
        shifts = (act_np.tobytes(), w_np.tobytes())
    key = ("plan", tuple(x.shape), x.dtype, shifts, ref.blas.library_conv_enabled())
    entry = layer._host.pop(key, None)
    x_hi = 127 if x.dtype == torch.int8 else 255
    if entry is None:
        if act_np is None:
            act_np, w_np = np.full(B, shifts[0], np.int64), np.full(B, shifts[1], np.int64)
        distinct, slot_np = np.unique(w_np, return_inverse=True)
        w_shape = tuple(layer.weight.permute(0, 2, 3, 1).shape)
        H, W = x.shape[2:]
        plan = ref.conv_plan((B, H, W, x.shape[1]), x_hi, w_shape, layer.host_weight_tables(distinct),
                             *layer.geometry, act_np, slot_np.astype(np.int64), distinct)
        entry = (plan, act_np, w_shape)
        plans = [k for k in list(layer._host) if k[0] == "plan"]
        if len(plans) >= PLANS_PER_LAYER:
            layer._host.pop(plans[0], None)  # another thread may have dropped it already
    layer._host[key] = entry
    plan, act_np, w_shape = entry
    OH, OW = plan.out_hw
    out = np.empty((B * OH * OW, Cout), NUMPY_OUT[layer.epilogue.out_dtype])
    ref.run_conv_plan(plan, x.permute(0, 2, 3, 1).contiguous().numpy(), w_shape, *layer.geometry, act_np,
                      layer.round_rule, x_hi, *layer.host_epilogue(), out)
    return torch.from_numpy(out).view(B, OH, OW, Cout).permute(0, 3, 1, 2)


def _int_shift(value: int, name: str, op: str) -> int:
    """A per-layer shift, range-checked."""
    if not 0 <= value <= MAX_SHIFT:
        raise ValueError(f"{op}: {name}={value} is outside the shift range [0, {MAX_SHIFT}]")
    return int(value)


def _host_shift(value: ShiftArg, rows: int, name: str, op: str) -> np.ndarray:
    """int64 [rows] shifts on the host from a per-layer int or a per-sample tensor, range-checked."""
    if is_int(value):
        return np.full(rows, _int_shift(value, name, op), np.int64)
    values = _trusted_shift(value, rows, name, op, torch.device("cpu")).numpy().astype(np.int64)
    if rows and (values.min() < 0 or values.max() > MAX_SHIFT):
        raise ValueError(f"{op}: {name} values must lie in [0, {MAX_SHIFT}]")
    return values
