"""Transformer ops on codes (docs/numerics.md section 10): the product of two activations
(`int_bmm`), softmax (`int_softmax`), LayerNorm (`int_layernorm`) and embedding lookups
(`int_embedding`), each a kernel and a thin launcher.

The Numba twins are `dqt_triton.reference.transformer`; the tests hold the two to exact
equality. Input validation and the normal form of the arguments (3-D or 2-D contiguous codes,
per-row int32 shifts) live in `dqt_triton.ops_transformer`; the launchers check shapes and
dtypes only. Block sizes are fixed (no autotuning): the interpreter runs what a GPU runs, save
the lanes per program of the row and element kernels (`common.elementwise_block`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dqt_triton.reference.common import LN_NORM_BITS, LN_STD_BITS, SOFTMAX_OUT

from .common import check_int32_sizes, clamp_shift, elementwise_block, nested_shift
from .elementwise import _round_shift_clamp

CODE_DTYPES = (torch.uint8, torch.int8)

# Twins for @triton.jit code (the GPU compiler reads module globals only as tl.constexpr).
SOFTMAX_OUT_C = tl.constexpr(SOFTMAX_OUT)
# LayerNorm: r = isqrt(V 2^(2 LN_STD_BITS) / C) is the standard deviation in 2^-LN_STD_BITS units, so
# n = d 2^(LN_STD_BITS + LN_NORM_BITS) / r is the normalised value in 2^-LN_NORM_BITS units.
LN_NORM_BITS_C = tl.constexpr(LN_NORM_BITS)
LN_SCALE_BITS_C = tl.constexpr(LN_STD_BITS + LN_NORM_BITS)
LN_VAR_BITS_C = tl.constexpr(2 * LN_STD_BITS)

# int_bmm's tile. 32 rows keep `tl.dot` on mma.sync on every target: a 64-row tile with 4 warps
# would get wgmma on sm_90 with its left operand from registers (the operands are shifted in
# the K loop), the form that meets a ptxas hazard (triton#9433). BLOCK_K = 64 >= 32, the least
# an int8 MMA takes.
BMM_BLOCK_M = 32
BMM_BLOCK_N = 64
BMM_BLOCK_K = 64
BMM_WARPS = 4
# Fewest columns per program of the row kernels (softmax, LayerNorm): short rows get a block
# that covers them, rounded up to a power of two.
MIN_ROW_BLOCK = 16


# ----------------------------------------------------------------------------- int_bmm


@triton.jit
def _int8_operand(q, k, ROUND: tl.constexpr, UNSIGNED: tl.constexpr):
    """int8 MMA operand from master codes `q` (int32) and shifts `k`: the code in master units,
    nested_shift(q, k) << k, in [-128, 127] for int8 codes and [0, 255] for uint8 codes, which
    are offset by -128 to fit int8 (the epilogue adds the offset's terms back, exactly)."""
    if UNSIGNED:
        return ((nested_shift(q, k, ROUND, 255) << k) - 128).to(tl.int8)
    else:
        return (nested_shift(q, k, ROUND, 127) << k).to(tl.int8)


@triton.jit(do_not_specialize=["multiplier", "rshift", "lo", "hi"])
def int_bmm_kernel(
    a_ptr, b_ptr, out_ptr, a_shift_ptr, b_shift_ptr,
    M, N, K,
    stride_ag, stride_am, stride_ak,
    stride_bg, stride_bk, stride_bn,
    stride_og, stride_om, stride_on,
    stride_sa, stride_sb,
    multiplier, rshift, lo, hi,
    ROUND: tl.constexpr, A_UNSIGNED: tl.constexpr, B_UNSIGNED: tl.constexpr, B_ON_N: tl.constexpr,
    REQUANT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[g] = epilogue(A[g] . B[g]) for a [G, M, K] and b [G, K, N] codes, one [BLOCK_M, BLOCK_N]
    tile of one group per program.

    A = nested_shift(a, a_shift[g, m]) << a_shift[g, m] and B likewise with b_shift[g, n]
    (B_ON_N) or b_shift[g, k]: both operands in master units, shifted in the K loop. uint8
    operands enter the int8 MMA offset by -128: with A = A' + 128 and B = B' + 128,
    sum A B = A'.B' + 128 rowsum(A') + 128 colsum(B') + 2^14 K (each term only if its operand
    is unsigned). Raw (int32 v) or requantizing epilogue clamp(round_shift(v * multiplier,
    rshift), lo, hi) with an int64 product.
    """
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    tiles = num_pid_m * tl.cdiv(N, BLOCK_N)
    pid_g = pid // tiles
    tile = pid - pid_g * tiles
    pid_m = tile % num_pid_m  # row tiles fastest: neighbouring programs share b's column tile
    pid_n = tile // num_pid_m
    g = pid_g.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    a_rows = a_ptr + g * stride_ag + offs_m[:, None].to(tl.int64) * stride_am
    b_cols = b_ptr + g * stride_bg + offs_n[None, :].to(tl.int64) * stride_bn
    a_shift = clamp_shift(tl.load(a_shift_ptr + g * stride_sa + offs_m, mask=m_mask, other=0))
    if B_ON_N:
        b_shift = clamp_shift(tl.load(b_shift_ptr + g * stride_sb + offs_n, mask=n_mask, other=0))

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    a_rowsum = tl.zeros((BLOCK_M,), dtype=tl.int32)
    b_colsum = tl.zeros((BLOCK_N,), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        k_offs = k0 + offs_k
        k_mask = k_offs < K
        # The step's base in int64, the offsets inside one tile in int32 (the launcher keeps
        # BLOCK_K * stride_k below 2^31).
        k_base = tl.cast(k0, tl.int64)
        # Padding is code 128 for uint8 operands: 128 in master units under either rule, so it
        # enters the MMA as 0, like the int8 padding 0. Its value past K (or M, N) then adds
        # nothing to the dot product or the row and column sums.
        a = tl.load(a_rows + k_base * stride_ak + offs_k[None, :] * stride_ak,
                    mask=m_mask[:, None] & k_mask[None, :], other=128 if A_UNSIGNED else 0)
        b = tl.load(b_cols + k_base * stride_bk + offs_k[:, None] * stride_bk,
                    mask=k_mask[:, None] & n_mask[None, :], other=128 if B_UNSIGNED else 0)
        if B_ON_N:
            b_op = _int8_operand(b.to(tl.int32), b_shift[None, :], ROUND, B_UNSIGNED)
        else:
            k_shift = clamp_shift(tl.load(b_shift_ptr + g * stride_sb + k_offs, mask=k_mask, other=0))
            b_op = _int8_operand(b.to(tl.int32), k_shift[:, None], ROUND, B_UNSIGNED)
        a_op = _int8_operand(a.to(tl.int32), a_shift[:, None], ROUND, A_UNSIGNED)
        acc = tl.dot(a_op, b_op, acc, out_dtype=tl.int32)
        if B_UNSIGNED:
            a_rowsum += tl.sum(a_op.to(tl.int32), axis=1)
        if A_UNSIGNED:
            b_colsum += tl.sum(b_op.to(tl.int32), axis=0)

    v = acc.to(tl.int64)
    if B_UNSIGNED:
        v += 128 * a_rowsum[:, None].to(tl.int64)
    if A_UNSIGNED:
        v += 128 * b_colsum[None, :].to(tl.int64)
        if B_UNSIGNED:
            v += 16384 * tl.cast(K, tl.int64)
    if REQUANT:
        v = _round_shift_clamp(v * tl.cast(multiplier, tl.int64), tl.cast(rshift, tl.int64), lo, hi)
    out_ptrs = out_ptr + g * stride_og + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out_ptrs, v.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def launch_int_bmm(a: torch.Tensor, b: torch.Tensor, a_shift: torch.Tensor, b_shift: torch.Tensor, b_on_n: bool,
                   round_rule: bool, mode: int, multiplier: int, rshift: int, lo: int, hi: int,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """out [G, M, N] for codes a [G, M, K] and b [G, K, N] (uint8 or int8, any strides), int32
    shifts a_shift [G, M] and b_shift [G, N] (b_on_n) or [G, K], contiguous. mode 0: the int32
    sum in master units; else codes clamp(round_shift(v * multiplier, rshift), lo, hi) of
    out_dtype."""
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"int_bmm kernel: a must be [G, M, K] and b [G, K, N], got {tuple(a.shape)}, "
                         f"{tuple(b.shape)}")
    if a.dtype not in CODE_DTYPES or b.dtype not in CODE_DTYPES:
        raise TypeError(f"int_bmm kernel takes uint8/int8 codes, got {a.dtype}, {b.dtype}")
    G, M, K = a.shape
    N = b.shape[2]
    for name, shift, tokens in (("a_shift", a_shift, M), ("b_shift", b_shift, N if b_on_n else K)):
        if shift.dtype != torch.int32 or shift.shape != (G, tokens) or not shift.is_contiguous():
            raise ValueError(f"int_bmm kernel: {name} must be contiguous int32 [{G}, {tokens}], got "
                             f"{shift.dtype} {tuple(shift.shape)}")
    if (out_dtype == torch.int32) != (mode == 0) or out_dtype not in (torch.int32, *CODE_DTYPES):
        raise ValueError(f"int_bmm kernel: mode {mode} cannot write {out_dtype} (raw: int32, requantized: 8-bit)")
    if len({t.device for t in (a, b, a_shift, b_shift)}) != 1:
        raise ValueError("int_bmm kernel: all operands must be on one device")
    out = torch.empty((G, M, N), dtype=out_dtype, device=a.device)
    if out.numel() == 0:
        return out
    programs = G * triton.cdiv(M, BMM_BLOCK_M) * triton.cdiv(N, BMM_BLOCK_N)
    check_int32_sizes("int_bmm", programs=programs, a_step=BMM_BLOCK_K * abs(a.stride(2)),
                      b_step=BMM_BLOCK_K * abs(b.stride(1)))
    int_bmm_kernel[(programs,)](
        a, b, out, a_shift, b_shift, M, N, K,
        a.stride(0), a.stride(1), a.stride(2), b.stride(0), b.stride(1), b.stride(2),
        out.stride(0), out.stride(1), out.stride(2), a_shift.stride(0), b_shift.stride(0),
        multiplier, rshift, lo, hi,
        ROUND=bool(round_rule), A_UNSIGNED=a.dtype == torch.uint8, B_UNSIGNED=b.dtype == torch.uint8,
        B_ON_N=bool(b_on_n), REQUANT=mode != 0,
        BLOCK_M=BMM_BLOCK_M, BLOCK_N=BMM_BLOCK_N, BLOCK_K=BMM_BLOCK_K, num_warps=BMM_WARPS,
    )
    return out


# ----------------------------------------------------------------------------- row kernels


def row_block(columns: int) -> int:
    """Columns per step of the softmax and LayerNorm row loops: a power of two covering the row,
    at most `elementwise_block()` (longer rows take several steps)."""
    return min(elementwise_block(), max(MIN_ROW_BLOCK, triton.next_power_of_2(columns)))


@triton.jit
def int_softmax_kernel(x_ptr, table_ptr, out_ptr, M, N, stride_xr, stride_or,
                       CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """One row of x [G * M, N] codes per program, in three passes over its column blocks: the
    top code, the sum s of table[top - x] and the codes floor((510 table[top - x] + s) / (2 s)).
    Row m of each [M, N] matrix keeps the columns n <= m + N - M (CAUSAL) or all; the others
    get 0. Every term is non-negative, so Triton's truncating // is the floor."""
    row = tl.program_id(0)
    if CAUSAL:
        last = row % M + (N - M)
    else:
        last = N - 1
    x_row = x_ptr + row.to(tl.int64) * stride_xr
    out_row = out_ptr + row.to(tl.int64) * stride_or
    offs_n = tl.arange(0, BLOCK_N)

    top_lanes = tl.full((BLOCK_N,), -(1 << 20), tl.int32)
    for n0 in range(0, last + 1, BLOCK_N):
        cols = n0 + offs_n
        keep = cols <= last
        x = tl.load(x_row + cols, mask=keep, other=0).to(tl.int32)
        top_lanes = tl.maximum(top_lanes, tl.where(keep, x, -(1 << 20)))
    top = tl.max(top_lanes, axis=0)

    # s < 2^31: at most 65,535 columns of entries <= 2^15 (ops_transformer refuses longer rows).
    sum_lanes = tl.zeros((BLOCK_N,), tl.int32)
    for n0 in range(0, last + 1, BLOCK_N):
        cols = n0 + offs_n
        keep = cols <= last
        x = tl.load(x_row + cols, mask=keep, other=0).to(tl.int32)
        sum_lanes += tl.load(table_ptr + (top - x), mask=keep, other=0)
    total = tl.sum(sum_lanes, axis=0).to(tl.int64)
    denominator = 2 * tl.maximum(total, 1)  # total >= table[0] >= 1: the guard only keeps // defined

    for n0 in range(0, N, BLOCK_N):
        cols = n0 + offs_n
        keep = cols <= last
        x = tl.load(x_row + cols, mask=keep, other=0).to(tl.int32)
        e = tl.load(table_ptr + (top - x), mask=keep, other=0).to(tl.int64)
        p = (2 * SOFTMAX_OUT_C * e + total) // denominator  # 0 where e = 0: the dropped columns
        tl.store(out_row + cols, p.to(tl.uint8), mask=cols < N)


def launch_int_softmax(x: torch.Tensor, table: torch.Tensor, causal: bool) -> torch.Tensor:
    """uint8 softmax codes of x [G, M, N] (uint8 or int8, contiguous) with the int32 exp table
    [256]; causal: row m of each [M, N] matrix keeps columns n <= m + N - M."""
    if x.dim() != 3 or x.dtype not in CODE_DTYPES or not x.is_contiguous():
        raise ValueError(f"int_softmax kernel: x must be contiguous uint8/int8 [G, M, N], got {x.dtype} "
                         f"{tuple(x.shape)}")
    if table.dtype != torch.int32 or table.shape != (256,) or not table.is_contiguous() or table.device != x.device:
        raise ValueError(f"int_softmax kernel: table must be contiguous int32 [256] on {x.device}")
    G, M, N = x.shape
    if causal and M > N:
        raise ValueError(f"int_softmax kernel: a causal softmax needs M <= N, got {M} x {N}")
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    if out.numel() == 0:
        return out
    check_int32_sizes("int_softmax", programs=G * M)
    int_softmax_kernel[(G * M,)](x, table, out, M, N, N, N, CAUSAL=bool(causal), BLOCK_N=row_block(N))
    return out


@triton.jit
def _floor_div(numerator, denominator):
    """floor(numerator / denominator) for denominator > 0: Triton's // truncates toward zero, so
    step down where a negative numerator is not a multiple."""
    quotient = numerator // denominator
    return tl.where(quotient * denominator > numerator, quotient - 1, quotient)


@triton.jit(do_not_specialize=["shift", "eps_units", "lo", "hi"])
def int_layernorm_kernel(x_ptr, mult_ptr, offset_ptr, out_ptr, C, stride_xr, stride_or,
                         shift, eps_units, lo, hi, BLOCK_C: tl.constexpr):
    """One row of x [R, C] codes per program, in three passes over its column blocks (int64, as
    reference.transformer.int_layernorm_kernel): the sum, V = sum d^2 with d = C x - sum, then
    r = isqrt(floor(V 2^16 / C) + eps_units), n = floor((2 d 2^20 + r) / (2 r)) (0 if r = 0)
    and the codes clamp(round_shift(mult n + offset, shift + 12), lo, hi)."""
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride_xr
    out_row = out_ptr + row.to(tl.int64) * stride_or
    offs_c = tl.arange(0, BLOCK_C)
    channels = tl.cast(C, tl.int64)

    sum_lanes = tl.zeros((BLOCK_C,), tl.int32)  # |sum| <= 16,384 * 255
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        sum_lanes += tl.load(x_row + cols, mask=cols < C, other=0).to(tl.int32)
    total = tl.sum(sum_lanes, axis=0).to(tl.int64)

    var_lanes = tl.zeros((BLOCK_C,), tl.int64)  # |d| < 2^22, V < 2^59
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        mask = cols < C
        d = channels * tl.load(x_row + cols, mask=mask, other=0).to(tl.int64) - total
        var_lanes += tl.where(mask, d * d, 0)
    var = tl.sum(var_lanes, axis=0)

    # floor(V 2^16 / C) without the 2^75 product; V >= 0, so // is the floor.
    q = ((var // channels) << LN_VAR_BITS_C) + ((var % channels) << LN_VAR_BITS_C) // channels
    q += tl.cast(eps_units, tl.int64)
    # isqrt(q), q < 2^62: a float64 estimate (sqrt.rn.f64 on the GPU; tl.sqrt_rn takes fp32
    # only), then two integer corrections each way as the reference makes.
    root = tl.sqrt(q.to(tl.float64)).to(tl.int64)
    for _ in tl.static_range(2):
        root = tl.where(root * root > q, root - 1, root)
    for _ in tl.static_range(2):
        root = tl.where((root + 1) * (root + 1) <= q, root + 1, root)
    denominator = 2 * tl.maximum(root, 1)
    out_shift = tl.cast(shift, tl.int64) + LN_NORM_BITS_C

    for c0 in range(0, C, BLOCK_C):
        cols = c0 + offs_c
        mask = cols < C
        d = channels * tl.load(x_row + cols, mask=mask, other=0).to(tl.int64) - total
        n = _floor_div(2 * (d << LN_SCALE_BITS_C) + root, denominator)
        n = tl.where(root > 0, n, 0)
        mult = tl.load(mult_ptr + cols, mask=mask, other=0).to(tl.int64)
        offset = tl.load(offset_ptr + cols, mask=mask, other=0)
        y = _round_shift_clamp(mult * n + offset, out_shift, lo, hi)
        tl.store(out_row + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch_int_layernorm(x: torch.Tensor, mult: torch.Tensor, offset: torch.Tensor, shift: int, eps_units: int,
                         lo: int, hi: int, out_dtype: torch.dtype) -> torch.Tensor:
    """LayerNorm codes of out_dtype over the last axis of x [R, C] (uint8 or int8, contiguous)
    with mult int32 [C] and offset int64 [C] (contiguous)."""
    if x.dim() != 2 or x.dtype not in CODE_DTYPES or not x.is_contiguous():
        raise ValueError(f"int_layernorm kernel: x must be contiguous uint8/int8 [R, C], got {x.dtype} "
                         f"{tuple(x.shape)}")
    R, C = x.shape
    for name, t, dtype in (("mult", mult, torch.int32), ("offset", offset, torch.int64)):
        if t.dtype != dtype or t.shape != (C,) or not t.is_contiguous() or t.device != x.device:
            raise ValueError(f"int_layernorm kernel: {name} must be contiguous {dtype} [{C}] on {x.device}, got "
                             f"{t.dtype} {tuple(t.shape)}")
    if out_dtype not in CODE_DTYPES:
        raise ValueError(f"int_layernorm kernel: out_dtype must be uint8 or int8, got {out_dtype}")
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    check_int32_sizes("int_layernorm", programs=R)
    int_layernorm_kernel[(R,)](x, mult, offset, out, C, C, C, shift, eps_units, lo, hi, BLOCK_C=row_block(C))
    return out


# ----------------------------------------------------------------------------- int_embedding


@triton.jit
def int_embedding_kernel(ids_ptr, table_ptr, out_ptr, numel, D, BLOCK: tl.constexpr):
    """out[i, c] = table[ids[i], c], one element of the dense out [L, D] per lane (ids already
    checked to lie in [0, V))."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    token = offs // D
    row = tl.load(ids_ptr + token, mask=mask, other=0).to(tl.int64)
    code = tl.load(table_ptr + row * D + (offs - token * D), mask=mask, other=0)
    tl.store(out_ptr + offs, code, mask=mask)


def launch_int_embedding(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """table[ids]: ids 1-D contiguous uint8/int8 token ids, table int8 [V, D] contiguous."""
    if ids.dim() != 1 or ids.dtype not in CODE_DTYPES or not ids.is_contiguous():
        raise ValueError(f"int_embedding kernel: ids must be contiguous 1-D uint8/int8, got {ids.dtype} "
                         f"{tuple(ids.shape)}")
    if table.dim() != 2 or table.dtype != torch.int8 or not table.is_contiguous() or table.device != ids.device:
        raise ValueError(f"int_embedding kernel: table must be contiguous int8 [V, D] on {ids.device}, got "
                         f"{table.dtype} {tuple(table.shape)}")
    out = torch.empty((ids.shape[0], table.shape[1]), dtype=torch.int8, device=ids.device)
    numel = out.numel()
    if numel:
        block = elementwise_block()
        int_embedding_kernel[(triton.cdiv(numel, block),)](ids, table, out, numel, table.shape[1], BLOCK=block)
    return out
