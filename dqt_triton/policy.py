"""Width policies on a trained checkpoint, chosen by measurement on calibration data.

A policy says at which widths each input runs. Every one here is built from the checkpoint's
static per-layer allocations (a width for each governed layer; the edge layers stay at
`edge_bits`), so any of them runs on the frozen integer programs of those allocations:

- uniform widths, and their hull: any cost between two uniform widths is reached by sending a
  share of the inputs to each, so the static baseline is the upper concave hull of the
  (BitOPs, accuracy) points of the uniform widths;
- the best static per-layer allocation under a BitOPs budget (HAWQ's question, answered by
  measurement: every allocation when there are few, else a greedy descent from the widest);
- a cascade: every input runs at a cheap allocation; the inputs whose top-1 margin there (the
  difference of the two largest logits) is below a threshold run again at a dearer allocation,
  and both passes count in their BitOPs. With uniform widths it is the confidence-cascade
  baseline; over per-layer allocations it is the *escalation* dynamic mode: the network's own
  margin at a low width ranks which inputs need bits far better than the paper's controller
  does on the same inputs (AUC 0.76-0.98 against 0.32-0.61, recipe trials of 2026-11-23).

Search and thresholds use the calibration data only. The escalation mode is the uniform
cascade unless per-layer stages (the static allocations among them) beat it on the calibration
data by more than `PER_LAYER_MARGIN_SE` standard errors.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

Allocation = tuple  # the governed layers' widths, in `DQTModel.governed` order
EXHAUSTIVE_LIMIT = 512  # allocations searched one by one up to this many; a greedy path beyond
# Per-layer allocations replace the uniform cascade in the escalation mode only when they are
# better on the calibration data by this many standard errors of the paired per-input
# difference: with many more candidates the search fits the calibration split's noise (on
# digits, 287 calibration samples and 20 governed layers, it cost 1-2 pp on the test split).
PER_LAYER_MARGIN_SE = 2.0


@dataclass(frozen=True)
class Cascade:
    """Stages of allocations with margin thresholds: an input runs at `stages[0]`; while its
    top-1 margin at stage i is below `thresholds[i]` it runs again at stage i + 1. One stage
    is a static allocation."""

    stages: tuple
    thresholds: tuple = ()

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a cascade needs at least one stage")
        if len(self.thresholds) != len(self.stages) - 1:
            raise ValueError(f"a cascade of {len(self.stages)} stages needs {len(self.stages) - 1} thresholds, "
                             f"got {len(self.thresholds)}")
        widths = {len(s) for s in self.stages}
        if len(widths) != 1:
            raise ValueError(f"every stage needs one width per governed layer, got lengths {sorted(widths)}")

    def to_dict(self) -> dict:
        return {"stages": [list(s) for s in self.stages], "thresholds": [float(t) for t in self.thresholds]}

    @classmethod
    def from_dict(cls, d: dict) -> "Cascade":
        return cls(tuple(tuple(int(b) for b in s) for s in d["stages"]), tuple(float(t) for t in d["thresholds"]))

    def describe(self) -> str:
        parts = ["/".join(map(str, self.stages[0]))]
        for s, t in zip(self.stages[1:], self.thresholds):
            parts.append(f"margin < {t:.3g} -> {'/'.join(map(str, s))}")
        return ", ".join(parts)


def top1_margin(logits: Tensor) -> Tensor:
    """Largest minus second-largest logit per row (float32, as the logits)."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


def allocation_bits(model, alloc: Allocation) -> dict:
    """`set_bits` argument for an allocation: governed layers at its widths, edges at `edge_bits`."""
    edge = model.edge_bits
    widths = dict(zip(model.governed, alloc))
    return {n: widths[n] if n in widths else (edge if edge is not None else 8) for n in model.layer_names}


def allocation_bitops(model, alloc: Allocation) -> float:
    """BitOPs of one sample at an allocation (weights and activations at the same width)."""
    macs, bits = model.arch.macs, allocation_bits(model, alloc)
    return float(sum(macs[n] * bits[n] * bits[n] for n in model.layer_names))


