"""Which width policy to deploy at a budget, chosen without fitting the calibration split's noise.

A *family* fits a policy (a `policy.Cascade`) to labelled data within a BitOPs budget:

- ``static``: the widest uniform width that fits the budget. It spends the budget and fits
  nothing: the choice a user makes without dynamic widths, and the default;
- ``allocation``: the best static per-layer allocation on the data;
- ``cascade``: the best two-stage cascade of uniform widths;
- ``escalation``: the best two-stage cascade of per-layer allocations;
- ``cascade3``: the best three-stage cascade of uniform widths (for example 2 -> 3 -> 8);
- ``gated``: the best two-stage cascade of uniform widths that escalates by a logistic gate on
  the cheap pass's logits (margin, largest probability, entropy) instead of the margin alone.

Picking the best of thousands of candidates on a few hundred samples fits their noise, and a
paired-SE rule on the same samples does not know how many were tried. So each family is scored
by K-fold cross-fitting: fitted on K-1 folds of the calibration split, run on the held-out fold,
so every calibration input is scored by a policy that never saw it. The out-of-fold data then
decides (`choose`), and the chosen family is refitted on the whole split: where the static width
spends the budget, a dynamic family has to beat it clearly; where the budget falls between two
uniform widths, so that the narrower one leaves budget unspent, the families the data cannot
tell from the best one are tied, and the most accurate of those that spend the budget wins.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .cascade import Allocation, Cascade, gate_features, stage_score, top1_margin
from .search import Calibration, best_allocation, best_cascade, frontier

FOLDS = 5
# Out-of-fold differences within this many paired standard errors are taken as ties (the scores
# are honest, but several families are compared on them).
TIE_SE = 2.0
# A choice "spends the budget" at this share of it: when the data cannot tell two choices apart,
# the dearer one that fits is the safer default (more bits rarely hurt in expectation).
SPEND_SHARE = 0.9
FOLD_SEED = 0
K1_GRID = 24  # first-stage escalation counts tried per stage triple by `best_cascade3`


@dataclass(frozen=True)
class Candidates:
    """What the families choose from: every allocation searched (`policy.candidate_allocations`)
    and the uniform widths, cheapest first."""

    allocations: tuple
    uniforms: tuple


def fit_static(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    fits = [u for u in cands.uniforms if cal.cost(u) <= budget]
    return Cascade((max(fits, key=cal.cost),)) if fits else None


def fit_allocation(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    a = best_allocation(cal, _front(cal, cands), budget)
    return None if a is None else Cascade((a,))


def fit_cascade(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    found = best_cascade(cal, cands.uniforms, budget)
    return None if found is None else found[0]


def fit_escalation(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    found = best_cascade(cal, _front(cal, cands), budget)
    return None if found is None else found[0]


def fit_cascade3(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    return best_cascade3(cal, cands.uniforms, budget)


def fit_gated(cal: Calibration, cands: Candidates, budget: float) -> Optional[Cascade]:
    gates = {u: fit_gate(cal, u) for u in cands.uniforms}
    found = best_cascade(cal, cands.uniforms, budget, gates=gates.get)
    return None if found is None else found[0]


def fit_gate(cal: Calibration, alloc: Allocation) -> Optional[tuple]:
    """A logistic gate on `cal`'s logits at `alloc`: the log-odds that its answer is wrong from
    `cascade.GATE_FEATURES` (`logistic_fit`), as weights and a bias (`cascade.stage_score`);
    None when every answer is right or every one wrong (nothing to fit: the margin then)."""
    wrong = ~cal.correct(alloc).cpu()
    if bool(wrong.all()) or not bool(wrong.any()):
        return None
    weights, bias = logistic_fit(gate_features(cal.logits(alloc)), wrong)
    return (*(float(v) for v in weights), bias)


def logistic_fit(features: Tensor, target: Tensor, ridge: float = 1e-2, steps: int = 30) -> tuple[Tensor, float]:
    """Logistic regression of a boolean `target` on float64 `features` [N, F]: Newton's method on
    standardized features with a small ridge (deterministic), returned as weights on the raw
    features and a bias."""
    y = target.double()
    mu, sd = features.mean(0), features.std(0).clamp_min(1e-12)
    x = torch.cat([(features - mu) / sd, torch.ones(len(features), 1, dtype=torch.float64)], 1)
    w = torch.zeros(x.shape[1], dtype=torch.float64)
    eye = torch.eye(x.shape[1], dtype=torch.float64) * ridge
    for _ in range(steps):
        p = torch.sigmoid(x @ w)
        w = w - torch.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]) + eye, x.T @ (p - y) + eye @ w)
    raw = w[:-1] / sd
    return raw, float(w[-1] - (raw * mu).sum())


def _front(cal: Calibration, cands: Candidates) -> list:
    """The allocations on `cal`'s accuracy frontier and the uniform widths, cheapest first."""
    return sorted(set(frontier(cal, cands.allocations)) | set(cands.uniforms), key=cal.cost)


