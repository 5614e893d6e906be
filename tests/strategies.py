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
            mult = torch.randint(0, INT32_MAX, (n,), generator=gen, dtype=torch.int64)
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
