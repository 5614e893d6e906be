"""Independent oracle for the integer contract, written in plain torch int64 / exact float64.

Deliberately shares no code with dqt_triton: it re-derives every rule from docs/numerics.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(q: torch.Tensor, k: torch.Tensor, rule: str, top: int) -> torch.Tensor:
    """Nested shift of int64 codes by per-element k (int64); `top` is the master code maximum."""
    q = q.long()
    k = k.long()
    if rule == "floor":
        return torch.div(q, 2**k, rounding_mode="floor")
    half = torch.where(k > 0, 2 ** (k - 1).clamp(min=0), torch.zeros_like(k))
    return torch.minimum(torch.div(q + half, 2**k, rounding_mode="floor"), torch.div(torch.full_like(q, top), 2**k, rounding_mode="floor"))


def round_shift(v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    s = s.long()
    half = torch.where(s > 0, 2 ** (s - 1).clamp(min=0), torch.zeros_like(s))
    return torch.div(v + half, 2**s, rounding_mode="floor")


def _per_row(constant: torch.Tensor) -> torch.Tensor:
    """An [N] constant broadcast over rows; a [rows, N] one (one set per row) as it is."""
    return constant[None, :] if constant.dim() == 1 else constant


def width_table_rows(table: torch.Tensor, kw_rows: torch.Tensor) -> torch.Tensor:
    """[rows, N] constants of a width table [8, N] (row k serves weight shift k) for output rows
    with weight shifts kw_rows; an [N] constant is the same for every row."""
    if table.dim() == 1:
        return table[None, :].expand(kw_rows.shape[0], -1)
    assert table.shape[0] == 8, table.shape
    return table[kw_rows.long()]


def epilogue(v, bias, mode, multiplier, rshift, scale, relu, out_dtype):
    """v: int64 [rows, N] master-unit accumulators without bias; each constant is [N] or
    [rows, N] (per-row constants, e.g. from `width_table_rows`)."""
    v = v + _per_row(bias.long())
    if relu:
        v = v.clamp(min=0)
    if mode == "raw":
        return v.to(torch.int32)
    if mode == "float":
        return v.to(torch.float32) * _per_row(scale.float())
    y = round_shift(v * _per_row(multiplier.long()), _per_row(rshift.long()).expand_as(v))
    lo, hi = (0, 255) if out_dtype == torch.uint8 else (-128, 127)
    if relu:
        lo = max(lo, 0)
    return y.clamp(lo, hi).to(out_dtype)


def matmul_acc(x, w, ka, kw, rule):
    """int64 [M, N] master-unit accumulators: (sum shifted products) * 2^(ka + kw)."""
    x_top = 127 if x.dtype == torch.int8 else 255
    xs = shift(x.long(), ka.long()[:, None].expand(x.shape), rule, x_top)
    rows = []
    for m in range(x.shape[0]):
        ws = shift(w.long(), kw[m].long().expand(w.shape), rule, 127)
        rows.append((xs[m][None, :] * ws).sum(dim=1) * 2 ** int(ka[m] + kw[m]))
    return torch.stack(rows) if rows else torch.zeros((0, w.shape[0]), dtype=torch.int64)


def conv_acc(x, w, ka, kw, rule, stride, padding, dilation, groups):
    """int64 [B, Cout, OH, OW] master-unit accumulators via exact float64 convolution."""
    x_top = 127 if x.dtype == torch.int8 else 255
    outs = []
    for b in range(x.shape[0]):
        xs = shift(x[b : b + 1].long(), ka[b].long().expand(x[b : b + 1].shape), rule, x_top)
        ws = shift(w.long(), kw[b].long().expand(w.shape), rule, 127)
        acc = F.conv2d(xs.double(), ws.double(), stride=stride, padding=padding, dilation=dilation, groups=groups)
        outs.append(acc.round().long() * 2 ** int(ka[b] + kw[b]))
    return torch.cat(outs)


def _epilogue_per_row(acc_rows, kw_rows, spec):
    """The epilogue with each output row's constants: spec's bias / multiplier / rshift / scale
    are [N] (every width) or [8, N] width tables read at row kw_rows[r]."""
    per_row = {key: width_table_rows(spec[key], kw_rows) for key in ("bias", "multiplier", "rshift", "scale")}
    return epilogue(acc_rows, per_row["bias"], spec["mode"], per_row["multiplier"], per_row["rshift"],
                    per_row["scale"], spec["relu"], spec["out_dtype"])


def matmul(x, w, ka, kw, rule, spec):
    """Whole int_matmul output for per-row shifts ka, kw [M] and an epilogue spec (see
    `_epilogue_per_row`)."""
    return _epilogue_per_row(matmul_acc(x, w, ka, kw, rule), kw, spec)


def conv2d(x, w, ka, kw, rule, spec, stride, padding, dilation, groups):
    """Whole int_conv2d output [B, Cout, OH, OW] for per-image shifts ka, kw [B]; every pixel of
    image b reads row kw[b] of a width table."""
    acc = conv_acc(x, w, ka, kw, rule, stride, padding, dilation, groups)
    B, Co, OH, OW = acc.shape
    rows = _epilogue_per_row(acc.permute(0, 2, 3, 1).reshape(-1, Co), kw.long().repeat_interleave(OH * OW), spec)
    return rows.reshape(B, OH, OW, Co).permute(0, 3, 1, 2)


def elementwise(values: torch.Tensor, s: int, relu: bool, out_dtype) -> torch.Tensor:
    y = round_shift(values, torch.tensor(s))
    lo, hi = (0, 255) if out_dtype == torch.uint8 else (-128, 127)
    if relu:
        lo = max(lo, 0)
    return y.clamp(lo, hi).to(out_dtype)


def avg_pool(x, kernel, stride, padding):
    kh, kw = kernel
    total = F.avg_pool2d(x.double(), kernel, stride, padding, count_include_pad=True, divisor_override=1)
    total = total.round().long()
    count = kh * kw
    return torch.div(total + count // 2, count, rounding_mode="floor").to(x.dtype)


def adaptive_avg_pool(x, output_size):
    """torch's adaptive windows; each window's sum from torch (mean x count, exact in float64)."""
    OH, OW = output_size
    H, W = x.shape[2], x.shape[3]
    rows = torch.tensor([((o + 1) * H + OH - 1) // OH - (o * H) // OH for o in range(OH)])
    cols = torch.tensor([((o + 1) * W + OW - 1) // OW - (o * W) // OW for o in range(OW)])
    count = (rows[:, None] * cols[None, :]).long()
    total = (F.adaptive_avg_pool2d(x.double(), output_size) * count).round().long()
    return torch.div(total + count // 2, count, rounding_mode="floor").to(x.dtype)


# ----------------------------------------------------------------------------- transformer ops (section 10)


def bmm(a, b, ka, kb, b_token_axis, rule, multiplier=None, rshift=None, out_dtype=None):
    """a [G, M, K] @ b [G, K, N] in master units (int64), then the raw sum or the requantization."""
    a_top = 127 if a.dtype == torch.int8 else 255
    b_top = 127 if b.dtype == torch.int8 else 255
    ka = ka.long()[:, :, None]
    kb = kb.long()[:, None, :] if b_token_axis == -1 else kb.long()[:, :, None]
    A = shift(a, ka.expand(a.shape), rule, a_top) * 2**ka
    B = shift(b, kb.expand(b.shape), rule, b_top) * 2**kb
    v = (A[:, :, :, None] * B[:, None, :, :]).sum(2)
    if multiplier is None:
        return v.to(torch.int32)
    lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    return round_shift(v * multiplier, torch.full_like(v, rshift)).clamp(lo, hi).to(out_dtype)


def softmax(x, table, causal):
    """Row by row in Python ints (section 10.2)."""
    G, M, N = x.shape
    out = torch.zeros(G, M, N, dtype=torch.uint8)
    for g in range(G):
        for m in range(M):
            kept = range(m + N - M + 1) if causal else range(N)
            row = [int(x[g, m, n]) for n in kept]
            top = max(row)
            e = [int(table[top - v]) for v in row]
            s = sum(e)
            for n, en in zip(kept, e):
                out[g, m, n] = (510 * en + s) // (2 * s)
    return out


def layernorm(x, mult, offset, shift_, eps_units, out_dtype):
    """Row by row in Python ints with math.isqrt (section 10.3)."""
    import math

    R, C = x.shape
    lo, hi = (-128, 127) if out_dtype == torch.int8 else (0, 255)
    out = torch.zeros(R, C, dtype=out_dtype)
    for r in range(R):
        row = [int(v) for v in x[r]]
        total = sum(row)
        d = [C * v - total for v in row]
        q = sum(t * t for t in d) * 2**16 // C + eps_units
        root = math.isqrt(q)
        for c in range(C):
            n = (2 * d[c] * 2**20 + root) // (2 * root) if root else 0
            v = int(mult[c]) * n + int(offset[c])
            s = shift_ + 12
            out[r, c] = min(max((v + (1 << (s - 1))) >> s, lo), hi)
    return out