FAMILIES: dict[str, Callable[[Calibration, Candidates, float], Optional[Cascade]]] = {
    "static": fit_static, "allocation": fit_allocation, "cascade": fit_cascade, "escalation": fit_escalation,
    "cascade3": fit_cascade3, "gated": fit_gated,
}


def best_cascade3(cal: Calibration, allocs: Sequence[Allocation], budget: float) -> Optional[Cascade]:
    """The three-stage cascade over `allocs` (lo -> mid -> hi, dearer at each stage) of highest
    accuracy on `cal` (then lowest cross-entropy, then the dearer) with mean BitOPs at most
    `budget`. The first stage's escalation count k1 runs over a grid of `K1_GRID` values; for
    each, the second stage's count is scored exactly as in `policy.best_cascade`."""
    n = len(cal.y)
    ranked = sorted(allocs, key=cal.cost)
    best: Optional[tuple] = None
    for lo, mid, hi in itertools.combinations(ranked, 3):
        c_lo = cal.cost(lo)
        if not c_lo < cal.cost(mid) < cal.cost(hi) or c_lo >= budget:
            continue
        e1, e2 = cal.escalation_cost(lo, mid), cal.escalation_cost(mid, hi)
        k1_max = min(n, int((budget - c_lo) / e1 * n + 1e-9))
        if k1_max < 1:
            continue
        m1 = top1_margin(cal.logits(lo))
        order1 = torch.argsort(m1, stable=True)
        m1_sorted = m1[order1]
        right = {a: cal.correct(a).double() for a in (lo, mid, hi)}
        nll = {a: cal.nll_per_input(a) for a in (lo, mid, hi)}
        m2 = top1_margin(cal.logits(mid))
        for k1 in sorted({max(1, round(k1_max * (i + 1) / K1_GRID)) for i in range(K1_GRID)}):
            if k1 < n and not bool(m1_sorted[k1] > m1_sorted[k1 - 1]):
                continue  # k1 is a threshold only where the k1-th and (k1+1)-th margins differ
            left = budget - c_lo - k1 / n * e1
            k2_max = min(k1, int(left / e2 * n + 1e-9))
            if k2_max < 1:
                continue  # k2 = 0 is a two-stage cascade
            first = order1[:k1]
            m2_first = m2[first]
            order2 = torch.argsort(m2_first, stable=True)
            m2_sorted = m2_first[order2]
            escalated = first[order2]
            base_right = float(right[lo].sum() - right[lo][first].sum() + right[mid][first].sum())
            base_nll = float(nll[lo].sum() - nll[lo][first].sum() + nll[mid][first].sum())
            gain = torch.cumsum(right[hi][escalated] - right[mid][escalated], 0)[:k2_max]
            nll_gain = torch.cumsum(nll[hi][escalated] - nll[mid][escalated], 0)[:k2_max]
            separable = torch.cat([m2_sorted[1:] > m2_sorted[:-1], torch.ones(1, dtype=torch.bool)])[:k2_max]
            score = gain - nll_gain / (4.0 * (float(nll_gain.abs().max()) + 1.0))
            score = torch.where(separable, score, torch.full_like(score, -float("inf")))
            if not bool(torch.isfinite(score).any()):
                continue
            k2 = int(torch.argmax(score)) + 1
            acc = (base_right + float(gain[k2 - 1])) / n
            loss = (base_nll + float(nll_gain[k2 - 1])) / n
            cost = c_lo + k1 / n * e1 + k2 / n * e2
            t1 = float("inf") if k1 >= n else float(m1_sorted[k1])
            t2 = float("inf") if k2 >= k1 else float(m2_sorted[k2])
            key = (acc, -loss, cost)
            if best is None or key > best[0]:
                best = (key, Cascade((tuple(lo), tuple(mid), tuple(hi)), (t1, t2)))
    return None if best is None else best[1]