def uniform(model, bits: int) -> Allocation:
    return (bits,) * len(model.governed)


def reusable_values(steps: Sequence[dict], bits_a: dict, bits_b: dict) -> set:
    """Value indices (0 the input, i + 1 step i's output) that two static programs of one model
    compute identically: the input, and every step whose inputs are reusable and which is not a
    layer at different widths (only a layer step reads widths). Nested codes make this exact:
    a dearer pass resumes from a cheaper pass's codes without any conversion."""
    same = {0}
    for i, step in enumerate(steps):
        if all(j in same for j in step.inputs) and (
                step.kind != "layer" or tuple(bits_a[step.name]) == tuple(bits_b[step.name])):
            same.add(i + 1)
    return same


def escalation_bitops(model, cheap: Allocation, dear: Allocation) -> float:
    """BitOPs a pass at `dear` adds for an input already run at `cheap`: the layers it cannot
    take from the cheap pass (`reusable_values`)."""
    return suffix_bitops(model.steps, model.arch.macs, allocation_bits(model, cheap),
                         allocation_bits(model, dear))


def suffix_bitops(steps: Sequence[dict], macs: dict, cheap_bits: dict, dear_bits: dict) -> float:
    """BitOPs of the layers of a `dear_bits` pass that a `cheap_bits` pass has not computed."""
    same = reusable_values(steps, _pairs(cheap_bits), _pairs(dear_bits))
    return float(sum(macs[s.name] * dear_bits[s.name] ** 2 for i, s in enumerate(steps)
                     if s.kind == "layer" and i + 1 not in same))


def _pairs(bits: dict) -> dict:
    return {n: (b, b) for n, b in bits.items()}


class Calibration:
    """The checkpoint's integer-eval logits at allocations on one labelled set, each computed
    once. `forward_at(alloc, x)` defaults to the model's own eval at that allocation."""

    def __init__(self, model, x: Tensor, y: Tensor, batch_size: int = 512,
                 forward_at: Optional[Callable[[Allocation, Tensor], Tensor]] = None) -> None:
        if len(x) == 0:
            raise ValueError("calibration needs at least one sample")
        self.model, self.x, self.y, self.batch_size = model, x, y, batch_size
        self._forward_at = forward_at or (lambda alloc, xb: eval_at(model, alloc, xb))
        self._logits: dict = {}

    def logits(self, alloc: Allocation) -> Tensor:
        alloc = tuple(alloc)
        if alloc not in self._logits:
            self._logits[alloc] = torch.cat([self._forward_at(alloc, xb) for xb in self.x.split(self.batch_size)])
        return self._logits[alloc]

    def correct(self, alloc: Allocation) -> Tensor:
        return self.logits(alloc).argmax(1) == self.y

    def accuracy(self, alloc: Allocation) -> float:
        return float(self.correct(alloc).float().mean())

    def nll(self, alloc: Allocation) -> float:
        return float(self.nll_per_input(alloc).mean())

    def nll_per_input(self, alloc: Allocation) -> Tensor:
        return F.cross_entropy(self.logits(alloc).double(), self.y, reduction="none")

    def cost(self, alloc: Allocation) -> float:
        return allocation_bitops(self.model, alloc)

    def escalation_cost(self, cheap: Allocation, dear: Allocation) -> float:
        return escalation_bitops(self.model, cheap, dear)


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


def best_cascade(cal: Calibration, allocs: Sequence[Allocation], budget: float) -> Optional[tuple[Cascade, float]]:
    """The two-stage cascade (or single allocation) over `allocs` of highest calibration
    accuracy with mean calibration BitOPs at most `budget`, and that accuracy.

    For a pair (cheap, dear), escalating the k inputs of smallest margin at `cheap` costs
    cost(cheap) + k / N * escalation_bitops(cheap, dear) (the dear pass resumes from the layers
    the two share); each feasible k is scored exactly. The threshold is the
    (k+1)-th smallest margin (+inf escalates every input); k is only taken where it differs
    from the k-th."""
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
        m = top1_margin(cal.logits(lo))
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
            consider(acc, nll, c_lo + k / n * c_hi, Cascade((tuple(lo), tuple(hi)), (threshold,)))
    if best is None:
        return None
    return best[1], best[0][0]


