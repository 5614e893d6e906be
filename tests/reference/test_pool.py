"""Integer pooling: max pool equals torch's, average pool equals the oracle's rounded mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import pool_case

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(pool_case(), st.sampled_from([1, 2]))
def test_max_pool_equals_torch(case, dilation):
    x, kernel, stride, padding = case
    if (x.shape[2] + 2 * padding[0] if padding else x.shape[2]) < dilation * (kernel[0] - 1) + 1 or \
            (x.shape[3] + 2 * padding[1] if padding else x.shape[3]) < dilation * (kernel[1] - 1) + 1:
        return
    out = dq.int_max_pool2d(x, kernel, stride, padding, dilation)
    want = F.max_pool2d(x.float(), kernel, stride, padding, dilation).to(x.dtype)
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
@given(pool_case(), st.sampled_from([1, 2]))
def test_max_pool_ceil_mode_equals_torch(case, dilation):
    x, kernel, stride, padding = case
    H, W = x.shape[2] + 2 * padding[0] if padding else x.shape[2], x.shape[3] + 2 * padding[1] if padding else x.shape[3]
    if H < dilation * (kernel[0] - 1) + 1 or W < dilation * (kernel[1] - 1) + 1:
        dilation = 1
    for backend in ("reference", "cpu"):
        out = dq.int_max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=True, backend=backend)
        want = F.max_pool2d(x.float(), kernel, stride, padding, dilation, ceil_mode=True).to(x.dtype)
        assert torch.equal(out, want)


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
