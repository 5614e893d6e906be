"""Exactness of int_matmul against the oracle: pure Numba reference and the CPU GEMM path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import CODE_DTYPES, as_rows, codes, matmul_case

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected(x, w, ka, kw, rule, spec):
    acc = oracle.matmul_acc(x, w, as_rows(ka, x.shape[0]), as_rows(kw, x.shape[0]), rule)
    return oracle.epilogue(acc, spec["bias"], spec["mode"], spec["multiplier"], spec["rshift"], spec["scale"],
                           spec["relu"], spec["out_dtype"])


@SETTINGS
@given(matmul_case(), st.sampled_from(["reference", "cpu"]))
def test_matmul_matches_oracle(case, backend):
    x, w, ka, kw, rule, kwargs, spec = case
    out = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=backend, **kwargs)
    assert torch.equal(out, expected(x, w, ka, kw, rule, spec))


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
@pytest.mark.parametrize("rule", ["floor", "round"])
def test_large_reduction_uses_several_float32_chunks_exactly(x_dtype, rule):
    """K beyond one float32-exact chunk (514 for uint8 at shift 0) with saturated operands."""
    gen = torch.Generator().manual_seed(1)
    x = codes(gen, (40, 3000), x_dtype, extreme=True)
    w = codes(gen, (70, 3000), torch.int8, extreme=True)
    kw = torch.arange(40) % 8
    out = dq.int_matmul(x, w, act_shift=0, weight_shift=kw, shift_rule=rule, backend="cpu")
    acc = oracle.matmul_acc(x, w, torch.zeros(40, dtype=torch.long), kw, rule)
    assert torch.equal(out, acc.to(torch.int32))


def test_every_shift_every_rule_on_full_code_range():
    """Each x code 0..255 / -128..127 against each weight code, at all 64 shift pairs."""
    for x_dtype, lo, hi in ((torch.uint8, 0, 255), (torch.int8, -128, 127)):
        x = torch.arange(lo, hi + 1).to(x_dtype).reshape(-1, 1)
        w = torch.arange(-128, 128).to(torch.int8).reshape(-1, 1)
        for rule in ("floor", "round"):
            for ka in range(8):
                for kw in range(8):
                    out = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference")
                    rows = x.shape[0]
                    acc = oracle.matmul_acc(x, w, torch.full((rows,), ka), torch.full((rows,), kw), rule)
                    assert torch.equal(out, acc.to(torch.int32)), (x_dtype, rule, ka, kw)


def test_empty_batch_returns_empty_output():
    x = torch.zeros((0, 8), dtype=torch.uint8)
    w = torch.zeros((4, 8), dtype=torch.int8)
    out = dq.int_matmul(x, w, multiplier=1, shift=1)
    assert out.shape == (0, 4) and out.dtype == torch.int8
