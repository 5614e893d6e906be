"""Statistics of width policies on labelled data: accuracy, BitOPs and their spread per input,
the share of inputs at each cascade stage, and the hull of the uniform widths."""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
from torch import Tensor

from .cascade import Cascade, FrozenCascade


@torch.no_grad()
def cascade_run(model, cascade: Cascade, x: Tensor, y: Tensor, batch_size: int = 512) -> tuple[Tensor, Tensor, Tensor]:
    """Per input of (x, y): correct or not, BitOPs and final stage, with the cascade run on its
    frozen integer programs."""
    frozen = FrozenCascade.from_model(model, cascade)
    right, spent, stages = [], [], []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = frozen(xb)
        right.append(logits.argmax(1).cpu() == yb.cpu())
        spent.append(frozen.last_bitops)
        stages.append(frozen.last_stage)
    return torch.cat(right), torch.cat(spent), torch.cat(stages)


def evaluate_cascade(model, cascade: Cascade, x: Tensor, y: Tensor, batch_size: int = 512) -> dict:
    """`training.evaluate`'s statistics for a cascade (`cascade_run`): accuracy, mean BitOPs,
    dearest/cheapest decile, accuracy of the cheap and dear halves, share of inputs ending at
    each stage."""
    right, spent, stages = cascade_run(model, cascade, x, y, batch_size)
    return cascade_statistics(right.float(), spent, stages, len(cascade.stages))


def cost_statistics(right: Tensor, spent: Tensor) -> dict:
    """Accuracy and mean BitOPs of per-input correctness `right` and costs `spent`, with the
    spread (mean BitOPs of the dearest 10% of inputs / the cheapest 10%) and the accuracy of
    the cheap and dear halves (split at the median cost, ties broken by order)."""
    order = torch.argsort(spent, stable=True)
    tenth, half = max(len(order) // 10, 1), len(order) // 2
    cheap, dear = spent[order[:tenth]].mean(), spent[order[-tenth:]].mean()
    return {"accuracy": float(right.mean()) if len(right) else 0.0, "bitops": float(spent.mean()),
            "spread": float(dear / cheap) if float(cheap) > 0 else None,
            "cheap_half_accuracy": float(right[order[:half]].mean()) if half else None,
            "dear_half_accuracy": float(right[order[half:]].mean()) if half else None}


def cascade_statistics(right: Tensor, spent: Tensor, stages: Tensor, num_stages: int) -> dict:
    return {**cost_statistics(right, spent),
            "stage_shares": [float((stages == i).float().mean()) for i in range(num_stages)]}


def hull_accuracy(points: Sequence[tuple[float, float]], bitops: float) -> Optional[float]:
    """Accuracy of the upper concave hull of (BitOPs, accuracy) points at `bitops`: the best
    mix of two points' inputs (None below the cheapest point; the best point's accuracy at or
    beyond the dearest)."""
    pts = sorted(points)
    if not pts or bitops < pts[0][0]:
        return None
    best = max(a for c, a in pts if c <= bitops)
    for (c1, a1), (c2, a2) in itertools.combinations(pts, 2):
        if c1 <= bitops <= c2 and c2 > c1:
            best = max(best, a1 + (a2 - a1) * (bitops - c1) / (c2 - c1))
    return best


