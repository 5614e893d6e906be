"""Integer pooling: max pool equals torch's, average pool equals the oracle's rounded mean."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import CODE_DTYPES, codes

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pool_case(draw):
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
