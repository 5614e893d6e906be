"""CPU execution path: Numba shifts and epilogues around an exact library GEMM, int8 or float32.

Two GEMM routes give the same integers. The int8 route (`torch._int_mm`, oneDNN: int8 x int8 ->
int32, exact) is the fast one where the CPU multiplies int8 natively (AVX-512 VNNI, AVX-VNNI,
AMX); elsewhere it is slower than float32 by far, so the route follows the CPU (`cpu_gemm_route`;
``DQT_CPU_GEMM=int8|float32`` forces one). A weight table is built for the route in force and the
GEMM follows the table's dtype, so a cached table keeps working if the route changes later.

The int8 route's convolutions run on oneDNN's int8 convolution (`onednn_conv`: no im2col, no
copy of uint8 codes at shift 0), whose float32 accumulators are exact below 2^24; the epilogue
counts the ones that are not, and such a tile runs again through im2col and the int8 GEMM.

The float32 route:

int8 x int8 products summed over a K-chunk stay integers of magnitude <= 2^24 when the chunk is
short enough, and every float32 integer up to 2^24 is exact, so any summation order (blocking,
FMA, threads) gives the exact integer. Chunk results are converted to int32 and added, so the
result equals the pure reference bit for bit (the oracle tests in tests/reference check it).

Unshifted uint8 activations (up to 255) are offset by -128 before the GEMM and
128 * (per-channel sums of the shifted weights) is added back: the products then stay within
128 * 128 instead of 255 * 128, which doubles the exact chunk length and halves the number
of GEMM calls at 8-bit activations. The shifted float32 weights (`WeightTable`) are built once
per (weight, shift, rule) and may be cached by the caller (`dqt_triton.ops`, ``cache_weight``).

Ungrouped convolutions skip im2col: torch's float32 convolution (oneDNN's direct algorithm, or
im2col and GEMM) runs on the shifted codes, one call per chunk of input channels, under the same
2^24 bound. Direct convolution only multiplies and adds codes, so it is exact like the GEMM; a
reduced-precision float32 mode (bf16/tf32) turns the path off (`float32_conv_is_exact`).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import NamedTuple, Optional

import numpy as np
import torch
from numba import njit, prange

from . import onednn_conv
from .common import apply_epilogue, nested_shift, output_size
from .matmul import shifted_weight_table

log = logging.getLogger(__name__)

FLOAT32_EXACT_LIMIT = 1 << 24
INT32_EXACT_LIMIT = 1 << 31  # an int8 route chunk: |sum of products| stays below it
CPU_GEMM_ENV = "DQT_CPU_GEMM"
CPU_GEMM_ROUTES = ("int8", "float32")
# int8 multiply-accumulate instructions (Linux /proc/cpuinfo flags) that make the int8 GEMM fast.
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# GEMM calls per route since import: a test can tell that the route it asked for really ran.
# "int8 conv" counts oneDNN int8 convolutions (the int8 route's convolutions, `onednn_conv`).
GEMM_CALLS = {"int8": 0, "float32": 0, "int8 conv": 0}
_forced_route: Optional[str] = None
# The int8 route convolves with oneDNN's int8 convolution where it is exact here (None: ask
# `onednn_conv.conv_probe` once); False sends its convolutions through im2col and the int8 GEMM.
_library_conv: Optional[bool] = None
NO_LIMIT = 1 << 62  # `_epilogue_rows`' limit where the accumulators are exact whatever they are
UINT8_OFFSET = 128
WEIGHT_ABS_MAX = 128
MAX_COLS_BYTES = 64 << 20
# oneDNN convolutions run on tiles of samples whose float32 output is about this size, so the
# epilogue reads it from cache (measured on a 2-core Xeon: 4 MB tiles took MobileNetV2 at 3x224,
# batch 16, from ~190 to ~135-170 ms against one call per layer; 1 MB tiles cost more calls).
LIBRARY_CONV_TILE_BYTES = 4 << 20
# Below these output sizes im2col is as fast as the library convolution (int_conv2d_blas).
LIBRARY_CONV_MIN_MAP = 64  # output pixels per sample
LIBRARY_CONV_MIN_PIXELS = 4096  # output pixels per call


def float32_gemm_is_exact() -> bool:
    """False when torch is allowed to run float32 matmuls in reduced precision (bf16/tf32)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    mkldnn_matmul = getattr(torch.backends.mkldnn, "matmul", None)
    precision = getattr(mkldnn_matmul, "fp32_precision", "ieee")
    return precision in ("ieee", "none")


