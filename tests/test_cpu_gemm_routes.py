"""How the CPU path picks its GEMM route, and the int8 route's own edge cases."""

from __future__ import annotations

import pytest
import torch

from dqt_triton.reference import blas


def test_the_route_follows_the_request_and_the_cpu():
    assert blas._detected_route("int8") == "int8" and blas._detected_route("float32") == "float32"
    with pytest.raises(ValueError, match="DQT_CPU_GEMM must be one of auto, int8, float32; got 'fast'"):
        blas._detected_route("fast")
    exact = blas.int8_gemm_probe() is None
    assert blas._detected_route("auto") == ("int8" if blas.cpu_int8_flags() and exact else "float32")
    with pytest.raises(ValueError, match="CPU GEMM route must be one of"):
        blas.set_cpu_gemm_route("int4")


def test_the_environment_variable_forces_a_route(monkeypatch):
    monkeypatch.setattr(blas, "_forced_route", None)
    monkeypatch.setenv(blas.CPU_GEMM_ENV, "float32")
    assert blas.cpu_gemm_route() == "float32"
    monkeypatch.setenv(blas.CPU_GEMM_ENV, "INT8 ")
    assert blas.cpu_gemm_route() == "int8"


@pytest.mark.parametrize("m, k, n", [(1, 1, 7), (64, 1, 3), (3, 2, 5), (1, 27, 16), (33, 4608, 17)])
def test_int8_gemm_is_exact_at_the_edges(m, k, n):
    """K = 1 (where torch's CPU _int_mm is wrong), tiny and long reductions, extreme codes."""
    gen = torch.Generator().manual_seed(m * 1000 + k)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    a[:, 0], b[:, 0] = -128, -128
    got = blas.exact_int_gemm(a.numpy(), b.numpy(), 128, 128)
    assert torch.equal(got, (a.long() @ b.long().t()).to(torch.int32))
    assert blas.int8_gemm_probe() is None


