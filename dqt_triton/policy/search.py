"""Searching a checkpoint's static allocations and two-stage cascades on labelled data.

`Calibration` holds the checkpoint's integer-eval logits at each allocation on one labelled set,
each computed once. The searches pick by accuracy on that set: the allocation frontier (HAWQ's
question answered by measurement: every allocation when there are few, else a greedy descent
from the widest), the best allocation under a budget, the best two-stage cascade under a budget.
Which of them to deploy is `policy.select`'s question.
"""

from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cascade import (Allocation, Cascade, allocation_bitops, allocation_bits, escalation_bitops, stage_score,
                      uniform)

EXHAUSTIVE_LIMIT = 512  # allocations searched one by one up to this many; a greedy path beyond


class Calibration:
    """The checkpoint's integer-eval logits at allocations on one labelled set, each computed
    once, with what the searches read of them (correctness, cross-entropy per input) and the
    allocations' costs, also computed once. `forward_at(alloc, x)` defaults to the model's own
    eval at that allocation."""

    def __init__(self, model, x: Tensor, y: Tensor, batch_size: int = 512,
                 forward_at: Optional[Callable[[Allocation, Tensor], Tensor]] = None) -> None:
        if len(x) == 0:
            raise ValueError("calibration needs at least one sample")
        self.model, self.x, self.y, self.batch_size = model, x, y, batch_size
        self._forward_at = forward_at or (lambda alloc, xb: eval_at(model, alloc, xb))
        self._logits: dict = {}
        self._correct: dict = {}
        self._nll: dict = {}
        self._costs: dict = {}  # allocation or (cheap, dear) -> BitOPs, shared with subsets
        self._parent: Optional[tuple["Calibration", Tensor]] = None

    def subset(self, rows: Tensor) -> "Calibration":
        """The same checkpoint on `rows` of this set, its logits read from this set's (each
        allocation still runs once, on the whole set): the folds of `policy.select.crossfit`."""
        sub = Calibration(self.model, self.x[rows], self.y[rows], self.batch_size, self._forward_at)
        sub._parent, sub._costs = (self, rows), self._costs
        return sub

    def logits(self, alloc: Allocation) -> Tensor:
        alloc = tuple(alloc)
        if alloc not in self._logits:
            if self._parent is not None:
                parent, rows = self._parent
                self._logits[alloc] = parent.logits(alloc)[rows]
            else:
                self._logits[alloc] = torch.cat([self._forward_at(alloc, xb) for xb in self.x.split(self.batch_size)])
        return self._logits[alloc]

    def correct(self, alloc: Allocation) -> Tensor:
        alloc = tuple(alloc)
        if alloc not in self._correct:
            self._correct[alloc] = self.logits(alloc).argmax(1) == self.y
        return self._correct[alloc]

    def accuracy(self, alloc: Allocation) -> float:
        return float(self.correct(alloc).float().mean())

    def nll(self, alloc: Allocation) -> float:
        return float(self.nll_per_input(alloc).mean())

    def nll_per_input(self, alloc: Allocation) -> Tensor:
        alloc = tuple(alloc)
        if alloc not in self._nll:
            self._nll[alloc] = F.cross_entropy(self.logits(alloc).double(), self.y, reduction="none")
        return self._nll[alloc]

    def cost(self, alloc: Allocation) -> float:
        alloc = tuple(alloc)
        if alloc not in self._costs:
            self._costs[alloc] = allocation_bitops(self.model, alloc)
        return self._costs[alloc]

    def escalation_cost(self, cheap: Allocation, dear: Allocation) -> float:
        key = (tuple(cheap), tuple(dear))
        if key not in self._costs:
            self._costs[key] = escalation_bitops(self.model, cheap, dear)
        return self._costs[key]


@torch.no_grad()
def eval_at(model, alloc: Allocation, x: Tensor) -> Tensor:
    """Integer-eval logits of `model` at a static allocation; the model's mode is restored."""
    with model.kept_mode():
        model.eval()
        model.set_bits(allocation_bits(model, alloc))
        return model(x)


def candidate_allocations(model, cal: Calibration, limit: int = EXHAUSTIVE_LIMIT) -> list:
    """Every allocation of the governed layers over the candidate widths when there are at most
    `limit`; else the uniform widths plus a HAWQ-style greedy path: each layer's sensitivity at
    each width (calibration cross-entropy with that layer alone lowered, the others at the
    widest) is measured once, then layers are lowered one candidate width at a time, always
    the step of least added sensitivity per BitOP saved, from all-widest to all-narrowest."""
    widths = sorted(model.candidate_bits)
    layers = len(model.governed)
    if len(widths) ** layers <= limit:
        return list(itertools.product(widths, repeat=layers))
    return sorted({uniform(model, b) for b in widths} | set(greedy_path(model, cal)))


