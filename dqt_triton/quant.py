"""Autograd pieces of nested quantization-aware training.

Forward passes produce exactly the integers of docs/numerics.md (matmul and conv run through
`dqt_triton.ops`); backward passes are floating point with straight-through estimators:

- `lsq_codes`: master codes clamp(round_half_even(x / D)) with LSQ gradients for x and the
  step D (Esser et al.; the gradient of D is scaled by 1 / sqrt(numel * hi)).
- `int_linear` / `int_conv2d`: the integer layer on master codes with per-sample shifts, output
  ``float32(v) * scale`` with v the master-unit accumulator. Gradients reach the codes (through
  the nested shift as identity, except for unsigned codes that the floor rule shifts to code 0,
  which get none: see below), the per-channel output scale, and optionally the per-sample
  width gates of a controller (the gradient of gate j is the layer output at candidate j:
  computed for every candidate with ``gate_gradients="all"``; for the chosen width and its two
  neighbours with ``"local"``, farther candidates taking the nearer neighbour's value; not at
  all with ``"none"``, where the controller learns from its other terms only).

The floor rule's dead zone. Unsigned activation codes come from a ReLU (or are images) and
are mostly small. Under the floor rule their b-bit code 0 holds every master code below
2^k, a whole b-bit step (64 of 255 codes at 2 bits, where the round rule's code 0 holds half a
step), so at low widths most of the ReLU's active elements, and sometimes a whole tensor, reach
the layer as 0. A straight-through gradient there is that of an input the layer does not see:
in an untrained DenseNet-121 at 2 bits whole dense layers read nothing but code 0, their
constant output channels meet the next batch norms (gain 1 / sqrt(eps) = 316), and the
identity shift carried that gradient back into every element, up to float32 overflow at the
first step (issue 26). The floor rule therefore passes no input gradient through unsigned
codes whose shifted code is 0 (``q < 2^k``, ``k >= 1``). Signed codes (no dead zone at zero),
8-bit rows (k = 0) and the round rule keep the plain straight-through gradient; weight
gradients, the forward pass and the integer results are unchanged.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from . import ops
from .numerics import MASTER_BITS, MAX_SHIFT, check_shift_rule, code_range

Tensor = torch.Tensor
GATE_GRADIENTS = ("all", "local", "none")


class _LSQCodes(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
        ratio = x / scale
        q = torch.clamp(torch.round(ratio), lo, hi)
        inside = (ratio >= lo) & (ratio <= hi)
        ctx.save_for_backward(ratio, scale, inside)
        return q

    @staticmethod
    def backward(ctx, grad_q: Tensor):
        ratio, scale, inside = ctx.saved_tensors
        grad_x = torch.where(inside, grad_q / scale, torch.zeros_like(grad_q))
        # Downstream multiplies q by D, which supplies the q term of LSQ's (q - x/D); here only
        # the -x/D^2 part of d(round(x/D))/dD remains, and clipped elements contribute nothing.
        grad_scale_elems = torch.where(inside, -grad_q * ratio / scale, torch.zeros_like(grad_q))
        grad_scale = _sum_to(grad_scale_elems, scale.shape)
        return grad_x, grad_scale, None, None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to `shape` (a scalar or a per-channel [C, 1, ...] scale)."""
    if t.shape == shape:
        return t
    if len(shape) == 0:
        return t.sum()
    dims = [d for d in range(t.dim()) if d >= len(shape) or shape[d] == 1]
    return t.sum(dim=dims, keepdim=True).reshape(shape)


