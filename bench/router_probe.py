"""Could the paper's controller skip the cheap pass? A probe of what early features know.

A cascade spends a cheap pass on every input and a dearer one on those the cheap pass is unsure
of. A controller that read the early features (the first layer's output codes: every width
computes them alike, since the first layer stays at 8 bits) and sent the inputs the cascade will
escalate straight to the dear width would save their cheap pass. It pays only if the early
features tell those inputs apart. This probe measures that on a run's calibration split, out of
fold (5 folds): a logistic regression on the early features pooled per channel (what the paper's
controller reads: AvgPool, then linear layers) predicts (a) which inputs the deployed cascade
escalates and (b) which inputs the cheap pass gets wrong; the cheap pass's own top-1 margin is
the reference for (b). AUC 0.5 is chance.

Usage: python -m bench.router_probe RUN_DIR [RUN_DIR ...] [--budgets 2.5 3.0] [--out RESULTS.md]
(RUN_DIR: a `dqt train --out` folder, or an evidence checkpoint folder with its run's config)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from bench.common import load_run


def auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = score[positive].double(), score[~positive].double()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    above = (pos[:, None] > neg[None, :]).double().mean() + 0.5 * (pos[:, None] == neg[None, :]).double().mean()
    return float(above)


def early_features(model, x: torch.Tensor, alloc) -> torch.Tensor:
    """The controller's source codes (the first layer's output) of the integer program at
    `alloc`, pooled over every axis but the channel one: [N, C] float64."""
    from dqt_triton import policy

    with model.kept_mode():
        model.eval().set_bits(policy.allocation_bits(model, alloc))
        frozen = model.freeze()
    with torch.no_grad():
        _, values = frozen.run_values(x)
    v = values[model.arch.controller_source].double()
    return v.flatten(2).mean(2) if v.dim() > 2 else v


def out_of_fold_scores(features: torch.Tensor, target: torch.Tensor, folds: int = 5) -> torch.Tensor:
    """A logistic regression (`policy.select.logistic_fit`) fitted on folds-1 folds and scored
    on the held-out one, for every fold."""
    from dqt_triton.policy.select import folds as make_folds
    from dqt_triton.policy.select import logistic_fit

    scores = torch.zeros(len(target), dtype=torch.float64)
    for held in make_folds(len(target), folds):
        keep = torch.ones(len(target), dtype=torch.bool)
        keep[held] = False
        weights, bias = logistic_fit(features[keep], target[keep])
        scores[held] = features[held] @ weights + bias
    return scores


def probe(run: Path, budgets: tuple = (2.25, 2.5, 2.75, 3.0, 3.5, 4.0)) -> list[dict]:
    """Per budget where a calibrated cascade of two or more stages exists (the deployed policy,
    else the first such of the uniform, gated, per-layer and three-stage cascades): the
    out-of-fold AUCs of the early-feature router and of the cheap pass's margin."""
    from dqt_triton import policy
    from dqt_triton.training import calibration_data

    model, cfg, ds = load_run(run)
    table = policy.PolicyTable.from_dict(model.policies)
    xc, yc = calibration_data(cfg, ds)
    cal = policy.Calibration(model, xc, yc)
    rows = []
    for b in budgets:
        if b not in table.budgets:
            continue
        found = [(table.deployed_family[table.budgets.index(b)], table.at(b))]
        found += [(kind, table.at(b, kind)) for kind in ("cascade", "gated", "escalation", "cascade3")]
        found = [(kind, c) for kind, c in found if c is not None and len(c.stages) >= 2]
        if not found:
            continue
        which, cascade = found[0]
        _, _, stage = policy.outcome(cal, cascade)
        escalated = stage > 0
        cheap = cascade.stages[0]
        wrong = ~cal.correct(cheap)
        feats = early_features(model, xc, cheap)
        rows.append({"budget_bits": b, "policy": which, "cascade": cascade.describe(),
                     "escalated_share": float(escalated.double().mean()), "cheap_wrong_share": float(wrong.double().mean()),
                     "router_auc_escalated": auc(out_of_fold_scores(feats, escalated), escalated),
                     "router_auc_wrong": auc(out_of_fold_scores(feats, wrong), wrong),
                     "margin_auc_wrong": auc(-policy.top1_margin(cal.logits(cheap)).double(), wrong),
                     "features": feats.shape[1], "samples": len(yc)})
    return rows


def report(runs: list[Path], budgets: tuple) -> tuple[str, dict]:
    per = {str(r): probe(r, budgets) for r in runs}
    lines = ["| budget | runs | escalated | router AUC: escalated | router AUC: cheap pass wrong | "
             "margin AUC: cheap pass wrong |", "|---|---:|---:|---:|---:|---:|"]
    for b in budgets:
        got = [row for rows in per.values() for row in rows if row["budget_bits"] == b]
        if not got:
            continue

        def mean(key):
            vals = [row[key] for row in got if row[key] == row[key]]
            return f"{statistics.fmean(vals):.2f} ({min(vals):.2f}-{max(vals):.2f})" if vals else "n/a"

        lines.append(f"| {b} | {len(got)} | {mean('escalated_share')} | {mean('router_auc_escalated')} | "
                     f"{mean('router_auc_wrong')} | {mean('margin_auc_wrong')} |")
    return "\n".join(lines), per


def main(argv: list[str]) -> None:
    from bench.common import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--budgets", nargs="+", type=float, default=[2.25, 2.5, 2.75, 3.0, 3.5, 4.0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table, per = report(args.runs, tuple(args.budgets))
    info = machine()
    head = (f"Out-of-fold AUCs (mean, range over runs) on each run's calibration split. Machine: {info['cpu']}, "
            f"commit {info['commit']}, {info['date'][:10]}. Command: python -m bench.router_probe "
            + " ".join(sys.argv[1:] if argv is None else argv))
    print(head + "\n\n" + table)
    if args.out:
        args.out.write_text(head + "\n\n" + table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps({"machine": info, "runs": per}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
