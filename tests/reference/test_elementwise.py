"""Exactness of int_add / int_mul against the oracle, including saturation and rounding ties."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import CODE_DTYPES, elementwise_operands

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


constants = st.integers(-(2**31) + 1, 2**31 - 1)
offsets = st.integers(-(2**47), 2**47)


@SETTINGS
@given(elementwise_operands(), constants, constants, offsets, st.integers(0, 62), st.booleans(), st.sampled_from(CODE_DTYPES))
def test_add_matches_oracle(ab, k1, k2, k3, shift, relu, out_dtype):
    a, b = ab
    out = dq.int_add(a, b, k1=k1, k2=k2, k3=k3, shift=shift, relu=relu, out_dtype=out_dtype)
    want = oracle.elementwise(k1 * a.long() + k2 * b.long() + k3, shift, relu, out_dtype)
    assert out.shape == a.shape and torch.equal(out, want)


@SETTINGS
@given(elementwise_operands(), constants, constants, constants, offsets, st.integers(0, 62), st.booleans(),
       st.sampled_from(CODE_DTYPES))
def test_mul_matches_oracle(ab, k1, k2, k3, k4, shift, relu, out_dtype):
    a, b = ab
    qa, qb = a.long(), b.long()
    out = dq.int_mul(a, b, k1=k1, k2=k2, k3=k3, k4=k4, shift=shift, relu=relu, out_dtype=out_dtype)
    want = oracle.elementwise(k1 * qa * qb + k2 * qa + k3 * qb + k4, shift, relu, out_dtype)
    assert torch.equal(out, want)


def test_rounding_ties_go_up():
    a = torch.tensor([1, 3, 5, -1, -3], dtype=torch.int8)
    zero = torch.zeros_like(a)
    out = dq.int_add(a, zero, k1=1, k2=0, shift=1)
    assert out.tolist() == [1, 2, 3, 0, -1]  # x.5 rounds toward +infinity
