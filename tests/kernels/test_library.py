"""The kernels as torch.library ops: schema, fake (Meta) implementations, torch.compile tracing."""

from __future__ import annotations

import pytest
import torch

from dqt_triton import kernels
from tests.kernels.device import DEVICE

pytestmark = pytest.mark.interpreter


def _matmul_args(M=5, K=40, N=24, per_sample=False, tables=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    ka = torch.randint(0, 8, (M,), generator=gen).to(torch.int32)
    kw = torch.randint(0, 8, (M if per_sample else 1,), generator=gen).to(torch.int32)
    rows = (8, N) if tables else (N,)  # [8, N] width tables: row kw for the rows with weight shift kw
    bias = torch.randint(-1000, 1000, rows, generator=gen).to(torch.int32)
    mult = torch.randint(2**30, 2**31 - 1, rows, generator=gen).to(torch.int32)
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


@pytest.mark.parametrize("tables", [False, True])
@pytest.mark.parametrize("per_sample", [False, True])
def test_matmul_op_passes_opcheck(per_sample, tables):
    torch.library.opcheck(torch.ops.dqt_triton.int_matmul.default, _matmul_args(per_sample=per_sample, tables=tables),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("tables", [False, True])
def test_conv_op_passes_opcheck(tables):
    args = list(_conv_args())
    if tables:  # bias and scale as [8, Cout] width tables, multiplier and rshift shared
        args[5] = torch.arange(32, dtype=torch.int32, device=DEVICE).reshape(8, 4) - 16
        args[8] = torch.linspace(0.25, 2.0, 32, device=DEVICE).reshape(8, 4)
    torch.library.opcheck(torch.ops.dqt_triton.int_conv2d.default, tuple(args),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("shape", [(7, 24), (8, 23), (8, 24, 1)])
def test_ops_and_fake_impls_refuse_bad_table_shapes(shape):
    """The kernel ops take [N] or [8, N] epilogue constants; fake tensors get the same check."""
    args = list(_matmul_args())
    args[4] = torch.zeros(shape, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match=r"bias must be an \[24\] tensor or an \[8, 24\] width table"):
        torch.ops.dqt_triton.int_matmul(*args)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(ValueError, match="bias must be an"):
            torch.ops.dqt_triton.int_matmul(*fake)


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