def cascade_correct(cal: Calibration, cascade: Cascade) -> Tensor:
    """Per-input correctness of a cascade on the calibration data (from the cached logits)."""
    logits = cal.logits(cascade.stages[0])
    for alloc, threshold in zip(cascade.stages[1:], cascade.thresholds):
        unsure = top1_margin(logits) < threshold
        logits = torch.where(unsure[:, None], cal.logits(alloc), logits)
    return logits.argmax(1) == cal.y


def better_by(cal: Calibration, richer: Cascade, simpler: Cascade, z: float) -> bool:
    """Whether `richer` beats `simpler` on the calibration data by more than z standard errors
    of the paired per-input difference in correctness."""
    diff = cascade_correct(cal, richer).double() - cascade_correct(cal, simpler).double()
    n = len(diff)
    se = float(diff.std(unbiased=True)) / n ** 0.5 if n > 1 else 0.0
    return float(diff.mean()) > z * se and float(diff.mean()) > 0


def run_cascade(run: Callable, cascade: Cascade, x: Tensor, steps: Sequence[dict], bits: Callable[[Allocation], dict],
                cost: Callable[[Allocation], float],
                escalation_cost: Callable[[Allocation, Allocation], float]) -> tuple[Tensor, Tensor, Tensor]:
    """(logits, BitOPs per input, final stage index per input) of a cascade.

    `run(alloc, x, given)` -> (logits, values) runs the static program of an allocation,
    taking the values in `given` as computed. Stage i runs on the inputs still unsure after
    stage i - 1 and resumes from that stage's values it would compute identically; an input
    keeps the logits of its last stage."""
    logits, values = run(cascade.stages[0], x, None)
    spent = torch.full((len(x),), cost(cascade.stages[0]), dtype=torch.float64)
    stage = torch.zeros(len(x), dtype=torch.long)
    active = torch.arange(len(x))
    current, prev = logits, cascade.stages[0]
    for i, (alloc, threshold) in enumerate(zip(cascade.stages[1:], cascade.thresholds), start=1):
        unsure = (top1_margin(current) < threshold).cpu()
        if not bool(unsure.any()):
            break
        rows = torch.nonzero(unsure).flatten()
        same = reusable_values(steps, _pairs(bits(prev)), _pairs(bits(alloc)))
        given = {j: values[j][rows.to(values[j].device)] for j in same if j > 0}
        active = active[unsure]
        current, values = run(alloc, x[active.to(x.device)], given)
        logits = logits.clone()
        logits[active.to(logits.device)] = current
        spent[active] += escalation_cost(prev, alloc)
        stage[active] = i
        prev = alloc
    return logits, spent, stage


@torch.no_grad()
def evaluate_cascade(model, cascade: Cascade, x: Tensor, y: Tensor, batch_size: int = 512) -> dict:
    """`training.evaluate`'s statistics for a cascade, run on its frozen integer programs:
    accuracy, mean BitOPs, dearest/cheapest decile, accuracy of the cheap and dear halves,
    share of inputs ending at each stage."""
    frozen = FrozenCascade.from_model(model, cascade)
    right, spent, stages = [], [], []
    for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
        logits = frozen(xb)
        right.append(logits.argmax(1).cpu() == yb.cpu())
        spent.append(frozen.last_bitops)
        stages.append(frozen.last_stage)
    return cascade_statistics(torch.cat(right).float(), torch.cat(spent), torch.cat(stages), len(cascade.stages))


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


