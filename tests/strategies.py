"""Hypothesis strategies shared by the exactness tests (odd shapes, extreme codes, mixed shifts)."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from dqt_triton.numerics import INT32_MAX

CODE_DTYPES = (torch.uint8, torch.int8)


def codes(gen: torch.Generator, shape, dtype, extreme: bool) -> torch.Tensor:
    """Random codes; `extreme` draws only from each range's ends to force saturation."""
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    if extreme:
        pick = torch.randint(0, 2, shape, generator=gen)
        return torch.where(pick == 1, torch.full(shape, hi), torch.full(shape, lo)).to(dtype)
    return torch.randint(lo, hi + 1, shape, generator=gen).to(dtype)


@st.composite
def shift_spec(draw, rows: int):
    """A per-layer int, or a per-sample tensor of mixed shifts in [0, 7]."""
    if draw(st.booleans()):
        return draw(st.integers(0, 7))
    values = draw(st.lists(st.integers(0, 7), min_size=rows, max_size=rows))
    return torch.tensor(values, dtype=draw(st.sampled_from([torch.int32, torch.int64, torch.uint8])))


def as_rows(shift, rows: int) -> torch.Tensor:
    if isinstance(shift, int):
        return torch.full((rows,), shift, dtype=torch.int64)
    return shift.long()


@st.composite
def epilogue_spec(draw, n: int, gen_seed: int):
    """Keyword arguments for one of the three epilogues, plus the oracle's view of them."""
    gen = torch.Generator().manual_seed(gen_seed)
    mode = draw(st.sampled_from(["raw", "requant", "float"]))
    relu = draw(st.booleans())
    kwargs: dict = {"relu": relu}
    bias = None
    if draw(st.booleans()):
        bias = torch.randint(-(2**20), 2**20, (n,), generator=gen, dtype=torch.int32)
        kwargs["bias"] = bias
    oracle = {"mode": mode, "relu": relu, "bias": bias if bias is not None else torch.zeros(n, dtype=torch.int32)}
    oracle.update(multiplier=torch.zeros(n), rshift=torch.zeros(n), scale=torch.zeros(n), out_dtype=None)
    if mode == "requant":
        out_dtype = draw(st.sampled_from([torch.uint8, torch.int8]))
        if draw(st.booleans()):
            # Power-of-two ratios put exact rounding ties on every odd accumulator.
            mult = torch.full((n,), 1, dtype=torch.int64)
            rshift = torch.full((n,), draw(st.integers(1, 12)), dtype=torch.int64)
        else:
            mult = torch.randint(-INT32_MAX, INT32_MAX + 1, (n,), generator=gen, dtype=torch.int64)
            rshift = torch.randint(20, 63, (n,), generator=gen, dtype=torch.int64)
        per_channel = draw(st.booleans())
        kwargs.update(multiplier=mult if per_channel else int(mult[0]), shift=rshift if per_channel else int(rshift[0]),
                      out_dtype=out_dtype)
        if not per_channel:
            mult, rshift = mult[:1].expand(n), rshift[:1].expand(n)
        oracle.update(multiplier=mult, rshift=rshift, out_dtype=out_dtype)
    elif mode == "float":
        scale = torch.rand(n, generator=gen, dtype=torch.float32) * 1e-3 + 1e-6
        kwargs["out_scale"] = scale
        oracle["scale"] = scale
    return kwargs, oracle


# Epilogue arguments per mode: (keyword of the op, key of the oracle spec).
_EPILOGUE_CONSTANTS = {
    "raw": [("bias", "bias")],
    "requant": [("bias", "bias"), ("multiplier", "multiplier"), ("shift", "rshift")],
    "float": [("bias", "bias"), ("out_scale", "scale")],
}


@st.composite
def width_epilogue_spec(draw, n: int, gen_seed: int):
    """Keyword arguments of an epilogue whose constants mix [8, n] width tables (one row per
    weight shift, e.g. a batch norm per bit-width folded in) with [n] tensors, scalars and no
    bias; at least one constant is a table. The oracle view holds an [8, n] table for each."""
    gen = torch.Generator().manual_seed(gen_seed)
    mode = draw(st.sampled_from(["raw", "requant", "float"]))
    relu = draw(st.booleans())
    tables = {"bias": torch.randint(-(2**20), 2**20, (8, n), generator=gen, dtype=torch.int32),
              "scale": torch.rand(8, n, generator=gen, dtype=torch.float32) * 1e-3 + 1e-6}
    if draw(st.booleans()):
        # Small multipliers over short shifts put exact rounding ties on many outputs.
        tables["multiplier"] = torch.randint(-3, 4, (8, n), generator=gen, dtype=torch.int64)
        tables["rshift"] = torch.randint(1, 13, (8, n), generator=gen, dtype=torch.int64)
    else:
        tables["multiplier"] = torch.randint(-INT32_MAX, INT32_MAX + 1, (8, n), generator=gen, dtype=torch.int64)
        tables["rshift"] = torch.randint(20, 63, (8, n), generator=gen, dtype=torch.int64)
    constants = _EPILOGUE_CONSTANTS[mode]
    forms = {key: draw(st.sampled_from(["none", "channel", "table"] if key == "bias" else ["scalar", "channel", "table"]))
             for _, key in constants}
    if "table" not in forms.values():
        forms[draw(st.sampled_from(sorted(forms)))] = "table"
    kwargs: dict = {"relu": relu}
    oracle = {"mode": mode, "relu": relu, "out_dtype": None, "bias": torch.zeros(8, n, dtype=torch.int32),
              "multiplier": torch.zeros(8, n), "rshift": torch.zeros(8, n), "scale": torch.zeros(8, n)}
    for arg, key in constants:
        table, form = tables[key], forms[key]
        row = table[draw(st.integers(0, 7))]
        if form == "table":
            kwargs[arg], oracle[key] = table, table
        elif form == "channel":
            kwargs[arg], oracle[key] = row, row[None, :].expand(8, n)
        elif form == "scalar":
            kwargs[arg], oracle[key] = row[0].item(), row[:1][None, :].expand(8, n)
    if mode == "requant":
        kwargs["out_dtype"] = oracle["out_dtype"] = draw(st.sampled_from([torch.uint8, torch.int8]))
    return kwargs, oracle