def lsq_codes(x: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    """Master codes of `x` as a float tensor, with LSQ straight-through gradients.

    The scale's gradient here is only the -x/D part of LSQ's (q - x/D); the q part arrives
    through the consumer, which multiplies the codes by D. Scale its gradient where
    the scale is produced (`scale_grad`), so both parts get the same factor.
    """
    return _LSQCodes.apply(x, scale, lo, hi)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.factor, None


def scale_grad(t: Tensor, factor: float) -> Tensor:
    """Identity forward (bit for bit); gradient multiplied by `factor` (LSQ's 1/sqrt(n * hi))."""
    return _ScaleGrad.apply(t, factor)


def lsq_grad_factor(elements_per_step: int, hi: int) -> float:
    return 1.0 / math.sqrt(max(elements_per_step, 1) * hi)


def shifted_float(q: Tensor, shift: Tensor | int, signed: bool, rule: str) -> Tensor:
    """Nested-width codes back in master units as float: shift(q, k) * 2^k (broadcast `shift`).

    Computed in float (q's dtype; integer codes promote to float32) without integer round trips
    (the backward passes call this for every width): q is an integer below 2^9 in magnitude and
    every factor a power of two, so scaling, adding half a step and flooring are exact and the
    result equals ``nested_shift(q, k) << k`` bit for bit (tests/test_quant.py checks every code
    and shift).
    """
    q = q.detach()
    round_rule = check_shift_rule(rule)
    hi = code_range(MASTER_BITS, signed)[1]
    if isinstance(shift, int):
        if not 0 <= shift <= MAX_SHIFT:
            raise ValueError(f"shift must be in [0, {MAX_SHIFT}], got {shift}")
        unit = float(1 << shift)
        if not round_rule:
            return torch.floor(q / unit) * unit
        if shift == 0:
            return q.clone()
        return torch.floor((q + unit / 2) / unit).clamp_max_(hi >> shift).mul_(unit)
    k = shift.to(device=q.device, dtype=torch.long)
    powers = torch.tensor([float(1 << i) for i in range(MAX_SHIFT + 1)], dtype=q.dtype, device=q.device)
    unit = powers[k]
    if not round_rule:
        return torch.floor(q / unit) * unit
    half = torch.where(k > 0, unit / 2, torch.zeros_like(unit))
    cap = torch.floor(hi / unit)  # hi >> k
    return torch.minimum(torch.floor((q + half) / unit), cap).mul_(unit)


def _rows_shift(shift: Tensor | int, rows: int, device) -> Tensor:
    if isinstance(shift, int):
        return torch.full((rows,), shift, dtype=torch.int32, device=device)
    return shift.to(device=device, dtype=torch.int32)


def _view_rows(t: Tensor, ndim: int) -> Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


class _IntLayer(torch.autograd.Function):
    """Shared forward/backward of the integer linear and conv2d layers (see module docstring)."""

    @staticmethod
    def forward(ctx, q_x, q_w, scale, gates, act_shift, weight_shift, candidates, conv, signed, rule, where,
                local_gates):
        x_codes = q_x.detach().to(torch.int8 if signed else torch.uint8)
        w_codes = q_w.detach().to(torch.int8)
        if conv is None:
            v = ops.int_matmul(x_codes, w_codes, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule)
            y = v.to(torch.float32) * scale
        else:
            v = ops.int_conv2d(x_codes, w_codes, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule,
                               **conv)
            y = v.to(torch.float32) * scale.view(1, -1, 1, 1)
        ctx.save_for_backward(q_x, q_w, scale, v)
        ctx.meta = (act_shift, weight_shift, candidates, conv, signed, rule, gates is not None, where, local_gates)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        q_x, q_w, scale, v = ctx.saved_tensors
        act_shift, weight_shift, candidates, conv, signed, rule, has_gates, where, local_gates = ctx.meta
        if not bool(torch.isfinite(grad_y).all()):
            # A layer cannot tell whether an update has been made: say what each case means.
            raise FloatingPointError(
                f"non-finite gradient (NaN/inf) reaching {where} at {_describe_shift(weight_shift)}. If no parameter "
                "update has been made yet (the first step), this is not divergence and the learning rate plays no "
                "part: the backward pass of the model as it stands overflows at these widths (try wider widths or "
                "the other shift rule, and report it); after updates, training has diverged: lower the learning "
                "rate or clip gradients")
        rows = q_x.shape[0]
        channel_view = (1, -1) if conv is None else (1, -1, 1, 1)
        grad_v = grad_y * scale.view(*channel_view)
        ka = _rows_shift(act_shift, rows, q_x.device)
        kw = _rows_shift(weight_shift, rows, q_x.device)
        x_eff = shifted_float(q_x, _view_rows(ka, q_x.dim()), signed, rule)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and isinstance(weight_shift, int):  # one width for the batch
            grad_x = _grad_input(grad_v, shifted_float(q_w, weight_shift, True, rule), q_x.shape, conv)
        elif ctx.needs_input_grad[0]:  # each row sees the weights at its own width
            grad_x = torch.zeros_like(q_x)
            for k in torch.unique(kw).tolist():
                sel = (kw == k).nonzero().flatten()
                grad_x[sel] = _grad_input(grad_v[sel], shifted_float(q_w, k, True, rule), q_x[sel].shape, conv)
        if grad_x is not None and rule == "floor" and not signed:
            # Floor rule, unsigned codes: the b-bit code 0 holds every master code below 2^k, a whole
            # b-bit step (round: half of one); no straight-through gradient where x_eff is that code.
            grad_x = grad_x.masked_fill_((x_eff == 0) & (_view_rows(ka, q_x.dim()) > 0), 0.0)
        if ctx.needs_input_grad[1]:  # x_eff already carries each row's width: one pass over the batch
            grad_w = _grad_weight(grad_v, x_eff, q_w.shape, conv)
        grad_scale = None
        if ctx.needs_input_grad[2]:
            dims = [0] if conv is None else [0, 2, 3]
            grad_scale = (grad_y * v.to(grad_y.dtype)).sum(dim=dims)
        grad_gates = None
        if has_gates and ctx.needs_input_grad[3]:
            if local_gates:
                grad_gates = _local_gate_gradients(grad_v, q_x, q_w, v, kw, candidates, conv, signed, rule)
            else:
                grad_gates = torch.stack(
                    [(grad_v * _candidate_output(q_x, q_w, k, conv, signed, rule)).flatten(1).sum(1)
                     for k in candidates],
                    dim=1,
                )
        return grad_x, grad_w, grad_scale, grad_gates, None, None, None, None, None, None, None, None


def _local_gate_gradients(grad_v, q_x, q_w, v, kw, candidates, conv, signed, rule) -> Tensor:
    """Gate gradients [rows, J] from the chosen candidate (its output is v: free) and its two
    neighbours (one pass per candidate over the rows whose choice is next to it); a candidate
    farther away takes the value of the neighbour on its side. Costs two candidate passes of the
    batch instead of J."""
    rows, J = grad_v.shape[0], len(candidates)
    position = {k: j for j, k in enumerate(candidates)}
    chosen = torch.tensor([position[k] for k in kw.tolist()], device=grad_v.device)
    near = torch.zeros(rows, J, dtype=grad_v.dtype, device=grad_v.device)
    near[torch.arange(rows, device=grad_v.device), chosen] = (grad_v * v.to(grad_v.dtype)).flatten(1).sum(1)
    for j in range(J):  # candidate j, for every row whose choice is next to it
        sel = ((chosen == j - 1) | (chosen == j + 1)).nonzero().flatten()
        if sel.numel():
            out = _candidate_output(q_x[sel], q_w, candidates[j], conv, signed, rule)
            near[sel, j] = (grad_v[sel] * out).flatten(1).sum(1)
    columns = torch.arange(J, device=grad_v.device)
    nearest = torch.minimum(torch.maximum(columns[None, :], chosen[:, None] - 1), chosen[:, None] + 1).clamp(0, J - 1)
    return near.gather(1, nearest)


def _describe_shift(weight_shift) -> str:
    if isinstance(weight_shift, torch.Tensor):
        bits = sorted({MASTER_BITS - int(k) for k in torch.unique(weight_shift).tolist()})
        return f"widths {bits} (per sample)"
    return f"{MASTER_BITS - int(weight_shift)}-bit weights"


def _grad_input(grad_v, w_eff, x_shape, conv):
    if conv is None:
        return grad_v @ w_eff
    return torch.nn.grad.conv2d_input(x_shape, w_eff, grad_v, conv["stride"], conv["padding"], conv["dilation"],
                                      conv["groups"])


def _grad_weight(grad_v, x_eff, w_shape, conv):
    if conv is None:
        return grad_v.t() @ x_eff
    if tuple(w_shape[2:]) == (1, 1) and conv["groups"] == 1 and tuple(conv["padding"]) == (0, 0) \
            and tuple(conv["stride"]) != (1, 1):
        # oneDNN's channels-last backward-weights kernel for strided 1x1 convolutions hangs (AVX2)
        # or corrupts the heap (AVX-512) at small channel counts (uxlfoundation/oneDNN#6035; seen
        # with 8 input channels); a strided 1x1 convolution's weight gradient is one matmul.
        sh, sw = conv["stride"]
        x_used = x_eff[:, :, ::sh, ::sw][:, :, :grad_v.shape[2], :grad_v.shape[3]]
        g = grad_v.permute(1, 0, 2, 3).reshape(grad_v.shape[1], -1)
        return (g @ x_used.permute(0, 2, 3, 1).reshape(-1, x_eff.shape[1])).view(w_shape)
    return torch.nn.grad.conv2d_weight(x_eff, w_shape, grad_v, conv["stride"], conv["padding"], conv["dilation"],
                                       conv["groups"])


def _candidate_output(q_x, q_w, k, conv, signed, rule):
    """Master-unit accumulator of the layer if every sample used shift k (float, for gate grads)."""
    x_eff = shifted_float(q_x, k, signed, rule)
    w_eff = shifted_float(q_w, k, True, rule)
    if conv is None:
        return x_eff @ w_eff.t()
    return F.conv2d(x_eff, w_eff, None, conv["stride"], conv["padding"], conv["dilation"], conv["groups"])


def int_layer(
    q_x: Tensor,
    q_w: Tensor,
    scale: Tensor,
    *,
    act_shift: Tensor | int,
    weight_shift: Tensor | int,
    signed: bool,
    rule: str = "floor",
    conv: Optional[dict] = None,
    gates: Optional[Tensor] = None,
    candidate_bits: Sequence[int] = (),
    where: str = "a layer",
    gate_gradients: str = "all",
) -> Tensor:
    """``float32(v) * scale[n]`` where v is the integer layer's master-unit accumulator.

    q_x, q_w: master codes as float tensors (from `lsq_codes`); scale: D_x * D_w[n] (float32,
    [N]); conv: None for a linear layer, else dict(stride, padding, dilation, groups). With
    `gates` ([rows, J] hard one-hot, straight-through) the shifts must be the per-sample choice
    of `candidate_bits` that the gates select; gate gradients are then computed as
    `gate_gradients` says ("all", "local" or "none", see the module docstring). `where` names
    the layer in the error raised when a non-finite gradient reaches it.
    """
    if gate_gradients not in GATE_GRADIENTS:
        raise ValueError(f"gate_gradients must be one of {GATE_GRADIENTS}, got {gate_gradients!r}")
    if gate_gradients == "none":
        gates = None
    candidates = tuple(MASTER_BITS - b for b in candidate_bits)
    return _IntLayer.apply(q_x, q_w, scale, gates, act_shift, weight_shift, candidates, conv, signed, rule, where,
                           gate_gradients == "local")


def gumbel_hard(logits: Tensor, tau: float, training: bool, generator: Optional[torch.Generator] = None) -> Tensor:
    """Hard one-hot over the last axis: Gumbel-Softmax with straight-through gradients in
    training, argmax (first maximum) otherwise."""
    if training:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1 - 1e-10)
        soft = torch.softmax((logits - torch.log(-torch.log(uniform))) / tau, dim=-1)
    else:
        soft = torch.softmax(logits, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1) if training else logits.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard + soft - soft.detach()