class FrozenCascade(nn.Module):
    """A cascade on frozen integer programs (one `FrozenDQTModel` per distinct allocation):
    the integer runtime of the escalation mode, with no float weights and no reference to the
    trainable model. A later stage resumes from the values of the earlier one that it would
    compute identically (`reusable_values`). After each call `last_bitops` holds the BitOPs
    per input and `last_stage` the stage each input ended at."""

    def __init__(self, cascade: Cascade, programs: dict, macs: dict) -> None:
        super().__init__()
        self.cascade = cascade
        self.programs = nn.ModuleDict({_key(a): p for a, p in programs.items()})
        self.macs = dict(macs)
        self.last_bitops: Optional[Tensor] = None
        self.last_stage: Optional[Tensor] = None

    @classmethod
    def from_model(cls, model, cascade: Cascade) -> "FrozenCascade":
        programs = {}
        with model.kept_mode():
            for alloc in dict.fromkeys(cascade.stages):
                model.set_bits(allocation_bits(model, alloc))
                programs[alloc] = model.freeze()
        return cls(cascade, programs, model.arch.macs)

    def _bits(self, alloc: Allocation) -> dict:
        return {n: b[0] for n, b in self.programs[_key(alloc)].program.static_bits.items()}

    def _steps(self) -> list:
        return self.programs[_key(self.cascade.stages[0])].program.steps

    def _cost(self, alloc: Allocation) -> float:
        return float(sum(self.macs[n] * b * b for n, b in self._bits(alloc).items()))

    def _escalation_cost(self, cheap: Allocation, dear: Allocation) -> float:
        return suffix_bitops(self._steps(), self.macs, self._bits(cheap), self._bits(dear))

    def forward(self, x: Tensor) -> Tensor:
        logits, spent, stage = run_cascade(lambda a, xb, given: self.programs[_key(a)].run_values(xb, given),
                                           self.cascade, x, self._steps(), self._bits, self._cost,
                                           self._escalation_cost)
        self.last_bitops, self.last_stage = spent, stage
        return logits


def _key(alloc: Allocation) -> str:
    return "w" + "_".join(map(str, alloc))


@dataclass
class PolicyTable:
    """Calibrated policies of a checkpoint at budgets (uniform-b BitOPs): the best static
    allocation, the uniform-width cascade and the escalation mode, with their calibration
    accuracies; saved with the checkpoint (`to_dict`)."""

    budgets: list  # uniform b of each budget
    allocation: list  # Cascade (one stage) per budget, or None
    cascade: list  # uniform-width Cascade per budget, or None
    escalation: list  # per-layer Cascade per budget, or None
    controller_codes: list  # the paper's controller: budget code per budget (None without a controller)
    calibration_size: int = 0
    deployment_budget: Optional[float] = None  # the budget the model is deployed at (`dqt train --budget`)

    def to_dict(self) -> dict:
        enc = lambda cs: [c.to_dict() if c is not None else None for c in cs]  # noqa: E731
        return {"budgets": list(self.budgets), "allocation": enc(self.allocation), "cascade": enc(self.cascade),
                "escalation": enc(self.escalation), "controller_codes": list(self.controller_codes),
                "calibration_size": self.calibration_size, "deployment_budget": self.deployment_budget}

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyTable":
        dec = lambda cs: [Cascade.from_dict(c) if c is not None else None for c in cs]  # noqa: E731
        deployment = d.get("deployment_budget")
        return cls([float(b) for b in d["budgets"]], dec(d["allocation"]), dec(d["cascade"]), dec(d["escalation"]),
                   list(d["controller_codes"]), int(d.get("calibration_size", 0)),
                   None if deployment is None else float(deployment))

    def at(self, budget_bits: float, kind: str = "escalation") -> Optional[Cascade]:
        if budget_bits not in self.budgets:
            raise ValueError(f"no {kind} policy calibrated for budget {budget_bits}; calibrated: {self.budgets}")
        return getattr(self, kind)[self.budgets.index(budget_bits)]