def outcome(cal: Calibration, cascade: Cascade) -> tuple[Tensor, Tensor, Tensor]:
    """Per input of `cal`: whether `cascade` answers right, its BitOPs (every pass counted, a
    later pass paying only the layers it recomputes) and the stage it ends at, from the cached
    logits: what `FrozenCascade` computes (a later pass resumes to the same logits)."""
    prev = cascade.stages[0]
    logits, y = cal.logits(prev).cpu(), cal.y.cpu()  # on the host, as the gate's score and the costs
    cost = torch.full((len(cal.y),), cal.cost(prev), dtype=torch.float64)
    stage = torch.zeros(len(cal.y), dtype=torch.long)
    active = torch.ones(len(cal.y), dtype=torch.bool)
    for i, (alloc, threshold) in enumerate(zip(cascade.stages[1:], cascade.thresholds)):
        active = active & (stage_score(logits, cascade.gate(i)) < threshold)
        logits = torch.where(active[:, None], cal.logits(alloc).cpu(), logits)
        cost = cost + active.double() * cal.escalation_cost(prev, alloc)
        stage = torch.where(active, i + 1, stage)
        prev = alloc
    return logits.argmax(1) == y, cost, stage


def folds(n: int, k: int = FOLDS, seed: int = FOLD_SEED) -> list[Tensor]:
    """`k` disjoint random folds of range(n) (sizes differ by at most one)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i::k].sort().values for i in range(k)]


def crossfit(cal: Calibration, cands: Candidates, budget: float, k: int = FOLDS,
             families: Sequence[str] = tuple(FAMILIES)) -> dict:
    """Out-of-fold correctness and BitOPs per calibration input of each family: fitted on k-1
    folds, run on the held-out one. A family that finds no policy within the budget on some
    fold is left out (None)."""
    n = len(cal.y)
    result = {f: (torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.float64)) for f in families}
    for held in folds(n, k):
        keep = torch.ones(n, dtype=torch.bool)
        keep[held] = False
        fit_on, score_on = cal.subset(torch.nonzero(keep).flatten()), cal.subset(held)
        for f in families:
            if result[f] is None:
                continue
            fitted = FAMILIES[f](fit_on, cands, budget)
            if fitted is None:
                result[f] = None
                continue
            right, cost, _ = outcome(score_on, fitted)
            result[f][0][held], result[f][1][held] = right, cost
    return result


def paired_gain(right: Tensor, base: Tensor) -> tuple[float, float]:
    """Mean and standard error of the per-input difference in correctness (right - base)."""
    diff = right.double() - base.double()
    se = float(diff.std(unbiased=True)) / math.sqrt(len(diff)) if len(diff) > 1 else float("inf")
    return float(diff.mean()), se


def choose(out_of_fold: dict, budget: float, z: float = TIE_SE, spend_share: float = SPEND_SHARE) -> tuple[str, dict]:
    """The family to deploy at `budget` BitOPs from `crossfit`'s output, and each family's
    out-of-fold statistics (accuracy, BitOPs, gain over ``static`` with its paired SE).

    When the static width spends the budget (at least `spend_share` of it), it is deployed
    unless a family beats it out of fold by more than `z` paired standard errors (then the most
    accurate of those). When it leaves budget unspent (a budget between two uniform widths): the
    families the out-of-fold data cannot tell from the most accurate one (within `z` paired SE
    of it), of those the ones spending at least `spend_share` of the dearest one's BitOPs, and
    of those the most accurate. Ties go to the dearer family."""
    found = {f: v for f, v in out_of_fold.items() if v is not None}
    stats: dict = {}
    for f, (right, cost) in found.items():
        stats[f] = {"accuracy": float(right.double().mean()), "bitops": float(cost.mean())}
        if "static" in found:
            stats[f]["gain"], stats[f]["se"] = paired_gain(right, found["static"][0])
    if not stats:
        return "static", stats

    def most_accurate(families: list) -> str:
        return max(families, key=lambda f: (stats[f]["accuracy"], stats[f]["bitops"]))

    if "static" in stats and stats["static"]["bitops"] >= spend_share * budget:
        pick = [f for f in stats if f != "static" and stats[f]["gain"] > 0 and stats[f]["gain"] > z * stats[f]["se"]]
        return (most_accurate(pick) if pick else "static"), stats
    best = most_accurate(list(stats))

    def tied_with_best(f: str) -> bool:
        behind, se = paired_gain(found[best][0], found[f][0])
        return f == best or behind <= z * se

    tied = [f for f in stats if tied_with_best(f)]
    dearest = max(stats[f]["bitops"] for f in tied)
    return most_accurate([f for f in tied if stats[f]["bitops"] >= spend_share * dearest]), stats


__all__ = ["Candidates", "FAMILIES", "FOLDS", "SPEND_SHARE", "TIE_SE", "best_cascade3", "choose", "crossfit",
           "fit_gate", "folds", "logistic_fit", "outcome", "paired_gain"]
