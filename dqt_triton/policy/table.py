"""The calibrated policies of a checkpoint (`PolicyTable`, saved with it): fitted and chosen on
the calibration split (`calibrate_policies`), compared on a test split against the best static
choice the budget affords (`compare_policies`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from . import select
from .cascade import Cascade, FrozenCascade, uniform
from .metrics import cascade_run, cascade_statistics, hull_accuracy
from .search import Calibration, candidate_allocations

log = logging.getLogger(__name__)

FITTED = ("allocation", "cascade", "escalation", "cascade3", "gated")  # families kept besides `deployed`


@dataclass
class PolicyTable:
    """Calibrated policies of a checkpoint at budgets (uniform-b BitOPs), saved with it
    (`to_dict`): each family of `policy.select` fitted on the whole calibration split, the
    deployed policy (the family `select.choose` picked out of fold; a one-stage cascade when
    static) with its family name and every family's out-of-fold statistics, and the paper's
    controller's budget code."""

    budgets: list  # uniform b of each budget
    allocation: list  # per budget: best static per-layer allocation (one-stage Cascade), or None
    cascade: list  # two-stage uniform-width Cascade, or None
    escalation: list  # two-stage per-layer Cascade, or None
    controller_codes: list  # the paper's controller: budget code per budget (None without a controller)
    calibration_size: int = 0
    deployment_budget: Optional[float] = None  # the budget the model is deployed at (`dqt train --budget`)
    cascade3: list = field(default_factory=list)  # three-stage uniform-width Cascade, or None
    gated: list = field(default_factory=list)  # two-stage uniform-width Cascade with a logistic gate, or None
    deployed: list = field(default_factory=list)  # the Cascade to deploy, or None when nothing fits
    deployed_family: list = field(default_factory=list)  # its family ("static", "cascade", ...)
    out_of_fold: list = field(default_factory=list)  # per budget: family -> `select.choose` statistics

    def to_dict(self) -> dict:
        enc = lambda cs: [c.to_dict() if c is not None else None for c in cs]  # noqa: E731
        return {"budgets": list(self.budgets), "allocation": enc(self.allocation), "cascade": enc(self.cascade),
                "escalation": enc(self.escalation), "cascade3": enc(self.cascade3), "gated": enc(self.gated),
                "deployed": enc(self.deployed), "deployed_family": list(self.deployed_family),
                "out_of_fold": list(self.out_of_fold),
                "controller_codes": list(self.controller_codes), "calibration_size": self.calibration_size,
                "deployment_budget": self.deployment_budget}

    @classmethod
    def from_dict(cls, d: dict) -> "PolicyTable":
        """A saved table; one saved before cross-fitting deployed its escalation policy."""
        dec = lambda cs: [Cascade.from_dict(c) if c is not None else None for c in cs]  # noqa: E731
        deployment = d.get("deployment_budget")
        none = [None] * len(d["budgets"])
        return cls([float(b) for b in d["budgets"]], dec(d["allocation"]), dec(d["cascade"]), dec(d["escalation"]),
                   list(d["controller_codes"]), int(d.get("calibration_size", 0)),
                   None if deployment is None else float(deployment), dec(d.get("cascade3", none)),
                   dec(d.get("gated", none)), dec(d.get("deployed", d["escalation"])),
                   list(d.get("deployed_family", ["escalation"] * len(none))), list(d.get("out_of_fold", none)))

    def at(self, budget_bits: float, kind: str = "deployed") -> Optional[Cascade]:
        if budget_bits not in self.budgets:
            raise ValueError(f"no {kind} policy calibrated for budget {budget_bits}; calibrated: {self.budgets}")
        return getattr(self, kind)[self.budgets.index(budget_bits)]


def calibrate_policies(model, x: Tensor, y: Tensor, budgets_bits: Sequence[float],
                       deployment_budget: Optional[float] = None, folds: int = select.FOLDS) -> PolicyTable:
    """For each budget (uniform-b BitOPs; `deployment_budget` too) on calibration data (x, y):
    every family of `policy.select` fitted on all of it, the family to deploy chosen by
    `folds`-fold cross-fitting (`select.crossfit`, `select.choose`), and the paper's
    controller's budget code (the model's own budget code is restored)."""
    code = model.budget_code
    cal = Calibration(model, x, y)
    # the allocations searched: fitted on the whole split; which to use is fitted per fold
    cands = select.Candidates(tuple(candidate_allocations(model, cal)),
                              tuple(uniform(model, b) for b in sorted(model.candidate_bits)))
    budgets = sorted({float(b) for b in budgets_bits} | ({float(deployment_budget)} if deployment_budget else set()))
    deployed = None if deployment_budget is None else float(deployment_budget)
    table = PolicyTable(budgets, [], [], [], [], len(y), deployed)
    for b in budgets:
        budget = model.uniform_bitops(b) * (1 + 1e-9)
        table.controller_codes.append(model.calibrate_budget(x, budget) if model.controller is not None else None)
        fitted = {f: fit(cal, cands, budget) for f, fit in select.FAMILIES.items()}
        for f in FITTED:
            getattr(table, f).append(fitted[f])
        enough = len(y) >= 2 * folds
        family, stats = (select.choose(select.crossfit(cal, cands, budget, folds), budget) if enough
                         else ("static", {}))  # too few inputs to score anything out of fold
        table.deployed.append(fitted[family])
        table.deployed_family.append(family)
        table.out_of_fold.append(stats)
        log.info("budget %.2f-bit: deploy %s (%s); out of fold: %s", b, family,
                 fitted[family].describe() if fitted[family] else None,
                 ", ".join(f"{f} {r['accuracy']:.4f}" for f, r in stats.items()))
    model.budget_code = code
    return table