def calibrate_policies(model, x: Tensor, y: Tensor, budgets_bits: Sequence[float],
                       deployment_budget: Optional[float] = None) -> PolicyTable:
    """Search the static allocation, the uniform cascade and the escalation mode for each budget
    (uniform-b BitOPs; `deployment_budget` too) on calibration data (x, y), and calibrate the
    paper's controller's budget code to each (the model's own budget code is restored)."""
    code = model.budget_code
    cal = Calibration(model, x, y)
    allocs = candidate_allocations(model, cal)
    uniforms = [uniform(model, b) for b in sorted(model.candidate_bits)]
    # the escalation mode's stages: the calibration frontier and the uniform widths, so that
    # on the calibration data it is never below the uniform cascade either
    front = sorted(set(frontier(cal, allocs)) | set(uniforms), key=cal.cost)
    budgets = sorted({float(b) for b in budgets_bits} | ({float(deployment_budget)} if deployment_budget else set()))
    deployed = None if deployment_budget is None else float(deployment_budget)
    table = PolicyTable(budgets, [], [], [], [], len(y), deployed)
    for b in budgets:
        budget = model.uniform_bitops(b) * (1 + 1e-9)
        table.controller_codes.append(model.calibrate_budget(x, budget) if model.controller is not None else None)
        a = best_allocation(cal, front, budget)
        static = Cascade((a,)) if a is not None else None
        table.allocation.append(static)
        c = best_cascade(cal, uniforms, budget)
        cascade = c[0] if c else None
        table.cascade.append(cascade)
        e = best_cascade(cal, front, budget)
        # escalation: the uniform cascade unless per-layer stages (static allocations among them)
        # beat it clearly on the calibration data
        chosen = cascade
        if e is not None and (chosen is None or better_by(cal, e[0], chosen, PER_LAYER_MARGIN_SE)):
            chosen = e[0]
        table.escalation.append(chosen)
        log.info("budget %.2f-bit: allocation %s; cascade %s; escalation %s", b, a,
                 cascade.describe() if cascade else None, chosen.describe() if chosen else None)
    model.budget_code = code
    return table


@torch.no_grad()
def compare_policies(model, table: PolicyTable, x: Tensor, y: Tensor, static_rows: Sequence[dict]) -> list:
    """Every calibrated policy of `table` evaluated on (x, y), per budget, beside the hull of the
    uniform widths' (BitOPs, accuracy) on the same data (`static_rows`: `training.evaluate`
    rows of the uniform widths). Each policy entry: accuracy, bitops, spread, ...; the hull is
    read at the escalation mode's measured BitOPs (and at the budget)."""
    from .training import evaluate  # the controller's statistics, as the results table has them

    points = [(r["bitops"], r["accuracy"]) for r in static_rows]
    code, dynamic = model.budget_code, model.dynamic
    rows = []
    for i, b in enumerate(table.budgets):
        row: dict = {"budget_bits": b, "budget_bitops": model.uniform_bitops(b)}
        for kind in ("allocation", "cascade", "escalation"):
            c = getattr(table, kind)[i]
            row[kind] = None if c is None else {"policy": c.to_dict(), **evaluate_cascade(model, c, x, y)}
        if table.controller_codes[i] is not None:
            model.set_budget(int(table.controller_codes[i]))
            model.set_dynamic(True)
            row["controller"] = {"budget_code": int(table.controller_codes[i]), **evaluate(model, x, y)}
        else:
            row["controller"] = None
        row["hull_at_budget"] = hull_accuracy(points, row["budget_bitops"])
        esc = row["escalation"]
        row["hull_at_escalation"] = hull_accuracy(points, esc["bitops"]) if esc else None
        rows.append(row)
    model.set_budget(code)
    model.set_dynamic(dynamic)
    return rows


def stage_histogram(model, cascade: Cascade, stage_shares: Sequence[float]) -> dict:
    """Share of (input, governed layer) pairs at each candidate width when a share of the
    inputs ends at each stage (`cascade_statistics`' stage_shares)."""
    hist = {int(b): 0.0 for b in model.candidate_bits}
    for alloc, share in zip(cascade.stages, stage_shares):
        for b in alloc:
            hist[int(b)] += share / len(alloc)
    return hist


def escalation_at(model, budget_bits: float) -> FrozenCascade:
    """The escalation mode calibrated at `budget_bits` (a budget `dqt train` reported), frozen."""
    if model.policies is None:
        raise ValueError("this model has no calibrated width policies: run policy.calibrate_policies (dqt train "
                         "does) and set model.policies")
    found = PolicyTable.from_dict(model.policies).at(float(budget_bits))
    if found is None:
        raise ValueError(f"no policy fits the BitOPs of uniform {budget_bits} bits")
    return FrozenCascade.from_model(model, found)
