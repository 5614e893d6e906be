"""Width policies on a trained checkpoint, fitted on calibration data and chosen out of fold.

A policy says at which widths each input runs. Every one here is built from the checkpoint's
static per-layer allocations (a width for each governed layer; the edge layers stay at
`edge_bits`), so any of them runs on the frozen integer programs of those allocations:

- `cascade`: `Cascade` (stages of allocations with top-1 margin thresholds: an input runs again
  at the next, dearer stage while the network is unsure, resuming from the layers both share;
  every pass counts in its BitOPs) and its integer runtime `FrozenCascade`;
- `search`: the checkpoint's logits at allocations on labelled data (`Calibration`), the
  allocation frontier, the best allocation and the best two-stage cascade under a budget;
- `select`: the families a policy is fitted from (the static width the budget affords, the best
  allocation, uniform and per-layer cascades, three-stage and gated cascades) and the
  out-of-fold choice among them: where the static width spends the budget, a dynamic policy is
  deployed only where it beats it out of fold;
- `table`: `PolicyTable` (saved with the checkpoint), `calibrate_policies`, `compare_policies`
  (on a test split, against the best static choice that fits each budget), `deployed_at`;
- `metrics`: accuracy, BitOPs and their spread per input, the hull of the uniform widths.
"""

from .cascade import (GATE_FEATURES, Allocation, Cascade, FrozenCascade, allocation_bitops, allocation_bits,
                      escalation_bitops, gate_features, reusable_values, run_cascade, stage_score, suffix_bitops,
                      top1_margin, uniform)
from .metrics import cascade_run, cascade_statistics, cost_statistics, evaluate_cascade, hull_accuracy
from .search import (EXHAUSTIVE_LIMIT, Calibration, best_allocation, best_cascade, candidate_allocations, eval_at,
                     frontier, greedy_path)
from .select import (FAMILIES, FOLDS, SPEND_SHARE, TIE_SE, Candidates, best_cascade3, choose, crossfit, fit_gate,
                     outcome, paired_gain)
from .table import (PolicyTable, best_static, calibrate_policies, compare_policies, deployed_at, escalation_at,
                    stage_histogram)

__all__ = ["GATE_FEATURES", "Allocation", "Cascade", "FrozenCascade", "allocation_bitops", "allocation_bits",
           "escalation_bitops", "gate_features", "reusable_values", "run_cascade", "stage_score", "suffix_bitops",
           "top1_margin", "uniform", "cascade_run", "cascade_statistics", "cost_statistics", "evaluate_cascade",
           "hull_accuracy", "EXHAUSTIVE_LIMIT", "Calibration", "best_allocation", "best_cascade",
           "candidate_allocations", "eval_at", "frontier", "greedy_path", "FAMILIES", "FOLDS", "SPEND_SHARE", "TIE_SE",
           "Candidates", "best_cascade3", "choose", "crossfit", "fit_gate", "outcome", "paired_gain", "PolicyTable",
           "best_static", "calibrate_policies", "compare_policies", "deployed_at", "escalation_at", "stage_histogram"]
