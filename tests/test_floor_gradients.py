"""The straight-through input gradient of the integer layers under the floor rule (issue 26).

Under the floor rule an unsigned master code q becomes code 0 at a lower width whenever
q < 2^k: a whole b-bit step (64 of 255 codes at 2 bits; the round rule's code 0 holds half a
step). `quant._IntLayer` passes no input gradient through those elements; everywhere else, at
k = 0, for signed codes and under the round rule the gradient is the plain straight-through one,
bit for bit. The forward pass does not change.
"""

from __future__ import annotations

import pytest
import torch

from dqt_triton import quant

CONV = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)


def _case(conv: bool, rows: int = 6, signed: bool = False):
    gen = torch.Generator().manual_seed(0)
    lo, hi = (-128, 128) if signed else (0, 256)
    if conv:
        q_x = torch.randint(lo, hi, (rows, 3, 5, 5), generator=gen).float()
        q_w = torch.randint(-128, 128, (4, 3, 3, 3), generator=gen).float()
    else:
        q_x = torch.randint(lo, hi, (rows, 9), generator=gen).float()
        q_w = torch.randint(-128, 128, (4, 9), generator=gen).float()
    scale = torch.rand(4, generator=gen) + 0.5
    return q_x, q_w, scale


def _layer(q_x, q_w, scale, shift, rule, conv, signed=False):
    """(output, input gradient) of the integer layer for one upstream gradient."""
    q_x = q_x.clone().requires_grad_()
    y = quant.int_layer(q_x, q_w, scale, act_shift=shift, weight_shift=shift, signed=signed, rule=rule,
                        conv=CONV if conv else None)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * upstream).sum().backward()
    return y.detach(), q_x.grad


def _straight_through(q_x, q_w, scale, shift, rule, conv, signed=False):
    """The input gradient of the layer's straight-through estimator with no codes masked."""
    y, _ = _layer(q_x, q_w, scale, shift, rule, conv, signed)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    rows = torch.as_tensor(shift).expand(q_x.shape[0]) if not isinstance(shift, int) else None
    grads = []
    for r in range(q_x.shape[0]):
        k = shift if rows is None else int(rows[r])
        w_eff = quant.shifted_float(q_w, k, True, rule)
        g = upstream[r:r + 1] * (scale.view(1, -1, 1, 1) if conv else scale)
        grads.append(quant._grad_input(g, w_eff, q_x[r:r + 1].shape, CONV if conv else None))
    return torch.cat(grads)


def _close(got, want):
    """Equal up to float32 summation order (the reference convolves one row at a time)."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
@pytest.mark.parametrize("per_row", [False, True], ids=["one-width", "per-row"])
def test_floor_rule_passes_no_input_gradient_through_unsigned_codes_that_shift_to_zero(conv, per_row):
    q_x, q_w, scale = _case(conv)
    shift = torch.tensor([6, 0, 4, 7, 1, 6], dtype=torch.int32) if per_row else 6
    _, grad = _layer(q_x, q_w, scale, shift, "floor", conv)
    plain = _straight_through(q_x, q_w, scale, shift, "floor", conv)
    k = (shift if per_row else torch.full((q_x.shape[0],), shift)).view(-1, *([1] * (q_x.dim() - 1)))
    zero_code = (k > 0) & (q_x < 2.0 ** k)
    assert bool(zero_code.any()) and bool((~zero_code).any())
    assert bool((grad[zero_code] == 0).all())
    _close(grad[~zero_code], plain[~zero_code])


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
@pytest.mark.parametrize("rule, signed, shift", [("round", False, 6), ("floor", True, 6), ("floor", False, 0),
                                                 ("round", False, 0)])
def test_other_codes_keep_the_plain_straight_through_gradient(conv, rule, signed, shift):
    """Round rule, signed codes (no dead zone at zero) and k = 0 (nothing shifted) are unchanged."""
    q_x, q_w, scale = _case(conv, signed=signed)
    _, grad = _layer(q_x, q_w, scale, shift, rule, conv, signed)
    _close(grad, _straight_through(q_x, q_w, scale, shift, rule, conv, signed))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_the_gradient_rule_leaves_the_forward_output_unchanged(conv):
    """The layer's output is the integer kernel's, whatever the backward does."""
    from dqt_triton import ops

    q_x, q_w, scale = _case(conv)
    y, _ = _layer(q_x, q_w, scale, 6, "floor", conv)
    if conv:
        v = ops.int_conv2d(q_x.to(torch.uint8), q_w.to(torch.int8), act_shift=6, weight_shift=6,
                           shift_rule="floor", **CONV)
        expected = v.to(torch.float32) * scale.view(1, -1, 1, 1)
    else:
        v = ops.int_matmul(q_x.to(torch.uint8), q_w.to(torch.int8), act_shift=6, weight_shift=6, shift_rule="floor")
        expected = v.to(torch.float32) * scale
    assert torch.equal(y, expected)