def greedy_path(model, cal: Calibration) -> list:
    """The greedy descent of `candidate_allocations`, from all-widest to all-narrowest."""
    widths = sorted(model.candidate_bits)
    layers = len(model.governed)
    top = uniform(model, widths[-1])
    base = cal.nll(top)
    sens = {(i, b): cal.nll(top[:i] + (b,) + top[i + 1:]) - base for i in range(layers) for b in widths}
    current = list(top)
    path = [top]
    while True:
        best, best_rate = None, None
        for i, b in enumerate(current):
            j = widths.index(b)
            if j == 0:
                continue
            lower = tuple(current[:i] + [widths[j - 1]] + current[i + 1:])
            saved = cal.cost(tuple(current)) - cal.cost(lower)
            rate = (sens[i, widths[j - 1]] - sens[i, b]) / max(saved, 1e-9)
            if best_rate is None or rate < best_rate:
                best, best_rate = lower, rate
        if best is None:
            break
        current = list(best)
        path.append(best)
    return path


def frontier(cal: Calibration, allocs: Sequence[Allocation]) -> list:
    """Allocations no other one beats on calibration accuracy at lower or equal cost, cheapest first."""
    ranked = sorted(allocs, key=lambda a: (cal.cost(a), -cal.accuracy(a), cal.nll(a)))
    out, best = [], -1.0
    for a in ranked:
        acc = cal.accuracy(a)
        if acc > best:
            out.append(a)
            best = acc
    return out


def best_allocation(cal: Calibration, allocs: Sequence[Allocation], budget: float) -> Optional[Allocation]:
    """The allocation of highest calibration accuracy (then lowest cross-entropy) costing at
    most `budget` BitOPs per sample; None if none is that cheap."""
    fits = [a for a in allocs if cal.cost(a) <= budget]
    if not fits:
        return None
    return max(fits, key=lambda a: (cal.accuracy(a), -cal.nll(a), -cal.cost(a)))


def best_cascade(cal: Calibration, allocs: Sequence[Allocation], budget: float,
                 gates: Optional[Callable[[Allocation], Optional[tuple]]] = None) -> Optional[tuple[Cascade, float]]:
    """The two-stage cascade (or single allocation) over `allocs` of highest calibration
    accuracy with mean calibration BitOPs at most `budget`, and that accuracy.

    For a pair (cheap, dear), escalating the k inputs of smallest margin at `cheap` costs
    cost(cheap) + k / N * escalation_bitops(cheap, dear) (the dear pass resumes from the layers
    the two share); each feasible k is scored exactly. The threshold is the
    (k+1)-th smallest margin (+inf escalates every input); k is only taken where it differs
    from the k-th. With `gates`, the gate of each cheap allocation (None: the margin) scores
    the inputs instead (`cascade.stage_score`)."""
    n = len(cal.y)
    best: Optional[tuple[tuple, Cascade]] = None

    def consider(acc: float, nll: float, cost: float, cascade: Cascade) -> None:
        nonlocal best
        key = (acc, -nll, -cost)  # accuracy first; among equals the lower cross-entropy, then the cheaper
        if best is None or key > best[0]:
            best = (key, cascade)

    for a in allocs:
        if cal.cost(a) <= budget:
            consider(cal.accuracy(a), cal.nll(a), cal.cost(a), Cascade((tuple(a),)))
    for lo in allocs:
        c_lo = cal.cost(lo)
        if c_lo >= budget:
            continue
        gate = gates(lo) if gates is not None else None
        m = stage_score(cal.logits(lo), gate).to(cal.y.device)  # a gate scores on the host
        order = torch.argsort(m, stable=True)
        m_sorted = m[order]
        right_lo, nll_lo = cal.correct(lo)[order].double(), cal.nll_per_input(lo)[order]
        # k escalations are a threshold only where the k-th and (k+1)-th margins differ
        separable = torch.cat([m_sorted[1:] > m_sorted[:-1], torch.ones(1, dtype=torch.bool)])
        for hi in allocs:
            if cal.cost(hi) <= c_lo:
                continue
            c_hi = cal.escalation_cost(lo, hi)
            k_max = min(n, int((budget - c_lo) / c_hi * n + 1e-9))
            if k_max < 1:
                continue
            # when the first k (smallest margins) escalate: hi on them, lo on the rest
            gain = torch.cumsum(cal.correct(hi)[order].double() - right_lo, 0)[:k_max]
            nll_gain = torch.cumsum(cal.nll_per_input(hi)[order] - nll_lo, 0)[:k_max]
            # lexicographic (accuracy, -cross-entropy): count gains are integers, the scaled
            # cross-entropy term stays below one count
            score = gain - nll_gain / (4.0 * (float(nll_gain.abs().max()) + 1.0))
            score = torch.where(separable[:k_max], score, torch.full_like(score, -float("inf")))
            if not bool(torch.isfinite(score).any()):
                continue
            k = int(torch.argmax(score)) + 1
            acc = (float(right_lo.sum()) + float(gain[k - 1])) / n
            nll = (float(nll_lo.sum()) + float(nll_gain[k - 1])) / n
            # the (k+1)-th smallest margin: a float32 value, so `margin < threshold` is exact
            threshold = float("inf") if k >= n else float(m_sorted[k])
            consider(acc, nll, c_lo + k / n * c_hi,
                     Cascade((tuple(lo), tuple(hi)), (threshold,), None if gate is None else (gate,)))
    if best is None:
        return None
    return best[1], best[0][0]