@pytest.mark.parametrize("route", ["int8", "int8-im2col", "float32"])
@pytest.mark.parametrize("geometry", [
    dict(kernel=3, stride=2, padding=1, groups=16),  # depthwise: the direct kernel, no GEMM
    dict(kernel=1, stride=1, padding=0, groups=1),  # pointwise: the shifted input is the GEMM matrix
    dict(kernel=3, stride=1, padding=1, groups=1),  # im2col
    dict(kernel=3, stride=1, padding=1, groups=4),  # grouped: batched GEMM
])
@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
def test_each_conv_form_equals_the_oracle_on_both_routes(route, geometry, x_dtype, monkeypatch):
    """Per-sample activation shifts (0 included: the uint8 offset), extreme codes, both rules."""
    import dqt_triton as dq
    from tests import oracle

    if route == "int8" and not blas.library_conv_enabled():
        pytest.skip("oneDNN's int8 convolution is not exact on this CPU (onednn_conv.conv_probe)")
    monkeypatch.setattr(blas, "_forced_route", route.split("-")[0])
    monkeypatch.setattr(blas, "_library_conv", route == "int8")
    gen = torch.Generator().manual_seed(7)
    lo, hi = (0, 256) if x_dtype == torch.uint8 else (-128, 128)
    x = torch.randint(lo, hi, (3, 16, 9, 9), generator=gen).to(x_dtype)
    x[0] = hi - 1
    k, g = geometry["kernel"], geometry["groups"]
    w = torch.randint(-128, 128, (16, 16 // g, k, k), generator=gen).to(torch.int8)
    w[0] = -128
    shifts = torch.tensor([0, 3, 6])
    for rule in ("floor", "round"):
        got = dq.int_conv2d(x, w, stride=geometry["stride"], padding=geometry["padding"], groups=g, act_shift=shifts,
                            weight_shift=2, shift_rule=rule, backend="cpu")
        want = oracle.conv_acc(x, w, shifts, torch.full((3,), 2), rule, geometry["stride"], geometry["padding"], 1, g)
        assert torch.equal(got.long(), want), (route, geometry, rule)


@pytest.mark.parametrize("x_dtype", [torch.uint8, torch.int8])
def test_a_library_convolution_past_float32s_exact_range_runs_again_on_the_gemm(x_dtype, monkeypatch):
    """oneDNN's float32 output is exact below 2^24 only: a tile with a larger accumulator
    (here 512 channels x 9 taps x 255 x -128) is computed again on the int8 GEMM, exactly; a
    tile within the range is not."""
    import dqt_triton as dq
    from tests import oracle

    if not blas.library_conv_enabled():
        pytest.skip("oneDNN's int8 convolution is not exact on this CPU (onednn_conv.conv_probe)")
    monkeypatch.setattr(blas, "_forced_route", "int8")
    gen = torch.Generator().manual_seed(3)
    extreme = 255 if x_dtype == torch.uint8 else -128
    x = torch.randint(0, 4, (2, 512, 5, 5), generator=gen).to(x_dtype)  # small codes: small accumulators
    w = torch.randint(-128, 128, (4, 512, 3, 3), generator=gen).to(torch.int8)
    x[1], w[2] = extreme, -128  # sample 1, channel 2: |acc| = 4608 * 255 * 128 (or 4608 * 128 * 128) > 2^24
    for shifts, reruns in (([0, 0], 1), ([5, 0], 1), ([0, 5], 0)):
        before = dict(blas.GEMM_CALLS)
        got = dq.int_conv2d(x, w, padding=1, act_shift=torch.tensor(shifts), weight_shift=0, backend="cpu")
        want = oracle.conv_acc(x, w, torch.tensor(shifts), torch.zeros(2, dtype=torch.long), "floor", 1, 1, 1, 1)
        assert want.abs().max() >= (1 << 24) or reruns == 0
        assert torch.equal(got.long(), want), shifts
        assert blas.GEMM_CALLS["int8 conv"] - before["int8 conv"] == 1
        assert blas.GEMM_CALLS["int8"] - before["int8"] == reruns, shifts


def test_the_library_convolution_probe_passes_where_the_route_uses_it():
    from dqt_triton.reference import onednn_conv

    assert blas.library_conv_enabled() == (onednn_conv.conv_probe() is None)


def test_prepared_layers_keep_one_plan_per_shape_and_shifts(monkeypatch):
    """A prepared conv on the CPU path keeps its plan per input shape and shifts (per-layer
    ints, or per-sample tensors of up to PLAN_ROWS samples); every call equals the uncached
    op bit for bit, and the plans kept stay bounded."""
    import dqt_triton as dq
    from dqt_triton import ops_gemm

    monkeypatch.setattr(ops_gemm, "PLANS_PER_LAYER", 5)  # fewer than the calls' 11 keys: the oldest go
    gen = torch.Generator().manual_seed(11)
    w = torch.randint(-128, 128, (8, 6, 3, 3), generator=gen, dtype=torch.int8)
    bias = torch.randint(-500, 500, (8,), generator=gen, dtype=torch.int32)
    epilogue = dict(bias=bias, multiplier=torch.full((8,), 3 << 20), shift=26, relu=True)
    layer = dq.ops.prepare_layer(w, x_dtype=torch.uint8, conv=dict(padding=1), **epilogue)
    calls = [(1, 0, 0), (1, 3, 3), (2, 0, 0), (3, torch.tensor([0, 2, 5]), torch.tensor([1, 1, 4]))]
    calls += [(1, torch.tensor([k]), torch.tensor([k])) for k in range(7)]
    for batch, a, k in calls + calls:  # the second round runs on kept plans
        x = torch.randint(0, 256, (batch, 6, 7, 7), generator=gen, dtype=torch.uint8)
        got = dq.ops.run_prepared(layer, x, a, k, backend="cpu")
        want = dq.int_conv2d(x, w, padding=1, act_shift=a, weight_shift=k, backend="reference", **epilogue)
        assert torch.equal(got, want), (batch, a, k)
    assert sum(key[0] == "plan" for key in layer._host) == 5
    big = torch.zeros(ops_gemm.PLAN_ROWS + 1, 6, 7, 7, dtype=torch.uint8)
    dq.ops.run_prepared(layer, big, torch.zeros(ops_gemm.PLAN_ROWS + 1, dtype=torch.int32), 0, backend="cpu")
    assert sum(key[0] == "plan" for key in layer._host) == 5  # more samples than PLAN_ROWS: no plan kept
    with pytest.raises(ValueError, match="act_shift=9 is outside the shift range"):
        dq.ops.run_prepared(layer, big[:1], 9, 0, backend="cpu")
    with pytest.raises(ValueError, match="weight_shift values must lie in"):
        dq.ops.run_prepared(layer, big[:1], 0, torch.tensor([8]), backend="cpu")


def test_onednn_packings_are_kept_per_input_class_and_bounded():
    """One packing per (one sample or more, C, H, W): batches 2 and 5 share one; the oldest
    classes go beyond PACKED_SHAPES; a kept packing still convolves exactly."""
    from dqt_triton.reference import onednn_conv

    if not onednn_conv.available():
        pytest.skip("no oneDNN int8 convolution in this torch build")
    w = torch.randint(-128, 128, (4, 3, 3, 3), generator=torch.Generator().manual_seed(5), dtype=torch.int8)
    values = w.permute(0, 2, 3, 1).reshape(4, -1).contiguous().numpy()
    cache: dict = {}
    geometry = ((1, 1), (1, 1), (1, 1), 1, 0)
    first = onednn_conv.packed(cache, values, (4, 3, 3, 3), *geometry, (2, 3, 8, 8))
    assert onednn_conv.packed(cache, values, (4, 3, 3, 3), *geometry, (5, 3, 8, 8)) is first
    for size in (9, 10, 11, 12, 13):
        onednn_conv.packed(cache, values, (4, 3, 3, 3), *geometry, (1, 3, size, size))
    assert len(cache) == onednn_conv.PACKED_SHAPES and all(key[-1][-1] != 8 for key in cache)
    x = torch.randint(0, 256, (1, 3, 13, 13), dtype=torch.uint8)
    conv = onednn_conv.packed(cache, values, (4, 3, 3, 3), *geometry, tuple(x.shape))
    want = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    assert torch.equal(conv(x).permute(0, 3, 1, 2).double(), want)


@pytest.mark.parametrize("geometry", [dict(stride=(1, 2)), dict(dilation=2, padding=1), dict(dilation=(2, 1))])
def test_unequal_strides_and_dilation_stay_off_onednn(geometry, monkeypatch):
    """oneDNN's int8 convolution gave wrong accumulators for strides (1, 2) and crashed on
    dilation 2 (onednn_conv.supported): such convolutions run on im2col and the int8 GEMM,
    exactly, with no oneDNN call."""
    import dqt_triton as dq
    from tests import oracle

    monkeypatch.setattr(blas, "_forced_route", "int8")
    gen = torch.Generator().manual_seed(21)
    x = torch.randint(0, 256, (2, 8, 16, 9), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (4, 8, 7, 3), generator=gen).to(torch.int8)
    before = dict(blas.GEMM_CALLS)
    got = dq.int_conv2d(x, w, act_shift=0, weight_shift=0, backend="cpu", **geometry)
    stride, padding, dilation = geometry.get("stride", 1), geometry.get("padding", 0), geometry.get("dilation", 1)
    want = oracle.conv_acc(x, w, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floor",
                           stride, padding, dilation, 1)
    assert torch.equal(got.long(), want)
    assert blas.GEMM_CALLS["int8 conv"] == before["int8 conv"] and blas.GEMM_CALLS["int8"] > before["int8"]
