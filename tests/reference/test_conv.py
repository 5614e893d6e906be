"""Exactness of int_conv2d (pure Numba reference and the CPU GEMM path) against the oracle."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from tests import oracle
from tests.strategies import CODE_DTYPES, as_rows, codes, conv_case, width_epilogue_spec

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# "cpu_library": the CPU path with its float32 library convolution at every size (it otherwise
# takes over from im2col only on larger outputs than these cases have).
BACKENDS = ["reference", "cpu", "cpu_library"]


@contextlib.contextmanager
def _backend(name: str):
    from dqt_triton.reference import blas

    sizes = blas.LIBRARY_CONV_MIN_MAP, blas.LIBRARY_CONV_MIN_PIXELS
    if name == "cpu_library":
        blas.LIBRARY_CONV_MIN_MAP = blas.LIBRARY_CONV_MIN_PIXELS = 0
    try:
        yield "cpu" if name == "cpu_library" else name
    finally:
        blas.LIBRARY_CONV_MIN_MAP, blas.LIBRARY_CONV_MIN_PIXELS = sizes


@SETTINGS
@given(conv_case(), st.sampled_from(BACKENDS))
def test_conv_matches_oracle(case, backend):
    x, w, geometry, ka, kw, rule, kwargs, spec = case
    with _backend(backend) as name:
        out = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=name, **geometry, **kwargs)
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
    outs = []
    for backend in BACKENDS:
        with _backend(backend) as name:
            outs.append(dq.int_conv2d(x, w, padding=1, act_shift=ka, weight_shift=kw, backend=name))
    acc = oracle.conv_acc(x, w, ka, kw, "floor", 1, 1, 1, 1)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.equal(outs[0], acc.to(torch.int32))


@SETTINGS
@given(conv_case(epilogue=width_epilogue_spec), st.sampled_from(BACKENDS))
def test_conv_width_tables_match_oracle(case, backend):
    """[8, Cout] epilogue tables (one row per weight shift) mixed with [Cout] and scalar constants."""
    x, w, geometry, ka, kw, rule, kwargs, spec = case
    with _backend(backend) as name:
        out = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=name, **geometry, **kwargs)
    B = x.shape[0]
    want = oracle.conv2d(x, w, as_rows(ka, B), as_rows(kw, B), rule, spec, **geometry)
    assert out.shape == want.shape and torch.equal(out, want)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
@pytest.mark.parametrize("kind", ["raw", "float", "requant_u8_relu", "requant_i8"])
def test_conv_width_tables_equal_per_width_calls_stitched(backend, x_dtype, kind):
    """Images with mixed weight shifts and [8, Cout] tables equal one per-channel call per width."""
    gen = torch.Generator().manual_seed(31)
    x = codes(gen, (5, 6, 5, 7), x_dtype, extreme=False)
    w = codes(gen, (10, 3, 3, 3), torch.int8, extreme=False)
    geometry = dict(padding=1, stride=(1, 2), groups=2)
    ka = torch.tensor([0, 2, 5, 1, 7])
    kw = torch.tensor([3, 0, 3, 6, 0])
    tables = {"bias": torch.randint(-(2**18), 2**18, (8, 10), generator=gen, dtype=torch.int32)}
    extra: dict = {}
    if kind == "float":
        tables["out_scale"] = torch.rand(8, 10, generator=gen) * 1e-4
    elif kind.startswith("requant"):
        tables["multiplier"] = torch.randint(2**30, 2**31 - 1, (10,), generator=gen)  # one [Cout] multiplier
        tables["shift"] = torch.randint(30, 45, (8, 10), generator=gen)
        extra = {"relu": True, "out_dtype": torch.uint8} if kind == "requant_u8_relu" else {"out_dtype": torch.int8}
    for rule in ("floor", "round"):
        out = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend=backend,
                            **geometry, **tables, **extra)
        want = torch.empty(out.shape, dtype=out.dtype)
        for k in kw.unique().tolist():
            imgs = kw == k
            row_consts = {name: t[k] if t.dim() == 2 else t for name, t in tables.items()}
            want[imgs] = dq.int_conv2d(x[imgs], w, act_shift=ka[imgs], weight_shift=k, shift_rule=rule,
                                       backend=backend, **geometry, **row_consts, **extra)
        assert torch.equal(out, want), rule


@pytest.mark.parametrize("x_dtype", CODE_DTYPES)
def test_library_convolution_path_is_exact_where_float32_sums_would_round(x_dtype, gemm_route, monkeypatch):
    """The CPU path's float32 library convolution splits the input channels so that no partial
    sum leaves float32's exact integers (the int8 route runs im2col and equals the oracle too): at 8 bits, 3x3 over 256 channels, codes near the top
    of the range, one unsplit float32 sum would round (checked); the path equals the oracle,
    and equals its im2col path when reduced precision turns the library convolution off."""
    from dqt_triton.reference import blas

    gen = torch.Generator().manual_seed(5)
    hi = 255 if x_dtype == torch.uint8 else 127
    # Products of one sign near 127 * 127, some odd: sums grow past 2^25 where float32 steps by 4.
    x = (hi - torch.randint(0, 2, (2, 256, 8, 8), generator=gen)).to(x_dtype)
    w = (127 - torch.randint(0, 2, (3, 256, 3, 3), generator=gen)).to(torch.int8)
    want = oracle.conv_acc(x, w, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), "floor",
                           1, 1, 1, 1).to(torch.int32)
    offset = 128 if x_dtype == torch.uint8 else 0
    conv = torch.nn.functional.conv2d
    unsplit = conv(x.float() - offset, w.float(), padding=1) + offset * conv(torch.ones_like(x, dtype=torch.float32),
                                                                           w.float(), padding=1)
    assert not torch.equal(unsplit.to(torch.int64), want.to(torch.int64))  # the case needs the split
    monkeypatch.setattr(blas, "LIBRARY_CONV_MIN_PIXELS", 0)  # sizes are a speed choice, not an exactness one
    calls = []
    library = blas.exact_int_conv
    monkeypatch.setattr(blas, "exact_int_conv", lambda *a, **k: calls.append(1) or library(*a, **k))
    out = dq.int_conv2d(x, w, padding=1, backend="cpu")
    if gemm_route == "int8":  # int8 x int8 -> int32 needs no split and no library convolution
        assert not calls and torch.equal(out, want)
        return
    assert calls and torch.equal(out, want)
    monkeypatch.setattr(blas, "float32_conv_is_exact", lambda: False)
    calls.clear()
    assert torch.equal(dq.int_conv2d(x, w, padding=1, backend="cpu"), want) and not calls
