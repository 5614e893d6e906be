"""The transformer ops (docs/numerics.md section 10) on the reference and cpu backends against
the independent oracle, bit for bit; the softmax and LayerNorm errors against float64; bad
inputs named. The Triton kernels are checked against the reference in
tests/kernels/test_transformer_kernels.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dqt_triton import numerics
from dqt_triton.ops_transformer import int_bmm, int_embedding, int_layernorm, int_softmax
from tests import oracle

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CPU_BACKENDS = ("reference", "cpu")
DTYPES = (torch.int8, torch.uint8)


def _codes(gen: torch.Generator, shape, dtype, extreme: bool = False) -> torch.Tensor:
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    if extreme:  # only the two ends of the range: the largest products and sums
        return torch.where(torch.rand(shape, generator=gen) < 0.5, lo, hi).to(dtype)
    return torch.randint(lo, hi + 1, shape, generator=gen).to(dtype)


@SETTINGS
@given(seed=st.integers(0, 2**31), G=st.integers(1, 3), M=st.integers(1, 6), K=st.integers(1, 40),
       N=st.integers(1, 6), a_dtype=st.sampled_from(DTYPES), b_dtype=st.sampled_from(DTYPES),
       rule=st.sampled_from(("floor", "round")), on_n=st.booleans(), requant=st.booleans(), extreme=st.booleans())
def test_bmm_equals_the_oracle(seed, G, M, K, N, a_dtype, b_dtype, rule, on_n, requant, extreme):
    gen = torch.Generator().manual_seed(seed)
    a, b = _codes(gen, (G, M, K), a_dtype, extreme), _codes(gen, (G, K, N), b_dtype, extreme)
    ka = torch.randint(0, 8, (G, M), generator=gen)
    kb = torch.randint(0, 8, (G, N if on_n else K), generator=gen)
    axis = -1 if on_n else -2
    kwargs = {}
    if requant:
        kwargs = dict(multiplier=int(torch.randint(-(2**31) + 1, 2**31, (), generator=gen)),
                      shift=int(torch.randint(20, 63, (), generator=gen)), out_dtype=a_dtype)
    want = oracle.bmm(a, b, ka, kb, axis, rule, kwargs.get("multiplier"), kwargs.get("shift"), kwargs.get("out_dtype"))
    for backend in CPU_BACKENDS:
        got = int_bmm(a, b, a_shift=ka, b_shift=kb, b_token_axis=axis, shift_rule=rule, backend=backend, **kwargs)
        assert torch.equal(got, want), backend


def test_bmm_takes_matmul_shapes_and_int_shifts():
    gen = torch.Generator().manual_seed(1)
    q, k = _codes(gen, (2, 3, 5, 4), torch.int8), _codes(gen, (2, 3, 5, 4), torch.int8)
    for backend in CPU_BACKENDS:
        got = int_bmm(q, k.transpose(-2, -1), a_shift=2, b_shift=1, b_token_axis=-1, backend=backend)
        want = oracle.bmm(q.reshape(6, 5, 4), k.transpose(-2, -1).reshape(6, 4, 5), torch.full((6, 5), 2),
                          torch.full((6, 5), 1), -1, "floor")
        assert got.shape == (2, 3, 5, 5) and torch.equal(got.reshape(6, 5, 5), want)
        # one shift per token of each sample, shared by its heads
        per_token = torch.randint(0, 8, (2, 1, 5), generator=gen)
        got = int_bmm(q, k.transpose(-2, -1), a_shift=per_token, b_shift=per_token, b_token_axis=-1, backend=backend)
        shifts = per_token.expand(2, 3, 5).reshape(6, 5)
        assert torch.equal(got.reshape(6, 5, 5), oracle.bmm(q.reshape(6, 5, 4), k.transpose(-2, -1).reshape(6, 4, 5),
                                                            shifts, shifts, -1, "floor"))


@SETTINGS
@given(seed=st.integers(0, 2**31), G=st.integers(1, 3), M=st.integers(1, 7), extra=st.integers(0, 5),
       dtype=st.sampled_from(DTYPES), causal=st.booleans(), step=st.floats(1e-3, 2.0), flat=st.booleans())
def test_softmax_equals_the_oracle(seed, G, M, extra, dtype, causal, step, flat):
    gen = torch.Generator().manual_seed(seed)
    x = _codes(gen, (G, M, M + extra), dtype)
    if flat:  # equal codes in a row: every kept column ties with the top
        x[:, 0] = x[:, 0, :1]
    table = numerics.softmax_table(step)
    want = oracle.softmax(x, table, causal)
    for backend in CPU_BACKENDS:
        assert torch.equal(int_softmax(x, table, causal=causal, backend=backend), want), backend


def _softmax_bound(columns: int) -> float:
    return 1 / 510 + (columns + 1) / (2**16 - columns)


@pytest.mark.parametrize("columns", [4, 64, 256])
def test_softmax_error_against_float_is_within_the_stated_bound(columns):
    """docs/numerics.md 10.2: |p / 255 - softmax| <= 1/510 + (N + 1) / (2^16 - N)."""
    gen = torch.Generator().manual_seed(columns)
    worst = 0.0
    for step in (0.01, 0.05, 0.2, 1.0):
        x = _codes(gen, (8, 4, columns), torch.int8)
        p = int_softmax(x, numerics.softmax_table(step)).double() / 255
        exact = torch.softmax(x.double() * step, dim=-1)
        worst = max(worst, float((p - exact).abs().max()))
    assert worst <= _softmax_bound(columns)
    assert worst > 1 / 1020  # the bound is not vacuous: output rounding alone reaches about 1/510


@SETTINGS
@given(seed=st.integers(0, 2**31), R=st.integers(1, 4), C=st.integers(1, 50), dtype=st.sampled_from(DTYPES),
       out_dtype=st.sampled_from(DTYPES), constant_row=st.booleans(), eps=st.sampled_from((0.0, 1e-5, 1e-2)))
def test_layernorm_equals_the_oracle(seed, R, C, dtype, out_dtype, constant_row, eps):
    gen = torch.Generator().manual_seed(seed)
    x = _codes(gen, (R, C), dtype)
    if constant_row:  # zero variance: the output is beta alone
        x[0] = x[0, 0]
    c = numerics.layernorm_constants(torch.randn(C, generator=gen) * 2, torch.randn(C, generator=gen),
                                     C, 0.05, 0.03, eps)
    want = oracle.layernorm(x, c.mult, c.offset, c.shift, c.eps_units, out_dtype)
    for backend in CPU_BACKENDS:
        got = int_layernorm(x, c.mult, c.offset, shift=c.shift, eps_units=c.eps_units, out_dtype=out_dtype,
                            backend=backend)
        assert torch.equal(got, want), backend


def test_layernorm_extreme_rows_and_widest_channels():
    gen = torch.Generator().manual_seed(3)
    C = numerics.LN_MAX_CHANNELS
    x = torch.where(torch.rand(2, C, generator=gen) < 0.5, -128, 127).to(torch.int8)
    c = numerics.layernorm_constants(torch.full((C,), 3.0), torch.full((C,), -1.0), C, 1.0, 0.01, 0.0)
    a, b = (int_layernorm(x, c.mult, c.offset, shift=c.shift, eps_units=c.eps_units, backend=be)
            for be in CPU_BACKENDS)
    assert torch.equal(a, b)
    # -128 / 127 in equal measure normalise to about -1 / +1: 3 * (+-1) - 1 = 2 or -4 real, 200 / -400 codes
    assert set(torch.unique(a).tolist()) == {-128, 127}


def test_layernorm_error_against_float_is_at_most_one_code():
    """docs/numerics.md 10.3: every output code within one code of float64 LayerNorm of the same
    codes rounded to the output step; most codes equal it."""
    gen = torch.Generator().manual_seed(4)
    differ = total = 0
    for C, spread in ((16, 30), (64, 5), (192, 60)):
        x = (torch.randn(32, C, generator=gen) * spread).round().clamp(-128, 127).to(torch.int8)
        gamma, beta = torch.randn(C, generator=gen).abs() + 0.5, torch.randn(C, generator=gen) * 0.3
        in_step, out_step, eps = 0.02, 0.03, 1e-5
        c = numerics.layernorm_constants(gamma, beta, C, in_step, out_step, eps)
        got = int_layernorm(x, c.mult, c.offset, shift=c.shift, eps_units=c.eps_units).long()
        ref = torch.nn.functional.layer_norm(x.double() * in_step, (C,), gamma.double(), beta.double(), eps)
        want = torch.floor(ref / out_step + 0.5).clamp(-128, 127).long()
        assert int((got - want).abs().max()) <= 1
        differ += int((got != want).sum())
        total += got.numel()
    assert differ / total < 0.01


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_embedding_is_the_table_row_of_each_id(backend):
    gen = torch.Generator().manual_seed(5)
    table = _codes(gen, (40, 6), torch.int8)
    ids = torch.randint(0, 40, (3, 7), generator=gen).to(torch.uint8)
    got = int_embedding(ids, table, backend=backend)
    assert got.shape == (3, 7, 6) and torch.equal(got, table[ids.long()])


def test_bad_inputs_are_named():
    x8 = torch.zeros(2, 4, 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="equal leading axes"):
        int_bmm(x8, torch.zeros(2, 5, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="shift range"):
        int_bmm(x8, x8, a_shift=8)
    with pytest.raises(ValueError, match="one shift per token"):
        int_bmm(x8, x8, b_shift=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="b_token_axis"):
        int_bmm(x8, x8, b_token_axis=0)
    with pytest.raises(ValueError, match="overflow"):
        int_bmm(torch.zeros(1, 1, 33_100, dtype=torch.uint8), torch.zeros(1, 33_100, 1, dtype=torch.uint8))
    with pytest.raises(TypeError, match="multiplier and shift"):
        int_bmm(x8, x8, multiplier=3)
    with pytest.raises(ValueError, match="table must be int32 with 256"):
        int_softmax(x8, torch.zeros(255, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"table\[0\] >= 1"):
        int_softmax(x8, torch.zeros(256, dtype=torch.int32))
    with pytest.raises(ValueError, match="M <= N"):
        int_softmax(torch.zeros(1, 5, 4, dtype=torch.int8), numerics.softmax_table(0.1), causal=True)
    c = numerics.layernorm_constants(None, None, 4, 0.1, 0.1, 1e-5)
    with pytest.raises(ValueError, match="mult must be int32"):
        int_layernorm(torch.zeros(2, 5, dtype=torch.int8), c.mult, c.offset, shift=c.shift, eps_units=c.eps_units)
    with pytest.raises(ValueError, match="token ids must lie in"):
        int_embedding(torch.tensor([0, 9], dtype=torch.uint8), torch.zeros(9, 2, dtype=torch.int8))
    with pytest.raises(ValueError, match="too large"):
        numerics.layernorm_constants(torch.full((2,), 1e12), None, 2, 0.1, 0.1, 1e-5)


@pytest.mark.parametrize("shape", [(0,), (2, 0, 3), (2, 3, 0), (0, 3, 3)])
def test_empty_inputs_give_empty_outputs(shape):
    x = torch.zeros(shape, dtype=torch.int8)
    for backend in CPU_BACKENDS:
        assert int_softmax(x, numerics.softmax_table(0.1), backend=backend).shape == shape


def test_softmax_table_is_the_rounded_exponential():
    table = numerics.softmax_table(0.1)
    want = [math.floor(2**15 * math.exp(-d * 0.1) + 0.5) for d in range(256)]
    assert table.tolist() == want and table.dtype == torch.int32
