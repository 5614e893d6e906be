"""Every bad input to the public ops gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq

X = torch.zeros((4, 16), dtype=torch.uint8)
W = torch.zeros((8, 16), dtype=torch.int8)
XC = torch.zeros((2, 4, 6, 6), dtype=torch.uint8)
WC = torch.zeros((8, 4, 3, 3), dtype=torch.int8)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"x": X.float()}, TypeError, "x must have dtype uint8 or int8, got float32"),
        ({"w": W.to(torch.uint8)}, TypeError, "w must have dtype int8"),
        ({"x": X[0]}, ValueError, "x must be 2-D"),
        ({"w": W[:, :15]}, ValueError, "K differs"),
        ({"x": X.numpy()}, TypeError, "x must be a torch.Tensor"),
        ({"act_shift": 8}, ValueError, r"act_shift=8 is outside the shift range \[0, 7\]"),
        ({"weight_shift": -1}, ValueError, "weight_shift=-1 is outside"),
        ({"act_shift": torch.tensor([0, 1, 2])}, ValueError, r"one entry per sample \(4\)"),
        ({"act_shift": torch.tensor([0, 1, 9, 2])}, ValueError, "max 9"),
        ({"weight_shift": torch.tensor([0.0, 1, 2, 3])}, TypeError, "integer dtype"),
        ({"act_shift": 1.5}, TypeError, "act_shift must be an int"),
        ({"bias": torch.zeros(8, dtype=torch.int64)}, TypeError, "bias must be int32"),
        ({"bias": torch.zeros(7, dtype=torch.int32)}, ValueError, r"bias must have shape \(8,\)"),
        ({"multiplier": 5}, ValueError, "needs both multiplier and shift"),
        ({"multiplier": 2**31, "shift": 3}, ValueError, "multiplier must lie in"),
        ({"multiplier": -(2**31), "shift": 3}, ValueError, "multiplier must lie in"),
        ({"multiplier": 1, "shift": 63}, ValueError, "shift must lie in"),
        ({"multiplier": torch.ones(3, dtype=torch.int32), "shift": 1}, ValueError, "one entry per output channel"),
        ({"multiplier": 1, "shift": 1, "out_scale": 0.5}, ValueError, "not both"),
        ({"multiplier": 1, "shift": 1, "out_dtype": torch.int32}, ValueError, "must be uint8 or int8"),
        ({"out_dtype": torch.uint8}, ValueError, "needs an epilogue"),
        ({"out_scale": float("nan")}, ValueError, "out_scale must be finite"),
        # Python ints beyond int64 and floats beyond float32: the same clear messages, never a raw
        # OverflowError or a RuntimeError from a tensor constructor.
        ({"multiplier": 2**70, "shift": 3}, ValueError, "multiplier must lie in .* got 1180591620717411303424"),
        ({"multiplier": -(2**70), "shift": 3}, ValueError, "multiplier must lie in"),
        ({"multiplier": 5, "shift": 2**70}, ValueError, "shift must lie in"),
        ({"out_scale": 1e300}, ValueError, r"out_scale must be finite in float32 .* got 1e\+300"),
        ({"out_scale": torch.full((8,), 1e300, dtype=torch.float64)}, ValueError, "out_scale must be finite in float32"),
        ({"out_scale": torch.ones(8, dtype=torch.int32)}, TypeError, "floating dtype"),
        ({"shift_rule": "nearest"}, ValueError, "shift_rule must be one of"),
        ({"backend": "gpu"}, ValueError, "unknown backend 'gpu'"),
        ({"relu": 1}, TypeError, "relu must be a bool"),
        ({"bias": torch.full((8,), 2**31 - 1, dtype=torch.int32)}, dq.AccumulatorOverflowError, "overflow risk"),
        ({"bias": torch.full((8,), -(2**31), dtype=torch.int32)}, dq.AccumulatorOverflowError, "bias max 2147483648"),
    ],
)
def test_int_matmul_rejects(kwargs, error, pattern):
    args = {"x": X, "w": W}
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        dq.int_matmul(args.pop("x"), args.pop("w"), **args)


def _table(value, row: int, n: int = 8, fill: int = 0, dtype=torch.int64) -> torch.Tensor:
    """An [8, n] width table of `fill` with `value` in every entry of one row."""
    t = torch.full((8, n), fill, dtype=dtype)
    t[row] = value
    return t


TABLE_SHAPES = r"must have shape \(8,\) \(one entry per output channel\) or \(8, 8\) \(a width table"

WIDTH_TABLE_ERRORS = [
    ({"bias": torch.zeros((7, 8), dtype=torch.int32)}, ValueError, "bias " + TABLE_SHAPES + r".*got \(7, 8\)"),
    ({"bias": torch.zeros((8, 9), dtype=torch.int32)}, ValueError, "bias " + TABLE_SHAPES + r".*got \(8, 9\)"),
    ({"bias": torch.zeros((8, 8, 1), dtype=torch.int32)}, ValueError, "bias " + TABLE_SHAPES),
    ({"bias": torch.zeros((1, 8), dtype=torch.int32)}, ValueError, "bias " + TABLE_SHAPES),
    ({"multiplier": torch.ones((7, 8), dtype=torch.int32), "shift": 1}, ValueError, "multiplier " + TABLE_SHAPES),
    ({"multiplier": 1, "shift": torch.ones((8, 9), dtype=torch.int32)}, ValueError, "shift " + TABLE_SHAPES),
    ({"multiplier": 1, "shift": torch.ones((2, 8, 8), dtype=torch.int32)}, ValueError, "shift " + TABLE_SHAPES),
    ({"out_scale": torch.ones((9, 8))}, ValueError, "out_scale " + TABLE_SHAPES),
    ({"out_scale": torch.ones((8, 8), dtype=torch.int32)}, TypeError, "out_scale must have a floating dtype"),
    ({"multiplier": torch.ones((8, 8)), "shift": 1}, TypeError, "multiplier must have an integer dtype"),
    # Range checks cover every row of a table, including rows no sample of the call uses.
    ({"multiplier": _table(2**31, 6, fill=1), "shift": 1}, ValueError, r"multiplier must lie in .* max 2147483648"),
    ({"multiplier": _table(-(2**31), 0, fill=1), "shift": 1}, ValueError, "multiplier must lie in"),
    ({"multiplier": 1, "shift": _table(63, 7, fill=1)}, ValueError, r"shift must lie in \[0, 62\] .* max 63"),
    ({"multiplier": 1, "shift": _table(-1, 2, fill=1)}, ValueError, "shift must lie in .* min -1"),
    ({"out_scale": _table(float("inf"), 4, fill=1, dtype=torch.float32)}, ValueError, "out_scale must be finite"),
    # max|bias| over the whole table: one row of large bias refuses the layer at every width.
    ({"bias": _table(2**31 - 1, 3, dtype=torch.int32)}, dq.AccumulatorOverflowError, "bias max 2147483647"),
    ({"bias": _table(-(2**31), 7, dtype=torch.int32)}, dq.AccumulatorOverflowError, "bias max 2147483648"),
]


@pytest.mark.parametrize("kwargs, error, pattern", WIDTH_TABLE_ERRORS)
@pytest.mark.parametrize("weight_shift", [0, torch.tensor([0, 1, 1, 0])])
def test_int_matmul_rejects_bad_width_tables(kwargs, error, pattern, weight_shift):
    with pytest.raises(error, match=pattern):
        dq.int_matmul(X, W, weight_shift=weight_shift, **kwargs)


@pytest.mark.parametrize("kwargs, error, pattern", WIDTH_TABLE_ERRORS)
def test_int_conv2d_rejects_bad_width_tables(kwargs, error, pattern):
    if error is dq.AccumulatorOverflowError:
        pattern = "int_conv2d: accumulator overflow risk: reduction size K=36"
    with pytest.raises(error, match=pattern):
        dq.int_conv2d(XC, WC, weight_shift=torch.tensor([0, 1]), **kwargs)


def test_largest_safe_bias_table_is_accepted_and_one_more_is_refused():
    """The accumulator rule with a bias table: the bound uses max|bias| over all 8 rows."""
    K = 16
    limit = 2**31 - 1 - K * 255 * 128
    bias = _table(limit, 5, dtype=torch.int32)
    assert dq.int_matmul(X, W, weight_shift=0, bias=bias).shape == (4, 8)
    bias[2, 3] = limit + 1
    with pytest.raises(dq.AccumulatorOverflowError, match=f"bias max {limit + 1}"):
        dq.int_matmul(X, W, weight_shift=0, bias=bias)


def test_int_matmul_refuses_reductions_that_could_overflow():
    x = torch.zeros((1, 65794), dtype=torch.uint8)
    w = torch.zeros((1, 65794), dtype=torch.int8)
    with pytest.raises(dq.AccumulatorOverflowError, match="K=65794"):
        dq.int_matmul(x, w)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        ({"x": XC[0]}, ValueError, "x must be 4-D"),
        ({"w": WC[:, :3]}, ValueError, "input channels per group"),
        ({"groups": 3}, ValueError, "divisible by groups"),
        ({"groups": 0}, ValueError, "groups must be an int >= 1"),
        ({"stride": 0}, ValueError, "stride must be >= 1"),
        ({"padding": -1}, ValueError, "padding must be >= 0"),
        ({"dilation": (1, 2, 3)}, TypeError, "dilation must be an int or a pair"),
        ({"x": XC[:, :, :2, :2]}, ValueError, "too small"),
        ({"act_shift": torch.tensor([1, 2, 3])}, ValueError, r"one entry per sample \(2\)"),
        ({"x": XC.to(torch.int16)}, TypeError, "x must have dtype"),
    ],
)
def test_int_conv2d_rejects(kwargs, error, pattern):
    args = {"x": XC, "w": WC}
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        dq.int_conv2d(args.pop("x"), args.pop("w"), **args)


def test_elementwise_and_pool_reject_bad_input():
    a = torch.zeros((2, 3), dtype=torch.uint8)
    with pytest.raises(ValueError, match="same shape"):
        dq.int_add(a, a[:, :2], k1=1, k2=1, shift=0)
    with pytest.raises(ValueError, match=r"\|k1\|"):
        dq.int_add(a, a, k1=2**31, k2=1, shift=0)
    with pytest.raises(ValueError, match=r"\|k4\|"):
        dq.int_mul(a, a, k1=1, k4=2**48, shift=0)
    with pytest.raises(TypeError, match="k2 must be an int"):
        dq.int_add(a, a, k1=1, k2=0.5, shift=0)
    with pytest.raises(ValueError, match="shift must be an int in"):
        dq.int_add(a, a, k1=1, k2=1, shift=63)
    with pytest.raises(ValueError, match="out_dtype must be uint8 or int8"):
        dq.int_add(a, a, k1=1, k2=1, shift=0, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="padding .* at most half"):
        dq.int_max_pool2d(XC, 2, padding=2)
    with pytest.raises(TypeError, match="dtype uint8 or int8"):
        dq.int_avg_pool2d(XC.float(), 2)


def test_tensors_on_different_devices_or_backends_are_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(dq.BackendUnavailableError, match="needs CUDA tensors"):
        dq.int_matmul(X, W, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        with dq.use_backend("tpu"):
            pass


def test_max_pool_geometry_matches_torch_and_refuses_windows_of_only_padding():
    """Every small geometry: the same codes as torch's float max pool, an error where torch
    errors, and a clear error where a window holds only padding (torch: -inf, not a code)."""
    import itertools

    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    refused = 0
    for size, k, s, p, d in itertools.product(range(1, 6), range(1, 4), range(1, 3), range(0, 3), range(1, 4)):
        x = torch.randint(0, 256, (1, 2, size, size + 1), generator=gen).to(torch.uint8)
        try:
            want = F.max_pool2d(x.float(), k, s, p, d)
        except RuntimeError:
            with pytest.raises(ValueError):
                dq.int_max_pool2d(x, k, s, p, d, backend="cpu")
            continue
        if bool(torch.isinf(want).any()):
            refused += 1
            with pytest.raises(ValueError, match="pools only padding"):
                dq.int_max_pool2d(x, k, s, p, d, backend="cpu")
            continue
        assert torch.equal(dq.int_max_pool2d(x, k, s, p, d, backend="cpu"), want.to(torch.uint8)), (size, k, s, p, d)
    assert refused > 0  # the sweep does reach the all-padding geometries


def test_multiply_coefficient_k3_is_int32_and_only_offsets_reach_2_47():
    """docs/numerics.md 5: k3 multiplies b in int_mul (a coefficient, |k3| <= 2^31 - 1); the
    offsets (k3 of int_add, k4 of int_mul) may reach 2^47."""
    a = torch.zeros((2, 3), dtype=torch.int8)
    with pytest.raises(ValueError, match=r"\|k3\| = 2147483648 exceeds 2147483647"):
        dq.int_mul(a, a, k1=1, k3=2**31, shift=0)
    with pytest.raises(ValueError, match="k4"):
        dq.int_mul(a, a, k1=1, k4=2**47 + 1, shift=0)
    assert dq.int_mul(a, a, k1=1, k4=2**47, shift=47).dtype == torch.int8  # default int8 without relu
    assert dq.int_add(a, a, k1=1, k2=1, k3=2**47, shift=47, relu=True).dtype == torch.uint8  # uint8 with relu
    with pytest.raises(ValueError, match="k3"):
        dq.int_add(a, a, k1=1, k2=1, k3=2**47 + 1, shift=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_dequantize_rounds_out_scale_to_float32_then_converts_then_multiplies(backend):
    """docs/numerics.md 3.5: a Python-float out_scale is rounded to float32 first; float32(v)
    rounds above 2^24 (two roundings in all); the result is float32(v) * float32(scale)."""
    x = torch.zeros((1, 4), dtype=torch.uint8)
    w = torch.zeros((3, 4), dtype=torch.int8)
    bias = torch.tensor([2**24 + 1, 2**25 + 3, 7], dtype=torch.int32)  # the first two are not float32 values
    out = dq.int_matmul(x, w, bias=bias, out_scale=0.1, backend=backend)
    want = bias.to(torch.float32) * torch.tensor(0.1, dtype=torch.float32)
    assert torch.equal(out[0], want)
    exact = torch.tensor([float(b) * 0.1 for b in bias.tolist()], dtype=torch.float64)
    assert not torch.equal(out[0].double(), exact.float().double())  # not one rounding of the exact product
    assert dq.int_matmul(x, w, bias=bias, multiplier=1, shift=0).dtype == torch.int8  # default without relu
    assert dq.int_matmul(x, w, bias=bias, multiplier=1, shift=0, relu=True).dtype == torch.uint8
