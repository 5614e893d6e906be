"""The kernels as torch.library ops: schema, fake (Meta) implementations, torch.compile tracing."""

from __future__ import annotations

import pytest
import torch

from dqt_triton import kernels
from tests.kernels.device import DEVICE

pytestmark = pytest.mark.interpreter


def _matmul_args(M=5, K=40, N=24, per_sample=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    ka = torch.randint(0, 8, (M,), generator=gen).to(torch.int32)
    kw = torch.randint(0, 8, (M if per_sample else 1,), generator=gen).to(torch.int32)
    bias = torch.randint(-1000, 1000, (N,), generator=gen).to(torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, (N,), generator=gen).to(torch.int32)
    rshift = torch.full((N,), 36, dtype=torch.int32)
    scale = torch.zeros(N)
    tensors = [t.to(DEVICE) for t in (x, w, ka, kw, bias, mult, rshift, scale)]
    return (*tensors, False, 1, True, 0, 255, torch.uint8)


def _conv_args():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, 6, 5, 5), generator=gen).to(torch.int8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-128, 128, (4, 3, 3, 3), generator=gen).to(torch.int8).contiguous(memory_format=torch.channels_last)
    n = 4
    zeros = torch.zeros(n, dtype=torch.int32)
    tensors = [t.to(DEVICE) for t in (x, w)]
    rest = [t.to(DEVICE) for t in (torch.tensor([1, 2], dtype=torch.int32), torch.tensor([3], dtype=torch.int32),
                                   zeros, zeros, zeros, torch.full((n,), 0.5))]
    return (tensors[0], tensors[1], [1, 1, 1, 1, 1, 1, 2], *rest, True, 2, False, 0, 0, torch.float32)


@pytest.mark.parametrize("per_sample", [False, True])
def test_matmul_op_passes_opcheck(per_sample):
    torch.library.opcheck(torch.ops.dqt_triton.int_matmul.default, _matmul_args(per_sample=per_sample),
                          test_utils=("test_schema", "test_faketensor"))


def test_conv_op_passes_opcheck():
    torch.library.opcheck(torch.ops.dqt_triton.int_conv2d.default, _conv_args(),
                          test_utils=("test_schema", "test_faketensor"))


def test_elementwise_and_pool_ops_pass_opcheck():
    a = torch.randint(0, 256, (37,), dtype=torch.int64).to(torch.uint8).to(DEVICE)
    torch.library.opcheck(torch.ops.dqt_triton.int_elementwise.default,
                          ("int_mul", a, a, [3, -1, 2, 5], 2, 0, 255, torch.uint8),
                          test_utils=("test_schema", "test_faketensor"))
    x = torch.randint(-128, 128, (2, 3, 6, 6), dtype=torch.int64).to(torch.int8).to(DEVICE)
    torch.library.opcheck(torch.ops.dqt_triton.int_pool2d.default, (x, [3, 3, 2, 2, 1, 1, 1, 1], False),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_traces_the_ops_without_graph_breaks():
    args = _matmul_args(per_sample=True)

    def layer(*a):
        return torch.ops.dqt_triton.int_matmul(*a)

    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(*args), kernels.int_matmul(*args))
