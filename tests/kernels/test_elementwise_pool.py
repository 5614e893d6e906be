"""Triton int_add / int_mul / pooling against the Numba reference, with exact equality."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests.kernels.device import on_device
from tests.strategies import CODE_DTYPES, elementwise_operands, fitting_dilation, pool_case

pytestmark = pytest.mark.interpreter

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

constants = st.integers(-(2**31) + 1, 2**31 - 1)
offsets = st.integers(-(2**47), 2**47)


@SETTINGS
@given(elementwise_operands(), constants, constants, offsets, st.integers(0, 62), st.booleans(),
       st.sampled_from(CODE_DTYPES))
def test_add_matches_reference(ab, k1, k2, k3, shift, relu, out_dtype):
    a, b = ab
    kwargs = dict(k1=k1, k2=k2, k3=k3, shift=shift, relu=relu, out_dtype=out_dtype)
    want = dq.int_add(a, b, backend="reference", **kwargs)
    got = dq.int_add(*on_device(a, b), backend="triton", **kwargs)
    assert got.stride() == want.stride() and torch.equal(got.cpu(), want)


@SETTINGS
@given(elementwise_operands(), constants, constants, constants, offsets, st.integers(0, 62), st.booleans(),
       st.sampled_from(CODE_DTYPES))
def test_mul_matches_reference(ab, k1, k2, k3, k4, shift, relu, out_dtype):
    a, b = ab
    kwargs = dict(k1=k1, k2=k2, k3=k3, k4=k4, shift=shift, relu=relu, out_dtype=out_dtype)
    want = dq.int_mul(a, b, backend="reference", **kwargs)
    got = dq.int_mul(*on_device(a, b), backend="triton", **kwargs)
    assert torch.equal(got.cpu(), want)


def test_constant_one_and_zero_shift_do_not_break_the_kernel():
    """Triton specialises int arguments equal to 1; the kernels opt out for their constants."""
    a = torch.tensor([-3, 0, 5, 127], dtype=torch.int8)
    for k1, shift in ((1, 0), (1, 1), (2, 1)):
        want = dq.int_add(a, a, k1=k1, k2=1, shift=shift, backend="reference")
        assert torch.equal(dq.int_add(on_device(a), on_device(a), k1=k1, k2=1, shift=shift, backend="triton").cpu(),
                           want)


@settings(SETTINGS, max_examples=45)
@given(pool_case(), st.sampled_from([1, 2]), st.booleans())
def test_max_pool_matches_reference(case, dilation, ceil_mode):
    x, kernel, stride, padding = case
    dilation = fitting_dilation(case, dilation)
    want = dq.int_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, backend="reference")
    got = dq.int_max_pool2d(on_device(x), kernel, stride, padding, dilation, ceil_mode=ceil_mode, backend="triton")
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got.cpu(), want)


@SETTINGS
@given(pool_case())
def test_avg_pool_matches_reference(case):
    """int8 windows with negative sums exercise the floor division (Triton's // truncates)."""
    x, kernel, stride, padding = case
    want = dq.int_avg_pool2d(x, kernel, stride, padding, backend="reference")
    got = dq.int_avg_pool2d(on_device(x), kernel, stride, padding, backend="triton")
    assert torch.equal(got.cpu(), want)


def test_global_average_pool_rounds_half_up_for_negative_sums():
    x = torch.tensor([[[[1, 2], [2, 2]]], [[[-1, -2], [-2, -2]]], [[[-1, -1], [0, 0]]]], dtype=torch.int8)
    got = dq.int_avg_pool2d(on_device(x), 2, backend="triton").cpu()
    assert got.flatten().tolist() == [2, -2, 0]  # 1.75 -> 2, -1.75 -> -2, -0.5 -> 0


@SETTINGS
@given(pool_case(), st.integers(1, 8), st.integers(1, 8))
def test_adaptive_avg_pool_matches_reference(case, oh, ow):
    x = case[0]
    want = dq.int_adaptive_avg_pool2d(x, (oh, ow), backend="reference")
    got = dq.int_adaptive_avg_pool2d(on_device(x), (oh, ow), backend="triton")
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got.cpu(), want)
