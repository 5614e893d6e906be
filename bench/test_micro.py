"""Micro-benchmarks (pytest-benchmark) of the CPU integer ops, a width switch and a frozen ResNet.

    python -m pytest bench/test_micro.py --benchmark-enable --benchmark-json bench/results/micro-<date>.json

Every benchmark also checks its result against the pure Numba reference with exact equality, so
a fast wrong kernel fails here. Under the project's default options (``--benchmark-disable``,
as in CI) each runs once as a plain test. Timings go to the JSON (machine, commit, date
included by pytest-benchmark); nothing asserts a time.
"""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq
from dqt_triton import models, numerics

MATMUL = (256, 1024, 1024)
CONV = (8, 64, 32, 64, 3)  # ResNet-18 CIFAR stage 1: batch, channels, size, out channels, kernel
REQUANT = {"multiplier": 1 << 30, "shift": 40, "relu": True}


@pytest.fixture(scope="module")
def matmul_operands():
    M, K, N = MATMUL
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    return x, w


@pytest.fixture(scope="module")
def conv_operands():
    B, C, HW, Cout, k = CONV
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, C, HW, HW), generator=gen).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-128, 128, (Cout, C, k, k), generator=gen).to(torch.int8)
    return x, w


SHIFTS = {
    "8-bit": lambda M: (0, 0),
    "4-bit": lambda M: (4, 4),
    "mixed per-sample": lambda M: (torch.arange(M) % 7, torch.arange(M) % 5),
}


def _benchmark_exact(benchmark, op, x, w, backend: str, widths: str, **geometry) -> None:
    """Time `op` on `backend` at the shifts `widths` names, and check it against the reference."""
    act_shift, weight_shift = SHIFTS[widths](x.shape[0])
    kwargs = dict(act_shift=act_shift, weight_shift=weight_shift, **geometry, **REQUANT)
    expected = op(x, w, backend="reference", **kwargs)
    out = benchmark(lambda: op(x, w, backend=backend, cache_weight=True, **kwargs))
    assert torch.equal(out, expected)


@pytest.mark.benchmark(group="int_matmul 256x1024x1024")
@pytest.mark.parametrize("widths", list(SHIFTS))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_int_matmul(benchmark, matmul_operands, backend, widths):
    _benchmark_exact(benchmark, dq.int_matmul, *matmul_operands, backend, widths)


@pytest.mark.benchmark(group="int_conv2d 3x3 B=8 64->64 32x32")
@pytest.mark.parametrize("widths", list(SHIFTS))
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_int_conv2d(benchmark, conv_operands, backend, widths):
    _benchmark_exact(benchmark, dq.int_conv2d, *conv_operands, backend, widths, padding=1)


@pytest.fixture(scope="module")
def resnet18_weights():
    torch.manual_seed(0)
    model = dq.DQTModel.from_float(models.resnet18_cifar(10, 3, 64), (3, 32, 32))
    return [model.layers[n].weight_codes().detach().to(torch.int8) for n in model.layer_names]


@pytest.mark.benchmark(group="width switch, ResNet-18 weights 8 -> 4 bits")
@pytest.mark.parametrize("scheme", ["dqt shift", "dequantize-requantize"])
def test_width_switch(benchmark, resnet18_weights, scheme):
    k = 4
    if scheme == "dqt shift":
        out = benchmark(lambda: [c >> k for c in resnet18_weights])
        for c, o in zip(resnet18_weights, out):
            assert torch.equal(o, numerics.nested_shift(c, k, signed=True, rule="floor"))
    else:
        scale_old, scale_new = 0.01, 0.01 * 2**k
        out = benchmark(lambda: [torch.clamp(torch.round(c.float() * scale_old / scale_new), -8, 7).to(torch.int8)
                                 for c in resnet18_weights])
        # Round-to-nearest requantization differs from the floor shift on about half the codes.
        assert all(o.min() >= -8 and o.max() <= 7 for o in out)


@pytest.fixture(scope="module")
def frozen_resnet18():
    torch.manual_seed(0)
    model = dq.DQTModel.from_float(models.resnet18_cifar(10, 3, 64), (3, 32, 32), dynamic=True)
    gen = torch.Generator().manual_seed(0)
    model.train()
    with torch.no_grad():
        model(torch.randint(0, 256, (2, 3, 32, 32), generator=gen, dtype=torch.uint8))  # calibrate ranges
    model.eval()
    return {"uniform 8-bit": model.set_dynamic(False).set_bits(8).freeze(),
            "uniform 4-bit": model.set_dynamic(False).set_bits(4).freeze(),
            "dynamic": model.set_dynamic(True).freeze()}


@pytest.mark.benchmark(group="frozen integer ResNet-18 (CIFAR, width 64), batch 1")
@pytest.mark.parametrize("mode", ["uniform 8-bit", "uniform 4-bit", "dynamic"])
def test_frozen_resnet18_batch1(benchmark, frozen_resnet18, mode):
    frozen = frozen_resnet18[mode]
    x = torch.randint(0, 256, (1, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    with dq.use_backend("reference"):
        expected = frozen(x)
    out = benchmark(lambda: frozen(x))
    assert torch.equal(out, expected)
