"""Integer pooling: max pool equals torch's, average pool equals the oracle's rounded mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import fitting_dilation, pool_case

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(SETTINGS, max_examples=90)
@given(pool_case(), st.sampled_from([1, 2]), st.booleans())
def test_max_pool_equals_torch(case, dilation, ceil_mode):
    x, kernel, stride, padding = case
    dilation = fitting_dilation(case, dilation)
    want = F.max_pool2d(x.float(), kernel, stride, padding, dilation, ceil_mode=ceil_mode).to(x.dtype)
    for backend in ("reference", "cpu"):
        out = dq.int_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode, backend=backend)
        assert torch.equal(out, want)


@SETTINGS
@given(pool_case())
def test_avg_pool_matches_oracle(case):
    x, kernel, stride, padding = case
    out = dq.int_avg_pool2d(x, kernel, stride, padding)
    want = oracle.avg_pool(x, kernel, stride if stride is not None else kernel, padding)
    assert torch.equal(out, want)


def test_global_average_pool_rounds_half_up():
    x = torch.tensor([[[[1, 2], [2, 2]]], [[[-1, -2], [-2, -2]]]], dtype=torch.int8)  # sums 7 and -7
    out = dq.int_avg_pool2d(x, 2)
    assert out.flatten().tolist() == [2, -2]  # 1.75 -> 2, -1.75 -> -2


@SETTINGS
@given(pool_case(), st.integers(1, 8), st.integers(1, 8))
def test_adaptive_avg_pool_matches_oracle(case, oh, ow):
    """Output sizes below, equal to and above the input's (windows overlap or repeat)."""
    x = case[0]
    want = oracle.adaptive_avg_pool(x, (oh, ow))
    for backend in ("reference", "cpu"):
        assert torch.equal(dq.int_adaptive_avg_pool2d(x, (oh, ow), backend=backend), want)


def test_adaptive_avg_pool_to_one_equals_global_average_pool():
    x = torch.randint(-128, 128, (2, 3, 5, 7), dtype=torch.int8)
    assert torch.equal(dq.int_adaptive_avg_pool2d(x, 1), dq.int_avg_pool2d(x, (5, 7)))