def best_static(budget_bitops: float, static_rows: Sequence[dict], allocation: Optional[dict]) -> Optional[dict]:
    """The best static choice costing at most `budget_bitops` on the rows' data: the uniform
    widths (`static_rows`: `training.evaluate` rows, with their "mode") and the calibrated
    per-layer allocation (an entry of `compare_policies`); None when none fits."""
    fits = [{"mode": r["mode"], "accuracy": r["accuracy"], "bitops": r["bitops"]}
            for r in static_rows if r["bitops"] <= budget_bitops * (1 + 1e-9)]
    if allocation is not None and allocation["bitops"] <= budget_bitops * (1 + 1e-9):
        fits.append({"mode": "allocation", "accuracy": allocation["accuracy"], "bitops": allocation["bitops"]})
    return max(fits, key=lambda r: (r["accuracy"], r["bitops"])) if fits else None


@torch.no_grad()
def compare_policies(model, table: PolicyTable, x: Tensor, y: Tensor, static_rows: Sequence[dict],
                     controller_stats=None) -> list:
    """Every calibrated policy of `table` evaluated on (x, y), per budget, against the best
    static choice that fits the budget on the same data (`best_static`: the uniform widths of
    `static_rows` and the calibrated allocation): the deployed policy's gain over it with the
    paired standard error, and the hull of the uniform widths at the deployed policy's own BitOPs
    (a weaker comparison: it forgives unspent budget). `controller_stats(model, x, y)` gives the
    paper's controller's row at each calibrated budget code (`training.evaluate`)."""
    points = [(r["bitops"], r["accuracy"]) for r in static_rows]
    test = Calibration(model, x, y)  # each allocation's logits on (x, y), computed once for every family
    code, dynamic = model.budget_code, model.dynamic
    rows = []
    for i, b in enumerate(table.budgets):
        row: dict = {"budget_bits": b, "budget_bitops": model.uniform_bitops(b)}
        right = {}
        for kind in (*FITTED, "deployed"):
            c = getattr(table, kind)[i]
            if c is None:
                row[kind] = None
                continue
            # the deployed policy runs on its frozen programs (what deploys); the other families on the
            # cached logits, which give the same integers (tests/test_policy.py holds the two equal)
            r, spent, stages = cascade_run(model, c, x, y) if kind == "deployed" else select.outcome(test, c)
            right[kind] = r
            row[kind] = {"policy": c.to_dict(), **cascade_statistics(r.float(), spent, stages, len(c.stages))}
        row["deployed_family"] = table.deployed_family[i]
        row["out_of_fold"] = table.out_of_fold[i]
        if table.controller_codes[i] is not None and controller_stats is not None:
            model.set_budget(int(table.controller_codes[i]))
            model.set_dynamic(True)
            row["controller"] = {"budget_code": int(table.controller_codes[i]), **controller_stats(model, x, y)}
        else:
            row["controller"] = None
        static = best_static(row["budget_bitops"], static_rows, row["allocation"])
        row["best_static"] = static
        dep = row["deployed"]
        if static is not None and dep is not None:
            if static["mode"] == "allocation":
                base = right["allocation"]
            else:
                base = test.correct(uniform(model, int(static["mode"].split()[1].split("-")[0]))).cpu()
            gain, se = select.paired_gain(right["deployed"], base)
            row["gain_over_static"], row["gain_se"] = gain, se
        else:
            row["gain_over_static"] = row["gain_se"] = None
        row["hull_at_budget"] = hull_accuracy(points, row["budget_bitops"])
        row["hull_at_deployed"] = hull_accuracy(points, dep["bitops"]) if dep else None
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


def _frozen(model, budget_bits: float, kind: str) -> FrozenCascade:
    if model.policies is None:
        raise ValueError("this model has no calibrated width policies: run policy.calibrate_policies (dqt train "
                         "does) and set model.policies")
    found = PolicyTable.from_dict(model.policies).at(float(budget_bits), kind)
    if found is None:
        raise ValueError(f"no {kind} policy fits the BitOPs of uniform {budget_bits} bits")
    return FrozenCascade.from_model(model, found)


def deployed_at(model, budget_bits: float) -> FrozenCascade:
    """The policy chosen for `budget_bits` (a budget `dqt train` reported), frozen: a dynamic
    one where it won out of fold, else the static width the budget affords."""
    return _frozen(model, budget_bits, "deployed")


def escalation_at(model, budget_bits: float) -> FrozenCascade:
    """The two-stage per-layer escalation policy fitted at `budget_bits`, frozen, whether or
    not it was chosen for deployment (`deployed_at`)."""
    return _frozen(model, budget_bits, "escalation")
