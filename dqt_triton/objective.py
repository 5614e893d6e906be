"""The DQT training objective: task + alpha * consistency + beta * budget + imitation.

`LossConfig` holds its options (written once: `DQTModel.dqt_loss`, `TrainConfig` and the CLI
take them from here); `dqt_loss` returns a typed `LossTerms`. The model is used through its
training path (`DQTModel.train_forward`, which returns a `TrainOutput`), never through
attributes set in one place and read in another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
import torch.nn.functional as F

from .controller import BUDGET_LEVELS, budget_price
from .convert import option
from .nn import share_weight_codes
from .quant import GATE_GRADIENTS

if TYPE_CHECKING:
    from .model import DQTModel

Tensor = torch.Tensor
IMITATION_SOURCES = ("holdout", "sandwich", "teacher")
IMITATION_MODES = ("expected", "best")
TOKEN_COSTS = ("gradient", "position")


@dataclass
class LossConfig:
    """Options of the DQT objective (`dqt_loss`)."""

    alpha: float = option(1.0, "weight of the consistency (sandwich) term")
    beta: float = option(1.0, "weight of the per-sample BitOPs price (applies with a target BitOPs)")
    imitation: float = option(1.0, "weight of the controller's imitation of each sample's cost per width")
    imitation_source: str = option("sandwich", "what the controller learns each width's cost from: the sandwich "
                                   "widths' losses, their divergence from the widest ('teacher'), or held-out "
                                   "samples judged at every width ('holdout')", choices=IMITATION_SOURCES)
    imitation_mode: str = option("expected", "controller learns each width's expected cost per input "
                                 "('expected') or the best width ('best')", choices=IMITATION_MODES)
    imitation_samples: int = option(16, "'holdout' source: held-out samples judged at every width per step")
    distill: bool = option(True, "lower widths learn from the widest one's predictions",
                           negative_flag=("--no-distill", "lower widths learn from the labels"))
    sampled_widths: int = option(1, "random middle widths per step besides the widest and narrowest; -1 = all")
    mixed_passes: int = option(0, "consistency passes besides the sandwich's, each with a random candidate width per "
                               "controller head (and token, for per-token controllers), distilled like the others: "
                               "the network learns the mixed widths a controller deploys (0: off)")
    consistency_share: float = option(0.5, "share of each batch the consistency widths see, at least two samples "
                                      "(1.0: all of it, dearer)")
    token_costs: str = option("gradient", "a per-token controller's imitation target: each sample's loss at a width "
                              "shared among its tokens and governed layers in proportion to |dL/dy|^2 |y_b - y_8|^2 "
                              "('gradient'), or each token's own position's loss, its sample's with one target per "
                              "sample ('position')", choices=TOKEN_COSTS)
    gate_gradients: str = option("local", "task-loss gradients to the controller's gates: 'all' (one pass per "
                                 "width), 'local' (the chosen width and its neighbours) or 'none'",
                                 choices=GATE_GRADIENTS)

    def __post_init__(self) -> None:
        if self.imitation_source not in IMITATION_SOURCES:
            raise ValueError(f"imitation_source must be one of {IMITATION_SOURCES}, got {self.imitation_source!r}")
        if self.imitation_mode not in IMITATION_MODES:
            raise ValueError(f"imitation_mode must be 'expected' or 'best', got {self.imitation_mode!r}")
        if self.imitation > 0 and self.imitation_samples < 1:
            raise ValueError(f"imitation_samples must be at least 1, got {self.imitation_samples}")
        if self.mixed_passes < 0:
            raise ValueError(f"mixed_passes must be at least 0, got {self.mixed_passes}")
        if not 0.0 < self.consistency_share <= 1.0:
            raise ValueError(f"consistency_share must be in (0, 1], got {self.consistency_share}")
        if self.token_costs not in TOKEN_COSTS:
            raise ValueError(f"token_costs must be one of {TOKEN_COSTS}, got {self.token_costs!r}")
        if self.gate_gradients not in GATE_GRADIENTS:
            raise ValueError(f"gate_gradients must be one of {GATE_GRADIENTS}, got {self.gate_gradients!r}")


class LossTerms(NamedTuple):
    """The objective and its detached terms."""

    loss: Tensor  # what to backpropagate
    task: Tensor
    consistency: Tensor
    budget: Tensor
    imitation: Tensor
    logits: Tensor  # the dynamic (or static) path's, detached
    bits: Tensor  # [B, layers, 2] chosen by that path
    bitops: Tensor  # [B]


def dqt_loss(model: "DQTModel", x: Tensor, target: Tensor, config: LossConfig, *,
             target_bitops: Optional[float] = None, imitation_data: Optional[tuple[Tensor, Tensor]] = None,
             generator: Optional[torch.Generator] = None) -> LossTerms:
    """See `DQTModel.dqt_loss`."""
    with share_weight_codes():  # every pass below sees the same weights: quantize them once
        return _dqt_loss(model, x, target, config, target_bitops, imitation_data, generator)


def _dqt_loss(model: "DQTModel", x: Tensor, target: Tensor, cfg: LossConfig, target_bitops: Optional[float],
              imitation_data: Optional[tuple[Tensor, Tensor]], generator: Optional[torch.Generator]) -> LossTerms:
    dynamic = model.dynamic and model.controller is not None
    priced = dynamic and cfg.beta > 0 and bool(target_bitops)
    if priced and cfg.imitation > 0 and cfg.imitation_source != "holdout" and cfg.alpha <= 0:
        raise ValueError(f"imitation_source={cfg.imitation_source!r} learns from the consistency term's widths: "
                         "it needs alpha > 0 (or imitation_source='holdout')")
    token_costs = priced and cfg.imitation > 0 and model.controller.per_token and cfg.token_costs != "position"
    if token_costs and cfg.imitation_source == "holdout":
        raise ValueError(f"token_costs={cfg.token_costs!r} shares the sandwich's losses among tokens: it needs "
                         "imitation_source 'sandwich' or 'teacher' (or token_costs='position')")
    budget_codes = torch.randint(0, BUDGET_LEVELS, (x.shape[0],), generator=generator).to(x.device) if priced else None
    out = model.train_forward(x, budget_codes=budget_codes, gate_gradients=cfg.gate_gradients)
    task = F.cross_entropy(out.logits, target)
    if not bool(torch.isfinite(task)):
        raise FloatingPointError("non-finite task loss of the dynamic/static path: training has diverged")
    zero = torch.zeros((), device=out.logits.device)
    consistency, budget, imitate = zero, zero, zero
    # at least two samples where the batch has them: the sandwich's batch norms need two
    n = max(round(cfg.consistency_share * x.shape[0]), min(2, x.shape[0]))
    if cfg.alpha > 0:
        consistency, sandwich_losses, sensitivity = _consistency(model, x[:n], target[:n], cfg, generator,
                                                                 model.governed if token_costs else None)
    if budget_codes is not None and out.soft_bitops is not None:
        lam = budget_price(budget_codes).to(out.soft_bitops.device)
        budget = (lam * out.soft_bitops / target_bitops).mean()
        if cfg.imitation > 0 and out.controller_logits is not None:
            if cfg.imitation_source in ("sandwich", "teacher"):
                per_width = sandwich_losses[0 if cfg.imitation_source == "sandwich" else 1]
                if sensitivity is not None:
                    per_width = _shared_costs(per_width, sensitivity)
                logits_i, lam_i = out.controller_logits[:n], lam[:n]
            else:
                if imitation_data is not None:
                    xi, yi = imitation_data
                    codes = torch.randint(0, BUDGET_LEVELS, (xi.shape[0],), generator=generator).to(xi.device)
                    held = model.train_forward(xi, budget_codes=codes, gate_gradients=cfg.gate_gradients)
                    logits_i, lam_i = held.controller_logits, budget_price(codes).to(out.soft_bitops.device)
                else:
                    sub = slice(0, min(cfg.imitation_samples, x.shape[0]))
                    xi, yi, logits_i, lam_i = x[sub], target[sub], out.controller_logits[sub], lam[sub]
                per_width = _losses_per_width(model, xi, yi)
            imitate = _imitation_loss(model, logits_i, per_width, lam_i, target_bitops, cfg.imitation_mode)
    total = task + cfg.alpha * consistency + cfg.beta * budget + cfg.imitation * imitate
    return LossTerms(total, task.detach(), consistency.detach(), budget.detach(), imitate.detach(),
                     out.logits.detach(), out.bits, out.bitops)


@torch.no_grad()
def _losses_per_width(model: "DQTModel", x: Tensor, target: Tensor) -> dict:
    """Per-sample cross-entropy at every candidate width, as deployed (running statistics,
    learned ranges): what each width would cost each sample."""
    was_training = model.training
    model.train(False)
    try:
        return {b: F.cross_entropy(model.train_forward(x, force_bits=b).logits, target, reduction="none")
                for b in model.candidate_bits}
    finally:
        model.train(was_training)


def _imitation_loss(model: "DQTModel", controller_logits: Tensor, per_width: dict, lam: Tensor, unit: float,
                    mode: str) -> Tensor:
    """Teach the controller each sample's cost of every width, CE_b + lambda * BitOPs(uniform b) / unit.

    "expected": every governed layer's logits (net of the price) regress the negated costs,
    both centred over the widths (Huber): the argmax then estimates the width of least
    expected cost, and where the controller cannot tell inputs apart it settles on the width
    best on average instead of betting on the likeliest best one. "best": cross-entropy
    against each sample's cheapest width (argmin).

    Costs per token and governed layer ([B, T, L] per width, `_shared_costs`) are priced per
    layer: lambda * L * (that layer's MACs) * b^2 / unit, the same T * L scale as the costs.
    """
    widths = sorted(per_width)
    losses = torch.stack([per_width[b] for b in widths], dim=-1)  # [B, (T, (L,)) |S|]
    index = torch.tensor([model.candidate_bits.index(b) for b in widths], device=losses.device)
    if losses.dim() == 4:  # a cost per token and governed layer
        tokens = controller_logits.shape[1]
        squares = torch.tensor([float(b * b) for b in widths], device=losses.device)
        controller_logits = controller_logits.flatten(0, 1)
        macs = torch.tensor([float(model.arch.macs[n]) for n in model.governed], device=losses.device)
        price = len(model.governed) * macs[:, None] * squares / unit  # [L, |S|]
        total = losses.flatten(0, 1) + lam.repeat_interleave(tokens)[:, None, None] * price
        if controller_logits.shape[1] == 1:  # one head per token: its width sets every layer, so its cost
            total = total.mean(1, keepdim=True)  # is the layers' sum (on the T * L scale, their mean)
    else:
        if controller_logits.dim() == 4:  # a width per token: each token is a row (it imitates its own cost,
            tokens = controller_logits.shape[1]  # or its sample's when the task has one target per sample)
            controller_logits = controller_logits.flatten(0, 1)
            losses = losses.flatten(0, 1) if losses.dim() == 3 else losses.repeat_interleave(tokens, 0)
            lam = lam.repeat_interleave(tokens)
        elif losses.dim() == 3:  # per-token targets, one width per sample: the sample's mean cost
            losses = losses.mean(1)
        cost = torch.tensor([model.uniform_bitops(b) / unit for b in widths], device=losses.device)
        total = (losses + lam[:, None] * cost)[:, None, :]  # [rows, 1, |S|]: every head the same
    heads = controller_logits.shape[1]
    if mode == "best":
        target = index[total.argmin(-1)].expand(-1, heads)  # candidate index of each best width
        return F.cross_entropy(controller_logits.reshape(-1, controller_logits.shape[-1]), target.reshape(-1))
    want = -(total - total.mean(-1, keepdim=True))
    got = controller_logits[:, :, index]  # [rows, heads, |S|]
    got = got - got.mean(2, keepdim=True)
    return F.huber_loss(got, want.expand_as(got), delta=1.0)


def _shared_costs(per_width: dict, sensitivity: dict) -> dict:
    """Each sample's loss above the widest width's (mean per prediction for sequences), shared
    among its tokens and governed layers in proportion to their sensitivity |dL/dy|^2 |y_b - y_8|^2
    (a Fisher estimate of the loss one token's error at one layer adds; through attention it counts
    the later positions a token's keys and values reach), times T * L so that a token-layer's
    mean cost is its sample's: {width: [B, T, L]}."""
    widest = max(per_width)
    costs = {}
    for b, loss in per_width.items():
        excess = loss - per_width[widest]
        if excess.dim() == 2:
            excess = excess.mean(1)
        s = sensitivity[b]
        share = s / s.sum((1, 2), keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
        costs[b] = share * excess.view(-1, 1, 1) * (s.shape[1] * s.shape[2])
    return costs


def sandwich_widths(candidate_bits: tuple[int, ...], sampled_widths: Optional[int],
                    generator: Optional[torch.Generator]) -> list[int]:
    """The consistency term's widths S, widest first: every candidate (`sampled_widths` None or
    negative), else the widest, the narrowest and `sampled_widths` random others."""
    cands = list(candidate_bits)
    if sampled_widths is None or sampled_widths < 0 or len(cands) <= 2 + sampled_widths:
        return cands[::-1]
    middle = cands[1:-1]
    pick = torch.randperm(len(middle), generator=generator)[:sampled_widths].tolist()
    return [cands[-1]] + sorted((middle[i] for i in pick), reverse=True) + [cands[0]]


def _divergence(out: Tensor, teacher: Tensor) -> Tensor:
    """KL(teacher || out) over the classes (axis 1) at each position: [B] for logits [B, C], [B, T]
    for next-token logits [B, C, T], so that its mean is per prediction as cross-entropy's is
    (`batchmean` would sum a sequence's T positions)."""
    return F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher, 1), log_target=True, reduction="none").sum(1)


def _mixed_pass(model: "DQTModel", x: Tensor, target: Tensor, teacher: Optional[Tensor],
                generator: Optional[torch.Generator]) -> Tensor:
    """Divergence from the widest width's predictions (`teacher`; None: cross-entropy on the
    labels) of one pass whose widths are drawn per controller head (and token) uniformly from
    the candidates: mixtures like the controller's, which the uniform sandwich widths never show
    the network (tokens at different widths meet in attention and LayerNorm)."""
    ctrl = model.controller
    heads = (x.shape[0], *((ctrl.tokens,) if ctrl.per_token else ()), ctrl.num_layers)
    pick = torch.randint(0, len(model.candidate_bits), heads, generator=generator).to(x.device)
    widths = torch.tensor(model.candidate_bits, device=x.device)[pick].expand(*heads[:-1], len(model.governed))
    out = model.train_forward(x, gate_gradients="none", force_widths=widths).logits
    loss = F.cross_entropy(out, target) if teacher is None else _divergence(out, teacher).mean()
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError("non-finite consistency loss at mixed widths: training has diverged")
    return loss


def _consistency(model: "DQTModel", x: Tensor, target: Tensor, cfg: LossConfig, generator: Optional[torch.Generator],
                 record: Optional[list[str]] = None) -> tuple[Tensor, tuple[dict, dict], Optional[dict]]:
    """Mean consistency loss over the width set S, and each width's detached per-sample
    cross-entropy on the labels and divergence from the widest (what the imitation learns from).
    With `record` (governed token layers), also each width's sensitivity per sample, token and
    layer, |dL/dy|^2 |y_b - y_8|^2 with the gradient of the widest path's loss: [B, T, L]."""
    teacher, first = None, None
    losses, per_sample, drift, recorded = [], {}, {}, {}
    for b in sandwich_widths(model.candidate_bits, cfg.sampled_widths, generator):
        recorded[b] = dict.fromkeys(record) if record else None
        out = model.train_forward(x, force_bits=b, record=recorded[b]).logits
        per_sample[b] = F.cross_entropy(out.detach(), target, reduction="none")
        drift[b] = torch.zeros_like(per_sample[b]) if teacher is None else _divergence(out.detach(), teacher)
        if teacher is None or not cfg.distill:
            loss = F.cross_entropy(out, target)
            teacher, first = (out.detach(), (b, out)) if teacher is None else (teacher, first)
        elif out.dim() == 2:  # batchmean: the sum over the batch in one reduction, as before sequences
            loss = F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher, 1), log_target=True, reduction="batchmean")
        else:
            loss = _divergence(out, teacher).mean()  # per prediction: a sequence's T positions are averaged
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite consistency loss at {b} bits: training has diverged")
        losses.append(loss)
    if cfg.mixed_passes and model.dynamic and model.controller is not None:
        teacher = teacher if cfg.distill else None
        losses += [_mixed_pass(model, x, target, teacher, generator) for _ in range(cfg.mixed_passes)]
    sensitivity = None
    if record:
        widest, out = first
        outputs = [recorded[widest][n][0] for n in record]
        if any(y.dim() != 3 for y in outputs):
            raise ValueError("gradient token costs need governed layers on token sequences [B, T, D]")
        # per-sample gradients: a sample's outputs reach only its own loss
        grads = torch.autograd.grad(F.cross_entropy(out, target, reduction="sum"), outputs, retain_graph=True)
        g2 = torch.stack([g.pow(2).sum(-1) for g in grads], -1)
        sensitivity = {b: g2 * torch.stack([rec[n][1].pow(2).sum(-1) for n in record], -1)
                       for b, rec in recorded.items()}
    return torch.stack(losses).mean(), (per_sample, drift), sensitivity


__all__ = ["LossConfig", "LossTerms", "dqt_loss", "sandwich_widths", "IMITATION_SOURCES", "IMITATION_MODES",
           "TOKEN_COSTS"]
