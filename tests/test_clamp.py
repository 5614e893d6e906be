"""The clamp epilogue (ReLU6 / Hardtanh as an upper code bound) on every backend.

Oracle: tests/oracle.py's layer without the clamp, clamped by torch; the clamp must change
nothing else.
"""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq
from tests import oracle
from tests.strategies import codes

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpreter)]


def _layer(conv: bool, gen: torch.Generator):
    if conv:
        x = codes(gen, (2, 5, 6, 6), torch.uint8, True)
        w = torch.randint(-127, 128, (7, 5, 3, 3), generator=gen, dtype=torch.int8)
        return x, w, dict(stride=1, padding=1)
    x = codes(gen, (9, 20), torch.int8, True)
    return x, torch.randint(-127, 128, (7, 20), generator=gen, dtype=torch.int8), {}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("clamp_max", [0, 1, 37, 255])
def test_clamp_max_caps_the_requantized_codes_and_changes_nothing_else(backend, conv, clamp_max):
    gen = torch.Generator().manual_seed(clamp_max + 7 * conv)
    x, w, geometry = _layer(conv, gen)
    ka = torch.randint(0, 8, (x.shape[0],), generator=gen)
    kwargs = dict(act_shift=ka, weight_shift=ka, bias=torch.randint(-4000, 4000, (7,), generator=gen, dtype=torch.int32),
                  multiplier=torch.randint(1 << 20, 1 << 24, (7,), generator=gen, dtype=torch.int32), shift=26, relu=True,
                  shift_rule="round", **geometry)
    op = dq.int_conv2d if conv else dq.int_matmul
    if backend == "triton":
        from tests.kernels.device import kwargs_on_device, on_device

        got = op(on_device(x), on_device(w), backend="triton", clamp_max=clamp_max, **kwargs_on_device(kwargs)).cpu()
    else:
        got = op(x, w, backend=backend, clamp_max=clamp_max, **kwargs)
    spec = dict(bias=kwargs["bias"], mode="requant", multiplier=kwargs["multiplier"],
                rshift=torch.full((7,), 26), scale=torch.zeros(7), relu=True, out_dtype=torch.uint8)
    if conv:
        free = oracle.conv2d(x, w, ka, ka, "round", spec, (1, 1), (1, 1), (1, 1), 1)
    else:
        free = oracle.matmul(x, w, ka, ka, "round", spec)
    assert got.dtype == torch.uint8 and torch.equal(got, free.clamp_max(clamp_max))
    assert clamp_max == 255 or bool((free > clamp_max).any()), "the case must exercise the clamp"


def test_clamp_max_is_checked():
    x, w = torch.zeros(2, 3, dtype=torch.uint8), torch.ones(4, 3, dtype=torch.int8)
    with pytest.raises(ValueError, match="clamp_max must lie in \\[0, 255\\]"):
        dq.int_matmul(x, w, multiplier=1, shift=0, relu=True, clamp_max=300)
    with pytest.raises(ValueError, match="clamp_max must lie in \\[0, 127\\]"):
        dq.int_matmul(x, w, multiplier=1, shift=0, relu=True, out_dtype=torch.int8, clamp_max=-1)
    with pytest.raises(ValueError, match="requantizing epilogue only"):
        dq.int_matmul(x, w, out_scale=1.0, clamp_max=6)
    with pytest.raises(ValueError, match="requantizing epilogue only"):
        dq.int_matmul(x, w, multiplier=1, shift=0, clamp_max=6.5)
