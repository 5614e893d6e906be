"""Compiled kernels on a CUDA device: large shapes exact against the CPU paths, no recompiles.

Skipped (with the reason shown) on machines without a GPU; run with `pytest -m gpu`.
The large shapes are checked against the `cpu` backend, itself held exact against the pure
Numba reference and the oracle in tests/reference; medium shapes against the reference itself.
"""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq
from dqt_triton.kernels import gemm
from tests.strategies import codes

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")


def _epilogue(n: int, gen: torch.Generator, kind: str) -> dict:
    if kind == "requant":
        return dict(bias=torch.randint(-(2**18), 2**18, (n,), generator=gen, dtype=torch.int32),
                    multiplier=torch.randint(2**30, 2**31 - 1, (n,), generator=gen), shift=torch.full((n,), 38),
                    relu=True)
    if kind == "float":
        return dict(bias=torch.randint(-(2**18), 2**18, (n,), generator=gen, dtype=torch.int32),
                    out_scale=torch.rand(n, generator=gen) * 1e-6)
    return {}


def _cuda(kwargs: dict) -> dict:
    return {k: v.to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.mark.parametrize(
    ("M", "N", "K", "kind", "check"),
    [
        (1, 4096, 4096, "requant", "reference"),
        (16, 4096, 4096, "float", "reference"),
        (17, 1000, 4100, "raw", "reference"),
        (768, 3072, 768, "requant", "reference"),
        (4096, 4096, 4096, "requant", "cpu"),
        (8192, 8192, 8192, "raw", "cpu"),
    ],
)
@pytest.mark.parametrize("per_sample", [False, True])
def test_large_matmul_is_exact(M, N, K, kind, check, per_sample):
    gen = torch.Generator().manual_seed(M + N + K)
    x = codes(gen, (M, K), torch.uint8, extreme=False)
    w = codes(gen, (N, K), torch.int8, extreme=False)
    ka = torch.randint(0, 8, (M,), generator=gen) if per_sample else 1
    kw = torch.randint(0, 8, (M,), generator=gen) if per_sample else 2
    kwargs = _epilogue(N, gen, kind)
    want = dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, backend=check, **kwargs)
    ka_d = ka.to(CUDA) if per_sample else ka
    kw_d = kw.to(CUDA) if per_sample else kw
    got = dq.int_matmul(x.to(CUDA), w.to(CUDA), act_shift=ka_d, weight_shift=kw_d, **_cuda(kwargs))
    assert torch.equal(got.cpu(), want)


RESNET_CONVS = [
    # (B, Cin, H, Cout, k, stride, groups)
    (8, 3, 224, 64, 7, 2, 1),  # ResNet-50 stem
    (8, 64, 56, 64, 3, 1, 1),
    (8, 256, 56, 64, 1, 1, 1),
    (8, 128, 56, 128, 3, 2, 1),
    (8, 256, 14, 256, 3, 1, 1),
    (8, 512, 7, 2048, 1, 1, 1),
    (16, 64, 32, 64, 3, 1, 1),  # ResNet-18 CIFAR
    (8, 96, 28, 96, 3, 1, 96),  # depthwise
]


@pytest.mark.parametrize(("B", "C", "H", "Cout", "k", "stride", "groups"), RESNET_CONVS)
def test_resnet_convs_are_exact(B, C, H, Cout, k, stride, groups):
    gen = torch.Generator().manual_seed(C * H + Cout)
    x = codes(gen, (B, C, H, H), torch.uint8, extreme=False).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (Cout, C // groups, k, k), torch.int8, extreme=False)
    ka = torch.randint(0, 8, (B,), generator=gen)
    kw = torch.randint(0, 8, (B,), generator=gen)
    kwargs = dict(stride=stride, padding=k // 2, groups=groups, **_epilogue(Cout, gen, "requant"))
    want = dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, backend="cpu", **kwargs)
    got = dq.int_conv2d(x.to(CUDA), w.to(CUDA), act_shift=ka.to(CUDA), weight_shift=kw.to(CUDA), **_cuda(kwargs))
    assert torch.equal(got.cpu(), want)


def _compiled_variants(autotuned) -> int:
    return sum(len(cache[0]) for cache in autotuned.fn.device_caches.values())


def test_changing_bit_width_never_recompiles():
    gen = torch.Generator().manual_seed(0)
    x = codes(gen, (64, 256), torch.uint8, extreme=False).to(CUDA)
    w = codes(gen, (128, 256), torch.int8, extreme=False).to(CUDA)
    dq.int_matmul(x, w, act_shift=0, weight_shift=0, multiplier=1 << 30, shift=40)
    before = _compiled_variants(gemm.int_matmul_kernel)
    for k in range(8):
        dq.int_matmul(x, w, act_shift=k, weight_shift=7 - k, multiplier=1 << 30, shift=40)
    assert _compiled_variants(gemm.int_matmul_kernel) == before


@pytest.mark.parametrize("mode", ["uniform4", "dynamic"])
def test_dqt_model_on_cuda_equals_cpu(mode):
    """The frozen integer ResNet-18 on CUDA tensors (compiled kernels) gives the CPU logits."""
    from tests.test_model import build

    model, x = build("resnet18_cifar", mode)
    logits = model(x)
    assert torch.equal(model.freeze()(x.to(CUDA)).cpu(), logits)


@pytest.mark.parametrize("mode", ["uniform4", "dynamic"])
def test_a_model_on_cuda_freezes_into_a_cuda_program_equal_to_its_eval(mode, tmp_path):
    """Eval on CUDA builds its integer constants on CUDA; freeze() keeps them there (no copy
    at the first call), and both give the CPU model's logits; a CUDA program saves a CPU file."""
    from dqt_triton.program import program_tensors
    from tests.test_model import build

    model, x = build("resnet18_cifar", mode)
    want = model(x)
    model.to(CUDA)
    assert torch.equal(model(x.to(CUDA)).cpu(), want)
    frozen = model.freeze()
    assert frozen.device.type == "cuda"
    assert all(t.device.type == "cuda" for t in program_tensors(frozen.program))
    assert torch.equal(frozen(x.to(CUDA)).cpu(), want)
    frozen.save(tmp_path / "frozen.pt")
    assert torch.equal(dq.FrozenDQTModel.load(tmp_path / "frozen.pt")(x), want)
    assert torch.equal(frozen.cpu()(x), want)


def test_frozen_dynamic_model_replays_as_a_cuda_graph():
    """The documented recipe: one eager call (validation, constants placed, autotuning), then
    capture; replays with new inputs copied into the captured input give the eager logits."""
    from tests.test_model import build

    model, x = build("resnet18_cifar", "dynamic")
    frozen = model.freeze()
    static_x = x.to(CUDA)
    want = frozen(static_x).clone()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = frozen(static_x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out, want)
    other = x.flip(0).to(CUDA)
    static_x.copy_(other)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_out.cpu(), frozen(other).cpu())
    assert not torch.equal(static_out, want)  # the replay really ran on the new input