def float32_conv_is_exact() -> bool:
    """False when torch may run float32 convolutions or matmuls in reduced precision."""
    mkldnn_conv = getattr(torch.backends.mkldnn, "conv", None)
    precision = getattr(mkldnn_conv, "fp32_precision", "ieee")
    return float32_gemm_is_exact() and precision in ("ieee", "none")


def cpu_int8_flags() -> list[str]:
    """The int8 multiply-accumulate extensions this CPU reports (empty where it reports none)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in INT8_CPU_FLAGS if flag in flags]


@functools.lru_cache(maxsize=None)
def _detected_route(requested: str) -> str:
    if requested not in ("auto",) + CPU_GEMM_ROUTES:
        raise ValueError(f"{CPU_GEMM_ENV} must be one of auto, int8, float32; got {requested!r}")
    flags = cpu_int8_flags()
    if requested == "auto":
        route = "int8" if flags and hasattr(torch, "_int_mm") else "float32"
        wrong = int8_gemm_probe() if route == "int8" else None
        if wrong is not None:  # a library that is fast but not exact here is not used
            route = "float32"
            log.warning("CPU integer GEMM: the int8 library GEMM is not exact on %s here; using float32", wrong)
        log.info("CPU integer GEMM: %s route (int8 multiply-accumulate on this CPU: %s; %s=int8|float32 forces "
                 "one)", route, ", ".join(flags) or "none", CPU_GEMM_ENV)
    else:
        route = requested
        log.info("CPU integer GEMM: %s route, forced by %s", route, CPU_GEMM_ENV)
    return route


def cpu_gemm_route() -> str:
    """The route new weight tables are built for: `set_cpu_gemm_route`'s choice, else
    ``DQT_CPU_GEMM`` (int8, float32 or auto, the default), where auto is int8 on a CPU with
    VNNI or AMX and float32 elsewhere. The choice is logged once."""
    if _forced_route is not None:
        return _forced_route
    return _detected_route(os.environ.get(CPU_GEMM_ENV, "auto").strip().lower() or "auto")


def set_cpu_gemm_route(route: Optional[str]) -> None:
    """Force the CPU GEMM route ("int8" or "float32") for tables built from now on; None goes
    back to ``DQT_CPU_GEMM`` / the CPU's capability."""
    global _forced_route
    if route is not None and route not in CPU_GEMM_ROUTES:
        raise ValueError(f"CPU GEMM route must be one of {CPU_GEMM_ROUTES} or None, got {route!r}")
    _forced_route = route


def shifted_abs_max(code_abs_max: int, min_shift: int) -> int:
    """Largest |code| after a shift of at least `min_shift` (either shift rule)."""
    return max(1, code_abs_max >> min_shift)


