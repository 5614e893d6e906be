"""Post-training calibration of a `DQTModel` on data: the controller's budget code, and each
width's batch-norm statistics as deployed; and the check that training's view of the model
agrees with the integer program on data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F

from . import numerics
from .controller import BUDGET_LEVELS
from .nn import share_weight_codes
from .runtime import check_input

if TYPE_CHECKING:
    from .model import DQTModel

Tensor = torch.Tensor


@torch.no_grad()
def calibrate_budget(model: "DQTModel", x: Tensor, target_bitops: float, batch_size: int = 512) -> int:
    """Largest budget code whose mean BitOPs per sample on `x` (integer eval, dynamic mode) is
    at most `target_bitops`; sets it on the model and returns it (0 if even code 0 exceeds it)."""
    with model.kept_mode():
        model.eval()
        model.set_dynamic(True)

        def mean_bitops(code: int) -> float:
            model.budget_code = code
            total = 0.0
            for chunk in x.split(batch_size):
                model(chunk)
                total += float(model.last_bitops.sum())
            return total / max(len(x), 1)

        # Bisection: a lower price moves each layer's argmax of (logit - price * cost) to costlier
        # widths only, so BitOPs never fall as the code grows.
        lo, hi = 0, BUDGET_LEVELS - 1
        if mean_bitops(hi) <= target_bitops:
            lo = hi
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if mean_bitops(mid) <= target_bitops:
                    lo = mid
                else:
                    hi = mid
    model.budget_code = lo
    return lo


def width_norm_layers(model: "DQTModel") -> list:
    """The governed layers that hold a batch norm per width (``bn_per_width``)."""
    return [model.layers[n] for n in model.governed if getattr(model.layers[n], "width_bns", None) is not None]


@torch.no_grad()
def agreement(model: "DQTModel", x: Tensor, batch_size: int = 256) -> float:
    """Top-1 agreement between `DQTModel.simulated_forward` and the integer-only eval on `x`."""
    same, total = 0, 0
    with model.kept_mode():
        model.eval()
        for chunk in x.split(batch_size):
            agree = model.simulated_forward(chunk).argmax(1) == model(chunk).argmax(1)  # [B] or per token [B, T]
            same, total = same + int(agree.sum()), total + agree.numel()
    return same / max(total, 1)


@torch.no_grad()
def calibrate_widths(model: "DQTModel", x: Tensor, y: Tensor, target_bitops: float,
                     batch_size: int = 512) -> tuple[tuple[int, ...], int]:
    """The range of widths the controller may pick (`Controller.allow`) and the budget code that
    do best on (x, y) at mean BitOPs per sample at most `target_bitops` (integer eval, dynamic
    mode): every run of two or more consecutive candidates, each at its `calibrate_budget` code.
    Best is the highest accuracy, then the lowest mean cross-entropy (for next-token targets
    [B, T], the lowest cross-entropy). Sets both on the model and returns them."""
    if model.controller is None:
        raise ValueError("calibrate_widths needs a model with a controller")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"calibrate_widths needs samples and one target each, got {len(x)} and {len(y)}")
    cands, best, previous = model.candidate_bits, None, model.controller.allowed_bits
    try:
        with model.kept_mode():
            model.eval()
            model.set_dynamic(True)
            for lo in range(len(cands) - 1):
                for hi in range(lo + 1, len(cands)):
                    model.controller.allow(cands[lo:hi + 1])
                    code = calibrate_budget(model, x, target_bitops, batch_size)
                    correct = loss = bitops = 0.0
                    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                        logits = model(xb)
                        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                        correct += float((logits.argmax(1) == yb).sum()) if yb.dim() == 1 else 0.0
                        bitops += float(model.last_bitops.double().sum())
                    if bitops / len(x) <= target_bitops and (best is None or (correct, -loss) > best[0]):
                        best = ((correct, -loss), cands[lo:hi + 1], code)
    finally:
        model.controller.allow(previous if best is None else best[1])
    if best is None:
        raise ValueError(f"no range of two or more widths meets {target_bitops:.6g} BitOPs per sample on these inputs")
    model.budget_code = best[2]
    return best[1], best[2]


@torch.no_grad()
def recalibrate_norms(model: "DQTModel", x: Tensor, bits: Optional[Sequence[int]] = None,
                      batch_size: int = 256) -> list[int]:
    """Re-estimate each width's batch-norm statistics from inputs `x`, as deployed.

    For every width b (default: every candidate), the governed layers' batch norms of weight
    shift 8 - b forget their running statistics and take the exact average over `x` of the
    batch statistics of uniform b-bit forward passes (each batch normalized with its own
    statistics, as in training; slimmable networks' post-training calibration). Only the
    statistics change: weights, scales, affine parameters, the controller and the edge layers'
    norms stay as they are. Needs ``bn_per_width``; returns the widths recalibrated.
    """
    arch = model.arch
    check_input(arch.input_shape, arch.input_dtype, arch.input_scale, x)  # before any statistics are reset
    if x.shape[0] == 0:
        raise ValueError("recalibrate_norms needs at least one sample, got an empty batch")
    widths = list(model.candidate_bits if bits is None else bits)
    for b in widths:
        if b not in model.candidate_bits:
            raise ValueError(f"recalibrate_norms: {b} bits is not a candidate width {model.candidate_bits}")
    layers = width_norm_layers(model)
    if not layers:
        raise ValueError("recalibrate_norms: no governed layer has a batch norm per width (bn_per_width)")
    with model.kept_mode(), share_weight_codes():
        model.train(False)
        for b in widths:
            norms = [layer.width_bns[numerics.MASTER_BITS - b] for layer in layers]
            momenta = [bn.momentum for bn in norms]
            for bn in norms:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average over the batches
                bn.train(True)
            try:
                for chunk in x.split(batch_size):
                    model.train_forward(chunk, force_bits=b)
            finally:
                for bn, momentum in zip(norms, momenta):
                    bn.momentum = momentum
                    bn.train(False)
    return widths
