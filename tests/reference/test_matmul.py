"""Exactness of int_matmul against the oracle: pure Numba reference and the CPU GEMM path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import CODE_DTYPES, as_rows, codes, matmul_case, width_epilogue_spec

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


@SETTINGS
@given(matmul_case(epilogue=width_epilogue_spec), st.sampled_from(["reference", "cpu"]))
def test_matmul_width_tables_match_oracle(case, backend):
    """[8, N] epilogue tables (one row per weight shift) mixed with [N] and scalar constants."""
    x, w, ka, kw, rule, kwargs, spec = case
    out = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=backend, **kwargs)
    want = oracle.matmul(x, w, as_rows(ka, x.shape[0]), as_rows(kw, x.shape[0]), rule, spec)
    assert torch.equal(out, want)


def stitched_matmul(x, w, ka, kw, tables: dict, backend, **kwargs):
    """One call per distinct weight shift with that width's [N] constants, rows put back in place."""
    out = None
    for k in kw.unique().tolist():
        rows = kw == k
        row_consts = {name: t[k] if isinstance(t, torch.Tensor) and t.dim() == 2 else t for name, t in tables.items()}
        part = dq.int_matmul(x[rows], w, act_shift=ka[rows], weight_shift=k, backend=backend, **row_consts, **kwargs)
        if out is None:
            out = torch.empty((x.shape[0], w.shape[0]), dtype=part.dtype)
        out[rows] = part
    return out


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
@pytest.mark.parametrize("kind", ["raw", "float", "requant_u8_relu", "requant_i8"])
def test_width_tables_equal_per_width_calls_stitched(backend, x_dtype, kind):
    """A batch with mixed weight shifts and [8, N] tables equals one per-channel call per width."""
    gen = torch.Generator().manual_seed(21)
    M, K, N = 17, 31, 23
    x = codes(gen, (M, K), x_dtype, extreme=False)
    w = codes(gen, (N, K), torch.int8, extreme=False)
    ka = torch.randint(0, 8, (M,), generator=gen)
    kw = torch.tensor([0, 3, 3, 7, 1, 0, 5, 3, 2, 7, 6, 4, 0, 1, 3, 5, 2])
    tables = {"bias": torch.randint(-(2**20), 2**20, (8, N), generator=gen, dtype=torch.int32)}
    extra: dict = {}
    if kind == "float":
        tables["out_scale"] = torch.rand(8, N, generator=gen) * 1e-4
    elif kind.startswith("requant"):
        tables["multiplier"] = torch.randint(-(2**31) + 1, 2**31, (8, N), generator=gen)
        tables["shift"] = torch.randint(30, 50, (N,), generator=gen)  # mixed: one [N] shift for every width
        extra = {"relu": True, "out_dtype": torch.uint8} if kind == "requant_u8_relu" else {"out_dtype": torch.int8}
    for rule in ("floor", "round"):
        out = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=backend, **tables, **extra)
        want = stitched_matmul(x, w, ka, kw, tables, backend, shift_rule=rule, **extra)
        assert out.dtype == want.dtype and torch.equal(out, want), rule


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_width_table_with_per_layer_shift_reads_that_row(backend):
    """A per-layer weight shift k reads row k of every table; a table with 8 equal rows is an [N] tensor."""
    gen = torch.Generator().manual_seed(22)
    x = codes(gen, (3, 13), torch.uint8, extreme=True)
    w = codes(gen, (5, 13), torch.int8, extreme=True)
    bias = torch.randint(-(2**16), 2**16, (8, 5), generator=gen, dtype=torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (8, 5), generator=gen)
    shift = torch.randint(30, 40, (8, 5), generator=gen)
    for k in range(8):
        out = dq.int_matmul(x, w, act_shift=1, weight_shift=k, bias=bias, multiplier=mult, shift=shift,
                            backend=backend)
        want = dq.int_matmul(x, w, act_shift=1, weight_shift=k, bias=bias[k], multiplier=mult[k], shift=shift[k],
                             backend=backend)
        assert torch.equal(out, want), k
    kw = torch.tensor([2, 0, 6])
    same = dq.int_matmul(x, w, weight_shift=kw, bias=bias[4].expand(8, 5).contiguous(), out_scale=0.25,
                         backend=backend)
    assert torch.equal(same, dq.int_matmul(x, w, weight_shift=kw, bias=bias[4], out_scale=0.25, backend=backend))
