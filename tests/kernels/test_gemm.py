"""Triton int_matmul / int_conv2d against the Numba reference, with exact equality.

Under TRITON_INTERPRET=1 (CI) the kernels run on CPU tensors; on a machine with a GPU the same
tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

import dqt_triton as dq
from dqt_triton.kernels.gemm import weight_shift_buckets
from tests import oracle
from tests.kernels.device import DEVICE, kwargs_on_device, on_device
from tests.strategies import CODE_DTYPES, as_rows, codes, conv_case, matmul_case, width_epilogue_spec

pytestmark = pytest.mark.interpreter

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def triton_matmul(x, w, ka, kw, **kwargs):
    x_d, w_d, ka_d, kw_d = on_device(x, w, ka, kw)
    out = dq.int_matmul(x_d, w_d, act_shift=ka_d, weight_shift=kw_d, backend="triton", **kwargs_on_device(kwargs))
    assert out.device.type == DEVICE.type
    return out.cpu()


def triton_conv(x, w, ka, kw, **kwargs):
    x_d, w_d, ka_d, kw_d = on_device(x, w, ka, kw)
    out = dq.int_conv2d(x_d, w_d, act_shift=ka_d, weight_shift=kw_d, backend="triton", **kwargs_on_device(kwargs))
    assert out.is_contiguous(memory_format=torch.channels_last)
    return out.cpu()


@settings(SETTINGS, max_examples=20)
@given(matmul_case(cols=(1, 3, 15, 32, 41, 70)))
def test_matmul_matches_reference(case):
    x, w, ka, kw, rule, kwargs, _ = case
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference", **kwargs)
    got = triton_matmul(x, w, ka, kw, shift_rule=rule, **kwargs)
    assert got.dtype == want.dtype and torch.equal(got, want)


@settings(SETTINGS, max_examples=20)
@given(conv_case(channels=(1, 3, 5, 8, 35), kernels=(1, 3, 7), max_extra=3))
def test_conv_matches_reference(case):
    x, w, geometry, ka, kw, rule, kwargs, _ = case
    want = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference",
                         **geometry, **kwargs)
    got = triton_conv(x, w, ka, kw, shift_rule=rule, **geometry, **kwargs)
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
@pytest.mark.parametrize("rule", ["floor", "round"])
def test_all_64_shift_pairs_in_one_mixed_batch(x_dtype, rule):
    """Every (act, weight) shift pair as a per-sample choice, on saturated codes: 64 rows in 8
    weight-shift buckets, each bucket 8 rows (not a multiple of the tile)."""
    gen = torch.Generator().manual_seed(7)
    x = codes(gen, (64, 45), x_dtype, extreme=True)
    w = codes(gen, (37, 45), torch.int8, extreme=True)
    pairs = torch.randperm(64, generator=gen)
    ka, kw = pairs % 8, pairs // 8
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference")
    assert torch.equal(triton_matmul(x, w, ka, kw, shift_rule=rule), want)


@pytest.mark.parametrize("weight_shift", [0, "mixed"])
def test_every_activation_code_at_every_shift(weight_shift):
    """Each uint8 code at each activation shift (2,048 rows, K = 1) against 32 weight codes at
    the range ends and around the powers of two: the unsigned offset trick and the rounding
    clamp at the top are checked code by code."""
    x = torch.arange(256).repeat_interleave(8).to(torch.uint8).reshape(-1, 1)
    ka = torch.arange(8).repeat(256)
    w_codes = [-128, -127, -65, -64, -63, -33, -32, -31, -17, -16, -15, -9, -8, -7, -3, -2,
               -1, 0, 1, 2, 3, 7, 8, 9, 15, 16, 31, 32, 63, 64, 126, 127]
    w = torch.tensor(w_codes, dtype=torch.int8).reshape(-1, 1)
    kw = torch.arange(2048) % 7 if weight_shift == "mixed" else weight_shift
    for rule in ("floor", "round"):
        want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference")
        assert torch.equal(triton_matmul(x, w, ka, kw, shift_rule=rule), want), rule


def test_uneven_buckets_over_many_tiles():
    """150 rows with random weight shifts: buckets straddle tiles, some are empty."""
    gen = torch.Generator().manual_seed(11)
    x = codes(gen, (150, 40), torch.uint8, extreme=False)
    w = codes(gen, (20, 40), torch.int8, extreme=False)
    ka = torch.randint(0, 8, (150,), generator=gen)
    kw = torch.tensor([0, 2, 2, 5, 7])[torch.randint(0, 5, (150,), generator=gen)]
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, backend="reference", relu=True,
                         multiplier=1 << 30, shift=33)
    assert torch.equal(triton_matmul(x, w, ka, kw, relu=True, multiplier=1 << 30, shift=33), want)


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
def test_matmul_reads_strided_operands_in_place(x_dtype):
    """x as a transposed view (K stride = M) and w as every other row and column of a larger
    tensor: the kernel rebuilds its K offsets from the strides each step, over several K tiles."""
    gen = torch.Generator().manual_seed(5)
    x = codes(gen, (70, 37), x_dtype, extreme=True).t()  # [37, 70] with strides (1, 37)
    w = codes(gen, (18, 140), torch.int8, extreme=True)[::2, ::2]  # [9, 70] with strides (280, 2)
    assert not x.is_contiguous() and not w.is_contiguous()
    ka = torch.randint(0, 8, (37,), generator=gen)
    kw = torch.randint(0, 8, (37,), generator=gen)
    for kwargs in ({}, {"relu": True, "multiplier": 1 << 30, "shift": 33}):
        want = dq.int_matmul(x.contiguous(), w.contiguous(), act_shift=ka, weight_shift=kw, backend="reference",
                             **kwargs)
        assert torch.equal(triton_matmul(x, w, ka, kw, **kwargs), want)


@pytest.mark.parametrize("out_dtype", CODE_DTYPES)
def test_requant_rounding_ties_go_up(out_dtype):
    """multiplier 1 with shift 1: every odd accumulator is an exact tie, negative ones too."""
    x = torch.tensor([[1], [3], [-1], [-3], [5]], dtype=torch.int8)
    w = torch.tensor([[1], [-1]], dtype=torch.int8)
    want = dq.int_matmul(x, w, multiplier=1, shift=1, out_dtype=out_dtype, backend="reference")
    got = triton_matmul(x, w, 0, 0, multiplier=1, shift=1, out_dtype=out_dtype)
    assert torch.equal(got, want)
    if out_dtype == torch.int8:
        assert got[:, 0].tolist() == [1, 2, 0, -1, 3]


def test_conv_resnet_block_shape_with_mixed_shifts():
    gen = torch.Generator().manual_seed(5)
    x = codes(gen, (2, 40, 6, 6), torch.uint8, extreme=False).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (48, 40, 3, 3), torch.int8, extreme=False)
    bias = torch.randint(-(2**16), 2**16, (48,), generator=gen, dtype=torch.int32)
    kwargs = dict(padding=1, bias=bias, multiplier=torch.randint(2**30, 2**31 - 1, (48,), generator=gen),
                  shift=torch.randint(40, 50, (48,), generator=gen), relu=True)
    ka, kw = torch.tensor([0, 3]), torch.tensor([4, 1])
    want = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, backend="reference", **kwargs)
    assert torch.equal(triton_conv(x, w, ka, kw, **kwargs), want)


def test_conv_accepts_nchw_input_and_stem_shapes():
    """A 7x7 stride-2 stem on 3 channels, NCHW input, float epilogue."""
    gen = torch.Generator().manual_seed(6)
    x = codes(gen, (1, 3, 11, 9), torch.uint8, extreme=False)
    w = codes(gen, (16, 3, 7, 7), torch.int8, extreme=False)
    kwargs = dict(stride=2, padding=3, out_scale=torch.rand(16, generator=gen) * 1e-4)
    want = dq.int_conv2d(x, w, act_shift=2, weight_shift=1, backend="reference", **kwargs)
    assert torch.equal(triton_conv(x, w, 2, 1, **kwargs), want)


def test_weight_shift_buckets_sort_and_count_on_device():
    kw = torch.tensor([3, 0, 3, 7, 1, 0], dtype=torch.int32)
    bucketed, order, start = weight_shift_buckets(kw, 6)
    assert bucketed
    assert order.tolist() == [1, 5, 4, 0, 2, 3]  # stable within a bucket
    assert start.tolist() == [0, 2, 3, 3, 5, 5, 5, 5, 6]  # samples with a shift below s
    assert not weight_shift_buckets(kw[:1], 6)[0]


def test_empty_batch():
    x = torch.zeros((0, 8), dtype=torch.uint8, device=DEVICE)
    w = torch.zeros((4, 8), dtype=torch.int8, device=DEVICE)
    assert dq.int_matmul(x, w, backend="triton").shape == (0, 4)
    xc = torch.zeros((0, 3, 5, 5), dtype=torch.uint8, device=DEVICE)
    wc = torch.zeros((4, 3, 3, 3), dtype=torch.int8, device=DEVICE)
    assert dq.int_conv2d(xc, wc, backend="triton").shape == (0, 4, 3, 3)


# ----------------------------------------------------------------------------- width tables


@settings(SETTINGS, max_examples=20)
@given(matmul_case(rows=(1, 3, 17), depths=(1, 5, 13, 45), cols=(1, 3, 15, 23, 41), epilogue=width_epilogue_spec))
def test_matmul_width_tables_match_reference_and_oracle(case):
    """[8, N] epilogue tables mixed with [N] and scalar constants, per-layer or per-sample shifts."""
    x, w, ka, kw, rule, kwargs, spec = case
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference", **kwargs)
    got = triton_matmul(x, w, ka, kw, shift_rule=rule, **kwargs)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(want, oracle.matmul(x, w, as_rows(ka, x.shape[0]), as_rows(kw, x.shape[0]), rule, spec))


@settings(SETTINGS, max_examples=15)
@given(conv_case(channels=(1, 3, 8, 35), kernels=(1, 3), max_extra=3, epilogue=width_epilogue_spec))
def test_conv_width_tables_match_reference_and_oracle(case):
    x, w, geometry, ka, kw, rule, kwargs, spec = case
    want = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference",
                         **geometry, **kwargs)
    got = triton_conv(x, w, ka, kw, shift_rule=rule, **geometry, **kwargs)
    assert got.shape == want.shape and torch.equal(got, want)
    B = x.shape[0]
    assert torch.equal(want, oracle.conv2d(x, w, as_rows(ka, B), as_rows(kw, B), rule, spec, **geometry))


WIDTH_KINDS = ["raw", "float", "requant_u8_relu", "requant_i8"]


def width_table_epilogue(kind: str, n: int, gen: torch.Generator) -> tuple[dict, dict]:
    """(op keyword arguments, oracle spec) for one epilogue kind whose constants are mostly
    [8, n] width tables, with one [n] constant mixed in where the epilogue has several."""
    bias = torch.randint(-(2**20), 2**20, (8, n), generator=gen, dtype=torch.int32)
    kwargs: dict = {"bias": bias}
    spec = {"mode": kind.split("_")[0], "relu": False, "out_dtype": None, "bias": bias,
            "multiplier": torch.zeros(n), "rshift": torch.zeros(n), "scale": torch.zeros(n)}
    if kind == "float":
        kwargs["out_scale"] = spec["scale"] = torch.rand(8, n, generator=gen) * 1e-4 + 1e-7
        kwargs["bias"] = spec["bias"] = bias[3]  # [n] bias with a scale table
    elif kind.startswith("requant"):
        kwargs["multiplier"] = spec["multiplier"] = torch.randint(-(2**31) + 1, 2**31, (8, n), generator=gen)
        kwargs["shift"] = spec["rshift"] = torch.randint(36, 52, (n,), generator=gen)
        relu = kind == "requant_u8_relu"
        kwargs.update(relu=relu, out_dtype=torch.uint8 if relu else torch.int8)
        spec.update(relu=relu, out_dtype=kwargs["out_dtype"])
    return kwargs, spec


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
@pytest.mark.parametrize("kind", WIDTH_KINDS)
@pytest.mark.parametrize("per_sample", [False, True])
def test_matmul_width_tables_all_backends_equal_oracle(x_dtype, kind, per_sample):
    """reference == cpu == triton == oracle for width tables; M in {1, 3, 17}, N = 23, K = 13."""
    gen = torch.Generator().manual_seed(41)
    K, N = 13, 23
    w = codes(gen, (N, K), torch.int8, extreme=False)
    kwargs, spec = width_table_epilogue(kind, N, gen)
    for M in (1, 17) if per_sample else (3,):
        x = codes(gen, (M, K), x_dtype, extreme=M == 1)
        ka = torch.randint(0, 8, (M,), generator=gen)
        kw = torch.randint(0, 8, (M,), generator=gen) if per_sample else 5
        for rule in ("floor", "round"):
            outs = [dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=b, **kwargs)
                    for b in ("reference", "cpu")]
            outs.append(triton_matmul(x, w, ka, kw, shift_rule=rule, **kwargs))
            want = oracle.matmul(x, w, ka, as_rows(kw, M), rule, spec)
            assert all(o.dtype == want.dtype and torch.equal(o, want) for o in outs), (M, rule)


# CI: each epilogue kind, with and without per-sample shifts, on one code dtype (alternating);
# -m slow adds the other dtype.
@pytest.mark.parametrize(("x_dtype", "kind", "per_sample"), [
    pytest.param(x_dtype, kind, per_sample, marks=[] if d == (k + per_sample) % 2 else [pytest.mark.slow])
    for k, kind in enumerate(WIDTH_KINDS) for per_sample in (False, True) for d, x_dtype in enumerate(CODE_DTYPES)])
def test_conv_width_tables_all_backends_equal_oracle(x_dtype, kind, per_sample):
    """reference == cpu == triton == oracle for width tables on a 3x3 conv with Cout = 10."""
    gen = torch.Generator().manual_seed(42)
    B = 3
    x = codes(gen, (B, 5, 5, 6), x_dtype, extreme=False).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (10, 5, 3, 3), torch.int8, extreme=False)
    kwargs, spec = width_table_epilogue(kind, 10, gen)
    ka = torch.tensor([1, 0, 6])
    kw = torch.tensor([2, 7, 2]) if per_sample else 4
    for rule in ("floor", "round"):
        outs = [dq.int_conv2d(x, w, padding=1, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=b, **kwargs)
                for b in ("reference", "cpu")]
        outs.append(triton_conv(x, w, ka, kw, padding=1, shift_rule=rule, **kwargs))
        want = oracle.conv2d(x, w, ka, as_rows(kw, B), rule, spec, 1, 1, 1, 1)
        assert all(torch.equal(o, want) for o in outs), rule


def test_width_tables_over_many_tiles_and_buckets():
    """150 rows in uneven weight-shift buckets over several M and N tiles: every tile reads the
    table row of its own bucket."""
    gen = torch.Generator().manual_seed(43)
    x = codes(gen, (150, 40), torch.int8, extreme=False)
    w = codes(gen, (70, 40), torch.int8, extreme=False)
    ka = torch.randint(0, 8, (150,), generator=gen)
    kw = torch.tensor([0, 2, 2, 5, 7])[torch.randint(0, 5, (150,), generator=gen)]
    kwargs = dict(bias=torch.randint(-(2**20), 2**20, (8, 70), generator=gen, dtype=torch.int32),
                  multiplier=torch.randint(2**30, 2**31 - 1, (8, 70), generator=gen),
                  shift=torch.randint(30, 40, (8, 70), generator=gen), relu=True)
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, backend="reference", **kwargs)
    assert torch.equal(triton_matmul(x, w, ka, kw, **kwargs), want)


def _prepared_triton(x, w, ka, kw, rule, kwargs, conv=None):
    """A prepared layer (the frozen program's path: the kernels read pre-shifted weights)."""
    x_d, w_d, ka_d, kw_d = on_device(x, w, ka, kw)
    layer = dq.ops.prepare_layer(w_d, x_dtype=x.dtype, conv=conv, shift_rule=rule, **kwargs_on_device(kwargs))
    out = dq.ops.run_prepared(layer, x_d, ka_d, kw_d, backend="triton")
    return layer, out.cpu()


@settings(SETTINGS, max_examples=20)
@given(matmul_case(cols=(1, 3, 15, 41), epilogue=width_epilogue_spec))
def test_prepared_matmul_with_pre_shifted_weights_matches_reference(case):
    x, w, ka, kw, rule, kwargs, _ = case
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference", **kwargs)
    layer, got = _prepared_triton(x, w, ka, kw, rule, kwargs)
    assert "table" in layer._shifted  # the lean K loop ran, not the in-loop shift
    assert got.dtype == want.dtype and torch.equal(got, want)


@settings(SETTINGS, max_examples=15)
@given(conv_case(channels=(1, 3, 8, 35), kernels=(1, 3), max_extra=3, epilogue=width_epilogue_spec))
def test_prepared_conv_with_pre_shifted_weights_matches_reference(case):
    x, w, geometry, ka, kw, rule, kwargs, _ = case
    want = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="reference",
                         **geometry, **kwargs)
    layer, got = _prepared_triton(x, w, ka, kw, rule, kwargs, conv=geometry)
    assert "table" in layer._shifted
    assert got.shape == want.shape and torch.equal(got, want)


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
def test_pre_shifted_table_is_what_the_kernel_reads(x_dtype):
    """Each width's slice of the table (and its column sums) feeds the rows of that width."""
    gen = torch.Generator().manual_seed(3)
    x = codes(gen, (6, 33), x_dtype, False)
    w = codes(gen, (5, 33), torch.int8, False)
    kw = torch.tensor([0, 2, 2, 5, 7, 0], dtype=torch.int32)
    layer, before = _prepared_triton(x, w, 1, kw, "round", {})
    table, colsum = layer.shifted_weights()
    table[2].zero_()
    colsum[2].zero_()
    after = dq.ops.run_prepared(layer, *on_device(x, 1, kw), backend="triton").cpu()
    changed = (before != after).any(dim=1).tolist()
    assert changed[1] and changed[2] and not any(changed[i] for i in (0, 3, 4, 5)), changed