@st.composite
def matmul_case(draw, rows=(1, 2, 3, 7, 16, 17, 33), depths=(1, 5, 8, 13, 31, 64, 100, 257),
                cols=(1, 3, 8, 15, 32, 41), epilogue=None):
    """x, w, shifts, rule and epilogue of one matmul; odd sizes, saturation, mixed shifts."""
    M = draw(st.sampled_from(rows))
    K = draw(st.sampled_from(depths))
    N = draw(st.sampled_from(cols))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    extreme = draw(st.booleans())
    x = codes(gen, (M, K), draw(st.sampled_from(CODE_DTYPES)), extreme)
    w = codes(gen, (N, K), torch.int8, extreme)
    ka = draw(shift_spec(M))
    kw = draw(shift_spec(M))
    rule = draw(st.sampled_from(["floor", "round"]))
    kwargs, spec = draw((epilogue or epilogue_spec)(N, seed))
    return x, w, ka, kw, rule, kwargs, spec


@st.composite
def conv_case(draw, channels=(1, 3, 5, 8), kernels=(1, 3, 5, 7), max_extra=6, epilogue=None):
    """x, w, geometry, shifts, rule and epilogue of one conv2d (groups, depthwise, dilation)."""
    B = draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.sampled_from([1, 1, 2, "depthwise"]))
    cin_g = draw(st.sampled_from(channels))
    cout_g = draw(st.sampled_from([1, 2, 7]))
    if groups == "depthwise":
        groups, cin_g, cout_g = draw(st.sampled_from([3, 6])), 1, draw(st.sampled_from([1, 2]))
    KH = draw(st.sampled_from(kernels))
    KW = draw(st.sampled_from([KH, 1, 3]))
    stride = draw(st.sampled_from([1, 2, (1, 2)]))
    dilation = draw(st.sampled_from([1, 1, 2]))
    padding = draw(st.sampled_from([0, 1, KH // 2, (KH // 2, KW // 2)]))
    H = draw(st.integers(dilation * (KH - 1) + 1, dilation * (KH - 1) + max_extra))
    W = draw(st.integers(dilation * (KW - 1) + 1, dilation * (KW - 1) + max_extra))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    extreme = draw(st.booleans())
    x = codes(gen, (B, cin_g * groups, H, W), draw(st.sampled_from(CODE_DTYPES)), extreme)
    if draw(st.booleans()):
        x = x.contiguous(memory_format=torch.channels_last)
    w = codes(gen, (cout_g * groups, cin_g, KH, KW), torch.int8, extreme)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    kwargs, spec = draw((epilogue or epilogue_spec)(cout_g * groups, seed))
    return x, w, geometry, draw(shift_spec(B)), draw(shift_spec(B)), draw(st.sampled_from(["floor", "round"])), kwargs, spec


@st.composite
def elementwise_operands(draw):
    """Two code tensors of one shape, any dtype mix, sometimes channels_last."""
    shape = draw(st.sampled_from([(1,), (7,), (3, 5), (2, 3, 4, 5), (1, 8, 3, 3)]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    extreme = draw(st.booleans())
    a = codes(gen, shape, draw(st.sampled_from(CODE_DTYPES)), extreme)
    b = codes(gen, shape, draw(st.sampled_from(CODE_DTYPES)), extreme)
    if len(shape) == 4 and draw(st.booleans()):
        a = a.contiguous(memory_format=torch.channels_last)
    return a, b


def fitting_dilation(case, dilation: int) -> int:
    """`dilation` if the dilated kernel fits the padded input of a `pool_case`, else 1."""
    x, kernel, _, padding = case
    H, W = x.shape[2] + 2 * padding[0] if padding else x.shape[2], x.shape[3] + 2 * padding[1] if padding else x.shape[3]
    return dilation if H >= dilation * (kernel[0] - 1) + 1 and W >= dilation * (kernel[1] - 1) + 1 else 1


@st.composite
def pool_case(draw):
    """Codes plus kernel, stride and padding of one pooling call."""
    k = draw(st.sampled_from([1, 2, 3, (2, 3)]))
    kh, kw = (k, k) if isinstance(k, int) else k
    stride = draw(st.sampled_from([None, 1, 2]))
    padding = draw(st.sampled_from([0, (kh // 2, kw // 2)]))
    H = draw(st.integers(kh * 2, 9))
    W = draw(st.integers(kw * 2, 9))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = codes(gen, (draw(st.integers(1, 3)), draw(st.integers(1, 5)), H, W), draw(st.sampled_from(CODE_DTYPES)),
              draw(st.booleans()))
    return x, (kh, kw), stride, padding
