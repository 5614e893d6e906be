"""quant.int_layer's gate gradients: "local" equals "all" at the chosen width and its two
neighbours and copies the nearer neighbour farther out; "none" leaves the gates to other terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dqt_triton import quant
from dqt_triton.numerics import MASTER_BITS

BITS = (2, 3, 4, 5, 6, 7, 8)


def _layer_gate_grads(mode: str, conv: bool, chosen: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rows = chosen.numel()
    if conv:
        q_x = torch.randint(0, 256, (rows, 3, 5, 5), generator=gen).float()
        q_w = torch.randint(-128, 128, (4, 3, 3, 3), generator=gen).float()
        geometry = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    else:
        q_x = torch.randint(0, 256, (rows, 7), generator=gen).float()
        q_w = torch.randint(-128, 128, (4, 7), generator=gen).float()
        geometry = None
    q_x.requires_grad_()  # the layer's usual input gradient, so "none" still has a graph
    scale = torch.rand(4, generator=gen) + 0.5
    gates = F.one_hot(chosen, len(BITS)).float().requires_grad_()
    shift = torch.tensor([MASTER_BITS - BITS[j] for j in chosen.tolist()], dtype=torch.int32)
    y = quant.int_layer(q_x, q_w, scale, act_shift=shift, weight_shift=shift, signed=False, rule="round",
                        conv=geometry, gates=gates, candidate_bits=BITS, gate_gradients=mode)
    upstream = torch.randn(y.shape, generator=gen)
    (y * upstream).sum().backward()
    return gates.grad


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_local_gate_gradients_are_exact_near_the_choice_and_nearest_neighbour_beyond(conv):
    chosen = torch.tensor([0, 3, 6, 1, 5, 3, 2, 6])  # both ends, the middle, a shared choice
    every = _layer_gate_grads("all", conv, chosen)
    local = _layer_gate_grads("local", conv, chosen)
    assert local.shape == every.shape == (8, len(BITS))
    for row, j in enumerate(chosen.tolist()):
        computed = [c for c in (j - 1, j, j + 1) if 0 <= c < len(BITS)]
        torch.testing.assert_close(local[row, computed], every[row, computed], rtol=1e-6, atol=0)
        for c in range(len(BITS)):
            nearest = min(max(c, j - 1), j + 1)
            assert torch.equal(local[row, c], local[row, min(max(nearest, 0), len(BITS) - 1)])
    # Away from the choice "local" is an estimate: it must differ from the exact value somewhere.
    assert not torch.equal(local, every)


def test_no_gate_gradients_leave_the_gates_without_gradient():
    assert _layer_gate_grads("none", False, torch.tensor([1, 4])) is None


def test_unknown_gate_gradient_mode_is_named():
    with pytest.raises(ValueError, match="gate_gradients must be one of .*'sometimes'"):
        _layer_gate_grads("sometimes", False, torch.tensor([1, 4]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ["floor", "round"])
@pytest.mark.parametrize("signed", [True, False])
def test_shifted_float_equals_the_integer_nested_shift_for_every_code_and_shift(signed, rule, dtype):
    """The backward passes' float shortcut is the contract's nested shift, bit for bit: every
    master code at every shift, with a scalar shift and with a different shift per row."""
    from dqt_triton.numerics import MAX_SHIFT, code_range, nested_shift

    lo, hi = code_range(MASTER_BITS, signed)
    q = torch.arange(lo, hi + 1, dtype=torch.int16)
    want = torch.stack([(nested_shift(q, k, signed, rule).to(torch.int32) << k) for k in range(MAX_SHIFT + 1)])
    for k in range(MAX_SHIFT + 1):
        got = quant.shifted_float(q.to(dtype), k, signed, rule)
        assert got.dtype == dtype and torch.equal(got, want[k].to(dtype)), k
    rows = torch.arange(MAX_SHIFT + 1, dtype=torch.int32).view(-1, 1)
    got = quant.shifted_float(q.to(dtype).expand(MAX_SHIFT + 1, -1), rows, signed, rule)
    assert torch.equal(got, want.to(dtype))
    assert torch.equal(quant.shifted_float(q, 3, signed, rule), want[3].to(torch.float32))  # integer codes
    with pytest.raises(ValueError, match="shift must be in"):
        quant.shifted_float(q.to(dtype), MAX_SHIFT + 1, signed, rule)


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_one_width_for_the_batch_gives_the_per_row_path_gradients_bit_for_bit(conv):
    """A pass at one width (an int shift, the sandwich's and static passes) skips the per-width
    row grouping of the input gradient; every gradient equals the per-row path's exactly."""
    gen = torch.Generator().manual_seed(3)
    rows = 6
    if conv:
        x0, w0 = torch.randint(0, 256, (rows, 3, 5, 5), generator=gen), torch.randint(-128, 128, (4, 3, 3, 3), generator=gen)
        geometry = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1)
    else:
        x0, w0 = torch.randint(0, 256, (rows, 7), generator=gen), torch.randint(-128, 128, (4, 7), generator=gen)
        geometry = None
    scale0 = torch.rand(4, generator=gen) + 0.5
    for k in range(MASTER_BITS):
        grads = []
        for shift in (k, torch.full((rows,), k, dtype=torch.int32)):
            q_x, q_w, scale = (t.float().clone().requires_grad_() for t in (x0, w0, scale0))
            y = quant.int_layer(q_x, q_w, scale, act_shift=shift, weight_shift=shift, signed=False, rule="round",
                                conv=geometry)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            grads.append((y.detach(), q_x.grad, q_w.grad, scale.grad))
        for one, per_row in zip(*grads):
            assert torch.equal(one, per_row), k


@pytest.mark.parametrize(("channels", "size", "stride"), [(8, 16, (2, 2)), (5, 7, (2, 1)), (16, 8, (3, 3))])
def test_strided_pointwise_weight_gradient_is_the_convolutions_without_onednns_strided_1x1_kernel(channels, size,
                                                                                                     stride):
    """A strided 1x1 layer's weight gradient is computed as one matmul: oneDNN's channels-last
    kernel for it hangs (AVX2) or corrupts the heap (AVX-512, 8 input channels, 16x16, batch 3:
    the first case). Same values as the float64 convolution's weight gradient."""
    gen = torch.Generator().manual_seed(7)
    q_x = torch.randint(0, 256, (3, channels, size, size), generator=gen).float()
    q_x = q_x.contiguous(memory_format=torch.channels_last).requires_grad_()
    q_w = torch.randint(-128, 128, (2 * channels, channels, 1, 1), generator=gen).float().requires_grad_()
    scale = torch.rand(2 * channels, generator=gen) + 0.5
    geometry = dict(stride=stride, padding=(0, 0), dilation=(1, 1), groups=1)
    y = quant.int_layer(q_x, q_w, scale, act_shift=2, weight_shift=2, signed=False, rule="round", conv=geometry)
    upstream = torch.randn(y.shape, generator=gen)
    (y * upstream).sum().backward()
    x_eff = quant.shifted_float(q_x.detach(), 2, False, "round").double()
    want = torch.nn.grad.conv2d_weight(x_eff, tuple(q_w.shape), (upstream * scale.view(1, -1, 1, 1)).double(), stride)
    assert torch.allclose(q_w.grad.double(), want, rtol=1e-5, atol=1e-3)  # float gradients, not integer results
