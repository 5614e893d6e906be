"""Nesting property, dyadic constant accuracy, and the accumulator-width rule."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from dqt_triton import numerics as nm


def closed_form_code(y: Fraction, k: int, rule: str, signed: bool) -> int:
    """The b-bit code of a float whose master-scale value is y, written directly with D_b = D_n * 2^k.

    floor rule: floor(y / 2^k + 2^-(k+1)); round rule: floor(y / 2^k + 1/2 + 2^-(k+1)),
    both clamped to the b-bit range (docs/numerics.md, section 2.3).
    """
    offset = Fraction(1, 2 ** (k + 1)) + (Fraction(1, 2) if rule == "round" else 0)
    lo, hi = nm.code_range(8 - k, signed)
    return min(max(math.floor(y / 2**k + offset), lo), hi)


@settings(max_examples=400, deadline=None)
@given(
    st.floats(-300, 300, allow_nan=False, width=32) | st.integers(-300, 300).map(lambda v: v + 0.5),
    st.sampled_from([0.25, 0.0371, 1.0, 3.0]),
    st.integers(1, 7),
    st.sampled_from(["floor", "round"]),
    st.booleans(),
)
def test_shifted_master_code_equals_direct_quantization_at_lower_width(x, scale, k, rule, signed):
    """q_n >> k equals quantizing the same float at n-k bits with scale D_n * 2^k."""
    xt = torch.tensor([x], dtype=torch.float32)
    q = nm.quantize(xt, scale, signed)
    shifted = int(nm.nested_shift(q, k, signed, rule)[0])
    y = Fraction(float((xt / scale)[0]))  # the float value x / D_n as the quantizer computed it
    master_tie = y.denominator == 2
    if rule == "round" and k == 1 and master_tie:
        # Documented exception: round-half-even at the master width followed by a rounding
        # shift of 1 can be one code below a single rounding at 7 bits (double rounding at
        # ties), never above.
        assert shifted - closed_form_code(y, k, rule, signed) in (0, -1)
    else:
        assert shifted == closed_form_code(y, k, rule, signed)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("rule", ["floor", "round"])
def test_shifted_codes_fill_exactly_the_lower_width_range(signed, rule):
    lo, hi = nm.code_range(8, signed)
    q = torch.arange(lo, hi + 1)
    for k in range(8):
        out = nm.nested_shift(q, k, signed, rule)
        assert (int(out.min()), int(out.max())) == nm.code_range(8 - k, signed)
        assert bool((out[1:] >= out[:-1]).all())  # monotone


def test_floor_shifts_compose_and_rounding_shifts_do_not():
    q = torch.arange(-128, 128)
    for k1 in range(8):
        for k2 in range(8 - k1):
            assert torch.equal(nm.nested_shift(nm.nested_shift(q, k1, True), k2, True), nm.nested_shift(q, k1 + k2, True))
    twice = nm.nested_shift(nm.nested_shift(q, 1, True, "round"), 1, True, "round")
    assert not torch.equal(twice, nm.nested_shift(q, 2, True, "round"))


def test_torch_shift_agrees_with_the_kernels_shift():
    """numerics.nested_shift (training path) and the Numba kernels implement one rule."""
    eye = torch.ones((1, 1), dtype=torch.int8)
    for signed, dtype in ((True, torch.int8), (False, torch.uint8)):
        lo, hi = nm.code_range(8, signed)
        x = torch.arange(lo, hi + 1).to(dtype).reshape(-1, 1)
        for rule in ("floor", "round"):
            for k in range(8):
                raw = dq.int_matmul(x, eye, act_shift=k, shift_rule=rule, backend="reference")
                assert torch.equal((raw.long() >> k).flatten(), nm.nested_shift(x.flatten(), k, signed, rule).long())


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=2.0**-40, max_value=2.0**29, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_error_bound(real):
    m, s = nm.quantize_multiplier(real)
    assert nm.quantize_multiplier(-real) == (-m, s)  # negative ratios mirror positive ones
    assert 0 <= m <= nm.INT32_MAX and 0 <= s <= nm.MAX_REQUANT_SHIFT
    error = abs(Fraction(m, 2**s) - Fraction(real))
    assert error <= Fraction(1, 2 ** (s + 1))
    if s < nm.MAX_REQUANT_SHIFT:
        assert 2**30 <= m < 2**31
        assert error <= Fraction(real) * Fraction(1, 2**31)


def test_quantize_multiplier_rejects_bad_ratios():
    for bad in (float("nan"), float("inf"), 2.0**32, -(2.0**32)):
        with pytest.raises(ValueError, match="ratio"):
            nm.quantize_multiplier(bad)
    assert nm.quantize_multiplier(0.0) == (0, 1)


def test_requantization_with_converted_constants_is_within_one_code_of_float():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 200), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (16, 200), generator=gen).to(torch.int8)
    sx, sw, sy = 0.02, torch.rand(16, generator=gen) * 0.01 + 1e-3, 0.9
    mult, shift = nm.requant_constants(sx, sw, sy)
    out = dq.int_matmul(x, w, multiplier=mult, shift=shift, relu=True)
    real = (x.double() @ w.double().T) * sx * sw.double() / sy
    assert (out.double() - real.clamp(0, 255)).abs().max() <= 0.5 + 1e-6


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-4, 1e3), st.floats(1e-4, 1e3), st.floats(1e-4, 1e3))
def test_add_constants_represent_ratios(sa, sb, sy):
    c = nm.add_constants(sa, sb, sy)
    for k, r in ((c.k1, sa / sy), (c.k2, sb / sy)):
        assert abs(Fraction(k, 2**c.shift) - Fraction(r)) <= Fraction(1, 2 ** (c.shift + 1))
        assert abs(k) < 2**31
    if sa * sb / sy >= 2**30:  # beyond int32 constants: refused, not silently wrapped
        with pytest.raises(ValueError, match="too large"):
            nm.mul_constants(sa, sb, sy)
        return
    m = nm.mul_constants(sa, sb, sy)
    assert abs(Fraction(m.k1, 2**m.shift) - Fraction(sa * sb / sy)) <= Fraction(1, 2 ** (m.shift + 1))


def test_accumulator_rule_boundary_is_exact():
    # uint8 x int8: 255 * 128 per product; 65793 * 32640 <= 2^31 - 1 < 65794 * 32640
    nm.check_accumulator(65793, x_signed=False)
    with pytest.raises(dq.AccumulatorOverflowError, match="K=65794"):
        nm.check_accumulator(65794, x_signed=False)
    nm.check_accumulator(131071, x_signed=True)
    with pytest.raises(dq.AccumulatorOverflowError):
        nm.check_accumulator(131072, x_signed=True)
    with pytest.raises(dq.AccumulatorOverflowError, match="bias"):
        nm.check_accumulator(65536, x_signed=False, bias_abs_max=2**24)
    # The paper's sufficient rule 2n + ceil(log2 K) <= 32 admits K <= 2^16: always accepted here.
    nm.check_accumulator(2**16, x_signed=False)


def test_round_rule_double_rounding_at_master_ties_is_one_code_low():
    """docs/numerics.md 2.3: y = 0.5 rounds to master code 0 (half-to-even), whose rounding
    shift by 1 is 0, while the closed form gives 1; y = 1.5 rounds to 2 and agrees."""
    for y, low in ((0.5, True), (1.5, False), (-0.5, False), (2.5, True)):
        q = nm.quantize(torch.tensor([y]), 1.0, True)
        shifted = int(nm.nested_shift(q, 1, True, "round")[0])
        closed = closed_form_code(Fraction(y), 1, "round", True)
        assert shifted == closed - (1 if low else 0), (y, shifted, closed)


def test_dyadic_constants_round_ties_half_to_even_and_refuse_ratios_from_2_31_minus_half():
    """docs/numerics.md 4.1/4.2: Python's round (ties to even); |r| >= 2^31 - 1/2 is refused."""
    # mantissa * 2^31 exactly halfway between two integers: 2^30 + 1/2 -> 2^30, 2^30 + 3/2 -> 2^30 + 2.
    assert nm.quantize_multiplier((2**30 + 0.5) / 2**31) == (2**30, 31)
    assert nm.quantize_multiplier((2**30 + 1.5) / 2**31) == (2**30 + 2, 31)
    assert nm.quantize_multiplier(2.0**31 - 1) == (2**31 - 1, 0)
    with pytest.raises(ValueError, match="too large"):
        nm.quantize_multiplier(2.0**31 - 0.5)
    with pytest.raises(ValueError, match="too large"):
        nm.quantize_multiplier(2.0**31)
    # add and multiply: ratio 1 + 2^-30 at S = 29 puts k1 at 2^29 + 1/2 (even neighbour 2^29),
    # 1 + 3 * 2^-30 at 2^29 + 3/2 (even neighbour 2^29 + 2).
    for make in (lambda r: nm.add_constants(r, 1.0, 1.0), lambda r: nm.mul_constants(r, 1.0, 1.0)):
        assert (make(1.0 + 2.0**-30).shift, make(1.0 + 2.0**-30).k1) == (29, 2**29)
        assert make(1.0 + 3 * 2.0**-30).k1 == 2**29 + 2


@pytest.mark.parametrize("rule", ["floor", "round"])
@pytest.mark.parametrize("shape", [(5, 33), (6, 3, 3, 2)])
def test_shifted_weight_table_holds_every_shift_and_its_sums(rule, shape):
    gen = torch.Generator().manual_seed(1)
    w = torch.randint(-128, 128, shape, generator=gen).to(torch.int8)
    if len(shape) == 4:
        w = w.contiguous(memory_format=torch.channels_last)
    table, colsum = nm.shifted_weight_table(w, rule)
    assert table.dtype == torch.int8 and table.shape == (8, *shape) and colsum.shape == (8, shape[0])
    for k in range(8):
        row = nm.nested_shift(w, k, signed=True, rule=rule)
        assert torch.equal(table[k].to(torch.int16), row)
        assert torch.equal(colsum[k], row.to(torch.int32).flatten(1).sum(dim=1).to(torch.int32))
    if len(shape) == 4:
        assert table[3].is_contiguous(memory_format=torch.channels_last)
