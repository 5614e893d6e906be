"""Exactness of int_conv2d (pure Numba reference and the CPU GEMM path) against the oracle."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import as_rows, codes, conv_case

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(conv_case(), st.sampled_from(["reference", "cpu"]))
def test_conv_matches_oracle(case, backend):
    x, w, geometry, ka, kw, rule, kwargs, spec = case
    out = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=backend, **geometry, **kwargs)
    B = x.shape[0]
    acc = oracle.conv_acc(x, w, as_rows(ka, B), as_rows(kw, B), rule, **geometry)
    Bo, Co, OH, OW = acc.shape
    rows = acc.permute(0, 2, 3, 1).reshape(-1, Co)
    want = oracle.epilogue(rows, spec["bias"], spec["mode"], spec["multiplier"], spec["rshift"], spec["scale"],
                           spec["relu"], spec["out_dtype"]).reshape(Bo, OH, OW, Co).permute(0, 3, 1, 2)
    assert out.shape == want.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, want)


def test_resnet_layer_shape_both_backends_agree_with_mixed_per_sample_shifts():
    gen = torch.Generator().manual_seed(3)
    x = codes(gen, (4, 64, 16, 16), torch.uint8, extreme=False).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (64, 64, 3, 3), torch.int8, extreme=False)
    ka = torch.tensor([0, 4, 2, 6])
    kw = torch.tensor([1, 1, 5, 0])
    outs = [dq.int_conv2d(x, w, padding=1, act_shift=ka, weight_shift=kw, backend=b) for b in ("reference", "cpu")]
    acc = oracle.conv_acc(x, w, ka, kw, "floor", 1, 1, 1, 1)
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(outs[0], acc.to(torch.int32))