def _even_chunk(total: int, longest: int) -> int:
    """Chunk length that splits `total` terms evenly into the fewest chunks of at most
    `longest`: the longest run whose partial sums stay exactly representable in float32."""
    chunks = -(-total // longest)
    return -(-total // chunks)


def exact_int_gemm(a: np.ndarray, b: np.ndarray, a_abs_max: int, b_abs_max: int) -> torch.Tensor:
    """int32 a @ b^T for integer-valued arrays with bounded magnitudes: int8 arrays through the
    int8 GEMM (batched ones, grouped convolutions, as float32), float32 ones through float32
    GEMMs on chunks short enough to stay exact.

    a is [R, K] and b [N, K], or batched [G, R, K] and [G, N, K].
    """
    ta = torch.from_numpy(a)
    tb = torch.from_numpy(b).transpose(-1, -2)
    if ta.dtype == torch.int8:
        GEMM_CALLS["int8"] += 1
        if ta.dim() == 2:
            return _int8_gemm(ta, tb, _even_chunk(a.shape[-1], INT32_EXACT_LIMIT // (a_abs_max * b_abs_max) - 1))
        # Grouped: the library has no batched int8 GEMM, and one call per group (a depthwise
        # layer has hundreds) costs more than the batched float32 GEMM on the same codes.
        ta, tb = ta.float(), tb.float()
    else:
        GEMM_CALLS["float32"] += 1
    if not float32_gemm_is_exact():
        return torch.matmul(ta.double(), tb.double()).to(torch.int32)
    step = _even_chunk(a.shape[-1], FLOAT32_EXACT_LIMIT // (a_abs_max * b_abs_max))
    acc = None
    for k0 in range(0, a.shape[-1], step):
        part = torch.matmul(ta[..., k0:k0 + step], tb[..., k0:k0 + step, :]).to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc


def _int8_gemm(a: torch.Tensor, b: torch.Tensor, step: int) -> torch.Tensor:
    """int32 a @ b for int8 [R, K] @ [K, N], K in chunks of `step` (int32 sums stay exact)."""
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        return torch.zeros((a.shape[0], b.shape[1]), dtype=torch.int32)
    if a.shape[1] == 1:  # torch 2.13's CPU _int_mm returns garbage for K = 1 (measured); an outer product
        return a.to(torch.int32) * b.to(torch.int32)
    acc = None
    for k0 in range(0, a.shape[1], step):
        part = torch._int_mm(a[:, k0:k0 + step], b[k0:k0 + step])
        acc = part if acc is None else acc.add_(part)
    return acc


def int8_gemm_probe() -> Optional[str]:
    """None when the int8 GEMM gives the exact integers on shapes that exercise its edge cases
    (K = 1, odd sizes, one row, extreme codes), else a description of the first wrong one."""
    gen = torch.Generator().manual_seed(0)
    for m, k, n in ((1, 1, 7), (3, 2, 5), (17, 13, 23), (1, 27, 16), (64, 72, 33), (5, 300, 9)):
        a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
        b = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        a[0, 0], b[0, 0] = -128, -128
        if not torch.equal(_int8_gemm(a, b.t(), k), (a.long() @ b.long().t()).to(torch.int32)):
            return f"[{m}, {k}] @ [{k}, {n}]"
    return None


class WeightTable(NamedTuple):
    """Shifted weight codes [N, K] in the GEMM route's dtype (int8 or float32) plus their int64
    sums over K per output channel [N] (for the offset), and the codes packed for oneDNN's
    convolution per geometry (`onednn_conv.packed`, filled at a convolution's first call)."""

    values: np.ndarray
    channel_sums: np.ndarray
    abs_max: int
    packed: dict


def weight_table(w2d: np.ndarray, shift: int, round_rule: int) -> WeightTable:
    """The int8 weights [N, K] after the nested shift `shift`, ready for `exact_int_gemm`."""
    shifted = shifted_weight_table(w2d, np.array([shift], np.int64), round_rule)[0]
    values = shifted.astype(np.int8 if cpu_gemm_route() == "int8" else np.float32)
    return WeightTable(np.ascontiguousarray(values), shifted.sum(axis=1, dtype=np.int64),
                       shifted_abs_max(WEIGHT_ABS_MAX, shift), {})


def library_conv_enabled() -> bool:
    """True when the int8 route's convolutions run on oneDNN's int8 convolution: it is in this
    torch build and exact on this CPU (`onednn_conv.conv_probe`, logged once), unless turned off."""
    if _library_conv is not None:
        return _library_conv
    return _probed_library_conv()


@functools.lru_cache(maxsize=None)
def _probed_library_conv() -> bool:
    wrong = onednn_conv.conv_probe()
    if wrong is not None:
        log.info("CPU int8 route: convolutions by im2col and the int8 GEMM (oneDNN's int8 convolution: %s)", wrong)
    return wrong is None


def _activation_plan(x_hi: int, min_act_shift: int) -> tuple[int, int]:
    """(offset subtracted from shifted activations, largest |shifted activation - offset|).
    Either way the values fit int8: [0, 255] - 128, [0, 127] or [-128, 127]."""
    if x_hi == 255 and min_act_shift == 0:
        return UINT8_OFFSET, UINT8_OFFSET
    x_abs_max = 255 if x_hi == 255 else 128
    return 0, shifted_abs_max(x_abs_max, min_act_shift)


@njit(parallel=True, cache=True)
def _shift_rows(x, rows, act_shift, round_rule, x_hi, offset, out):
    """out[r] = the shifted codes of row rows[r] minus `offset` (out: int8 or float32)."""
    for r in prange(rows.shape[0]):
        m = rows[r]
        k = act_shift[m]
        for j in range(x.shape[1]):
            out[r, j] = nested_shift(np.int64(x[m, j]), k, round_rule, x_hi) - offset
    return out


def _gemm_dtype(table: "WeightTable"):
    return np.int8 if table.values.dtype == np.int8 else np.float32


@njit(parallel=True, cache=True)
def _epilogue_rows(acc, dest, total_shift, pixels, w_shift, correction, bias, mode, multiplier, rshift, scale, relu,
                   lo, hi, out, limit):
    """out rows from GEMM rows acc[r] that all use weight shift `w_shift` (its row of each
    [T, N] epilogue table when T == 8). Rows come in groups of `pixels` (an image's output
    pixels; 1 for a matmul): row r is out row dest[g] * pixels + r % pixels, shifted by
    total_shift[g], with g = r // pixels. Returns how many rows have an |acc| >= `limit`
    (float32 ones from `onednn_conv` are exact only below 2^24)."""
    beyond = 0
    for r in prange(acc.shape[0]):
        g = r // pixels
        m = dest[g] * pixels + r % pixels
        t = total_shift[g]
        over = False
        for n in range(acc.shape[1]):
            a = np.int64(acc[r, n])
            over |= (a >= limit) | (a <= -limit)
            v = (a + correction[n]) << t
            apply_epilogue(v, w_shift, n, bias, mode, multiplier, rshift, scale, relu, lo, hi, out, m)
        if over:
            beyond += 1
    return beyond


def _correction(table: WeightTable, offset: int) -> np.ndarray:
    return table.channel_sums * np.int64(offset)


def int_matmul_blas(
    x, w_tables, act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """`int_matmul_kernel`'s result via exact float32 GEMMs; `w_tables[s]` is the
    `weight_table` of the weights at `weight_shifts[s]`. The epilogue arguments are the [T, N]
    tables of `int_matmul_kernel`."""
    for slot in range(weight_shifts.shape[0]):
        rows = np.flatnonzero(weight_slot == slot)
        if rows.size == 0:
            continue
        table = w_tables[slot]
        offset, x_max = _activation_plan(x_hi, int(act_shift[rows].min()))
        xs = _shift_rows(x, rows, act_shift, round_rule, x_hi, offset,
                         np.empty((rows.shape[0], x.shape[1]), _gemm_dtype(table)))
        acc = exact_int_gemm(xs, table.values, x_max, table.abs_max).numpy()
        total = act_shift[rows] + weight_shifts[slot]
        _epilogue_rows(acc, rows, total, 1, weight_shifts[slot], _correction(table, offset), bias, mode, multiplier,
                       rshift, scale, relu, lo, hi, out, NO_LIMIT)
    return out


@njit(parallel=True, cache=True)
def _shift_samples(x, samples, act_shift, round_rule, x_hi, offset, ph, pw, out):
    """out[s]: the NHWC codes of samples[s] with their activation shift applied, minus `offset`,
    padded by (ph, pw) with code 0 (which becomes -offset like every other code); `out` is
    [S, H + 2 ph, W + 2 pw, C], int8 or float32."""
    _, H, W, C = x.shape
    if ph or pw:
        out[:] = -offset
    for row in prange(samples.shape[0] * H):  # rows, not samples: batch 1 uses every thread too
        s = row // H
        i = row % H
        b = samples[s]
        k = act_shift[b]
        if k == 0:  # the common case at 8 bits (an int8 input's +128): one straight vector pass
            for j in range(W):
                for c in range(C):
                    out[s, ph + i, pw + j, c] = np.int64(x[b, i, j, c]) - offset
        elif round_rule:
            for j in range(W):
                for c in range(C):
                    out[s, ph + i, pw + j, c] = nested_shift(np.int64(x[b, i, j, c]), k, True, x_hi) - offset
        else:
            for j in range(W):
                for c in range(C):
                    out[s, ph + i, pw + j, c] = (np.int64(x[b, i, j, c]) >> k) - offset
    return out


def exact_int_conv(xs: np.ndarray, table: "WeightTable", w_shape, x_abs_max: int, stride, dilation) -> np.ndarray:
    """int32 rows [(s, oh, ow), Cout] of an ungrouped convolution of padded NHWC float32 codes
    `xs` with the shifted weights of `table`, by float32 library convolutions over chunks of
    input channels whose partial sums stay exactly representable."""
    Cout, KH, KW, C = w_shape
    x = torch.from_numpy(xs).permute(0, 3, 1, 2)  # NCHW view of NHWC memory (channels_last)
    w = torch.from_numpy(table.values).view(Cout, KH, KW, C).permute(0, 3, 1, 2)
    step = _even_chunk(C, FLOAT32_EXACT_LIMIT // (x_abs_max * table.abs_max * KH * KW))  # KH*KW*128*128 < 2^24
    acc = None
    for c0 in range(0, C, step):
        part = torch.nn.functional.conv2d(x[:, c0:c0 + step], w[:, c0:c0 + step], stride=stride, dilation=dilation)
        part = part.to(torch.int32)
        acc = part if acc is None else acc.add_(part)
    return acc.permute(0, 2, 3, 1).reshape(-1, Cout).numpy()


@njit(parallel=True, cache=True)
def _im2col(x, samples, act_shift, round_rule, x_hi, offset, KH, KW, sh, sw, ph, pw, dh, dw, groups, OH, OW,
            shifted, cols):
    """cols[(s, oh, ow), g, (kh, kw, c)] with each sample's activation shift applied, minus
    `offset` (padding is code 0, so it becomes -offset like every other code); `shifted` is
    scratch of x's shape for the samples, both int8 or both float32."""
    _, H, W, C = x.shape
    Cg = C // groups
    _shift_samples(x, samples, act_shift, round_rule, x_hi, offset, 0, 0, shifted)
    for row in prange(samples.shape[0] * OH):
        s = row // OH
        oh = row % OH
        for ow in range(OW):
            r = (s * OH + oh) * OW + ow
            for i in range(KH):
                ih = oh * sh - ph + i * dh
                for j in range(KW):
                    iw = ow * sw - pw + j * dw
                    base = (i * KW + j) * Cg
                    if ih < 0 or ih >= H or iw < 0 or iw >= W:
                        cols[r, :, base:base + Cg] = -offset
                    else:
                        for g in range(groups):
                            cols[r, g, base:base + Cg] = shifted[s, ih, iw, g * Cg:(g + 1) * Cg]
    return cols


@njit(parallel=True, cache=True)
def _depthwise_acc(xs, samples, w, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW, acc):
    """acc[(s, oh, ow), c] = the int32 sum over the window of xs[samples[s], ., ., c] * w[c] for
    a depthwise convolution (one input channel per output channel) of shifted NHWC codes `xs`:
    no im2col, no library call, exact in int64 and stored as int32 (|acc| stays inside int32
    by the accumulator rule)."""
    _, H, W, C = xs.shape
    for row in prange(samples.shape[0] * OH):
        s = row // OH
        oh = row % OH
        b = samples[s]
        for ow in range(OW):
            r = (s * OH + oh) * OW + ow
            for c in range(C):
                total = np.int64(0)
                for i in range(KH):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= H:
                        continue
                    for j in range(KW):
                        iw = ow * sw - pw + j * dw
                        if iw < 0 or iw >= W:
                            continue
                        total += np.int64(xs[b, ih, iw, c]) * np.int64(w[c, i * KW + j])
                acc[r, c] = total
    return acc


def _library_conv_acc(x, tile: "ConvTile", act_shift, round_rule, x_hi):
    """float32 accumulators [(s, oh, ow), Cout] of a tile's samples by oneDNN's int8 convolution."""
    if tile.view is not None:  # uint8 codes at shift 0 are their own shifted values
        x = x[tile.view]
    else:
        x = _shift_samples(x, tile.samples, act_shift, round_rule, x_hi, -tile.conv.zero_point, 0, 0,
                           np.empty((tile.samples.size,) + x.shape[1:], np.uint8))
    GEMM_CALLS["int8 conv"] += 1
    return tile.conv(torch.from_numpy(x).permute(0, 3, 1, 2)).reshape(-1, tile.table.values.shape[0]).numpy()


def _gemm_conv_acc(x, tile, w_shape, table, geometry, out_hw, act_shift, round_rule, x_hi):
    """(int32 accumulators [(s, oh, ow), Cout] of the samples `tile` with `offset` subtracted
    from every shifted activation, offset) by the GEMM route of `table`."""
    B, H, W, C = x.shape
    Cout, KH, KW, Cg = w_shape
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), groups = geometry
    OH, OW = out_hw
    Kg = KH * KW * Cg
    offset, x_max = _activation_plan(x_hi, int(act_shift[tile].min()))
    dtype = _gemm_dtype(table)
    if groups == C == Cout and Cg == 1:  # depthwise: a direct Numba kernel, no GEMM, no offset
        xs, rows = x, tile  # at shift 0 the codes are their own shifted values
        if act_shift[tile].any():  # else shift each code once, not once per window tap
            xs = _shift_samples(x, tile, act_shift, round_rule, x_hi, 0, 0, 0, np.empty((tile.size, H, W, C), np.int16))
            rows = np.arange(tile.size)
        return _depthwise_acc(xs, rows, table.values, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                              OH, OW, np.empty((tile.size * OH * OW, C), np.int32)), 0
    if groups == 1 and KH == KW == 1 and stride_h == stride_w == 1 and pad_h == pad_w == 0:
        # A 1x1 convolution with stride 1 and no padding reads the shifted input as its GEMM matrix.
        xs = _shift_samples(x, tile, act_shift, round_rule, x_hi, offset, 0, 0, np.empty((tile.size, H, W, C), dtype))
        return exact_int_gemm(xs.reshape(-1, C), table.values, x_max, table.abs_max).numpy(), offset
    if _float32_library_conv(x.shape, w_shape, geometry, out_hw, table):
        xs = _shift_samples(x, tile, act_shift, round_rule, x_hi, offset, pad_h, pad_w,
                            np.empty((tile.size, H + 2 * pad_h, W + 2 * pad_w, C), dtype))
        return exact_int_conv(xs, table, w_shape, x_max, (stride_h, stride_w), (dil_h, dil_w)), offset
    cols = _im2col(x, tile, act_shift, round_rule, x_hi, offset, KH, KW, stride_h, stride_w, pad_h, pad_w,
                   dil_h, dil_w, groups, OH, OW,
                   np.empty((tile.size, H, W, C), dtype), np.empty((tile.size * OH * OW, groups, Kg), dtype))
    if groups == 1:
        return exact_int_gemm(cols[:, 0], table.values, x_max, table.abs_max).numpy(), offset
    per_group = np.ascontiguousarray(cols.transpose(1, 0, 2))
    acc = exact_int_gemm(per_group, table.values.reshape(groups, Cout // groups, Kg), x_max, table.abs_max)
    return acc.permute(1, 0, 2).reshape(cols.shape[0], Cout).numpy(), offset


def _float32_library_conv(x_shape, w_shape, geometry, out_hw, table) -> bool:
    """True where torch's float32 convolution beats im2col on the float32 route: ungrouped,
    not 1x1, outputs large enough (measured on a 2-core EPYC: the library convolution took
    0.3-0.6x im2col's time from 8x8 outputs up at batch 64, and up to 1.2x at 4x4 or one sample)."""
    (_, KH, KW, _), groups = w_shape, geometry[3]
    pixels = out_hw[0] * out_hw[1]
    return groups == 1 and KH * KW > 1 and pixels >= LIBRARY_CONV_MIN_MAP and \
        x_shape[0] * pixels >= LIBRARY_CONV_MIN_PIXELS and float32_conv_is_exact() and table.values.dtype == np.float32


class ConvTile(NamedTuple):
    """Samples of one convolution call that share a weight shift, and how to compute them."""

    samples: np.ndarray  # indices into the batch
    view: Optional[slice]  # library tiles of consecutive uint8 samples at shift 0: read x[view] as it is
    table: WeightTable
    w_shift: int
    total_shift: np.ndarray  # per sample: activation + weight shift
    conv: Optional[onednn_conv.PackedConv]  # oneDNN's convolution, or None for the GEMM route
    limit: int  # accumulators at or beyond it are recomputed on the GEMM (float32 ones: 2^24)


class ConvPlan(NamedTuple):
    """How `run_conv_plan` computes one convolution: its output size and its tiles. A plan
    depends only on shapes and shifts, so a layer run at fixed shifts can keep it."""

    out_hw: tuple[int, int]
    tiles: list[ConvTile]
    no_correction: np.ndarray  # int64 zeros [Cout]: library tiles need no offset correction


def conv_plan(x_shape, x_hi, w_shape, w_tables, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
              act_shift, weight_slot, weight_shifts) -> ConvPlan:
    """The tiles of `int_conv2d_blas` (arguments as there, `x_shape` for x)."""
    B, H, W, C = x_shape
    Cout, KH, KW, Cg = w_shape
    OH, OW = output_size(H, KH, stride_h, pad_h, dil_h), output_size(W, KW, stride_w, pad_w, dil_w)
    geometry = ((stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), groups)
    library = all(t.values.dtype == np.int8 for t in w_tables) and library_conv_enabled() and \
        onednn_conv.supported(stride_h, stride_w, dil_h, dil_w)
    # Tiles of samples bound the scratch: im2col columns, or the padded input and the float32
    # output of a library convolution.
    if library:  # a tile's float32 accumulators stay in cache until the epilogue reads them
        samples_per_tile = max(1, LIBRARY_CONV_TILE_BYTES // (OH * OW * Cout * 4))
    else:
        direct = _float32_library_conv(x_shape, w_shape, geometry, (OH, OW), w_tables[0])
        per_sample = (H + 2 * pad_h) * (W + 2 * pad_w) * C * 4 + OH * OW * Cout * 8 if direct else \
            OH * OW * groups * KH * KW * Cg * 4
        samples_per_tile = max(1, MAX_COLS_BYTES // max(1, per_sample))
    zero_point = 0 if x_hi == 255 else onednn_conv.SIGNED_ZERO_POINT
    tiles = []
    for slot in range(weight_shifts.shape[0]):
        samples = np.flatnonzero(weight_slot == slot)
        table = w_tables[slot]
        w_shift = int(weight_shifts[slot])
        for s0 in range(0, samples.size, samples_per_tile):
            tile = samples[s0:s0 + samples_per_tile]
            conv, view, limit = None, None, NO_LIMIT
            if library:
                conv = onednn_conv.packed(table.packed, table.values, w_shape, *geometry, zero_point,
                                          (tile.size, C, H, W))
                if not zero_point and not act_shift[tile].any() and tile[-1] - tile[0] + 1 == tile.size:
                    view = slice(int(tile[0]), int(tile[0]) + tile.size)
                x_max = shifted_abs_max(255 if x_hi == 255 else 128, int(act_shift[tile].min()))
                if not onednn_conv.within_exact_limit(KH * KW * Cg, x_max, table.abs_max):
                    limit = onednn_conv.FLOAT32_EXACT_LIMIT
            tiles.append(ConvTile(tile, view, table, w_shift, act_shift[tile] + w_shift, conv, limit))
    return ConvPlan((OH, OW), tiles, np.zeros(Cout, np.int64))


def run_conv_plan(plan: ConvPlan, x, w_shape, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                  act_shift, round_rule, x_hi, bias, mode, multiplier, rshift, scale, relu, lo, hi, out):
    """`int_conv2d_blas` by a plan from `conv_plan` for the same shapes and shifts."""
    geometry = ((stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w), groups)
    pixels = plan.out_hw[0] * plan.out_hw[1]
    constants = (bias, mode, multiplier, rshift, scale, relu, lo, hi, out)
    for tile in plan.tiles:
        rows = (tile.samples, tile.total_shift, pixels, tile.w_shift)
        if tile.conv is not None:
            acc = _library_conv_acc(x, tile, act_shift, round_rule, x_hi)
            if not _epilogue_rows(acc, *rows, plan.no_correction, *constants, tile.limit):
                continue
            log.debug("int8 convolution: an accumulator reached 2^24; the tile runs again on the GEMM")
        acc, offset = _gemm_conv_acc(x, tile.samples, w_shape, tile.table, geometry, plan.out_hw, act_shift,
                                     round_rule, x_hi)
        _epilogue_rows(acc, *rows, _correction(tile.table, offset), *constants, NO_LIMIT)
    return out


def int_conv2d_blas(
    x, w_shape, w_tables, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
    act_shift, weight_slot, weight_shifts, round_rule, x_hi,
    bias, mode, multiplier, rshift, scale, relu, lo, hi, out,
):
    """`int_conv2d_kernel`'s result on the CPU path. `w_shape` is the NHWC weight shape
    (Cout, KH, KW, C/groups); `w_tables[s]` the `weight_table` of its [Cout, KH*KW*C/g] view at
    `weight_shifts[s]`. On the int8 route oneDNN's int8 convolution computes the accumulators
    (tiles where one reaches 2^24 are computed again by the GEMM); otherwise im2col (or the
    shifted input itself, or torch's float32 convolution) and exact GEMMs, and a direct kernel
    for depthwise convolutions."""
    geometry = (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups)
    plan = conv_plan(x.shape, x_hi, w_shape, w_tables, *geometry, act_shift, weight_slot, weight_shifts)
    return run_conv_plan(plan, x, w_shape, *geometry, act_shift, round_rule, x_hi, bias, mode, multiplier, rshift,
                         scale, relu, lo, hi, out)
