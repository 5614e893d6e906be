"""How much accuracy can any per-input width choice buy at uniform-4 BitOPs, on a DQT checkpoint?

For each checkpoint (governed layers at one width per input, edges at 8 bits, as the
`controller="sample"` setting and the cascade deploy it), on the test split:
- static: the checkpoint's accuracy at every width, and the best of them at any cost;
- oracle: an input-aware router that knows which widths classify each input correctly and
  spends at most uniform-4 BitOPs on average (each input at 2 bits unless a wider width is
  right where 2 bits are wrong; rescues bought cheapest first, optimal for equal-value items);
- cascade tuned on the test split itself: every input at `lo`, the least sure (float32 logit
  margin) again at `hi`, the pair and the number rerun chosen for the best test accuracy within
  uniform-4 BitOPs: an optimistic bound for routing by the network's own confidence, which
  ranks the inputs that need bits far better than the controller does (third round).

    PYTHONPATH=. python bench/trials/recipe-2026-11-23/headroom.py CHECKPOINT_DIR [DATASET ...]

CHECKPOINT_DIR holds DATASET-dqt-seedN/model.pt as `bench.evidence one` writes them.
"""
import json
import statistics
import sys
from pathlib import Path

import torch

from dqt_triton import DQTModel
from dqt_triton.training import load_dataset


def analyse(model: DQTModel, x: torch.Tensor, y: torch.Tensor) -> dict:
    model.eval()
    unit = model.uniform_bitops(4)
    widths = sorted(model.candidate_bits)
    logits = {b: model.set_bits(b)(x) for b in widths}
    right = {b: logits[b].argmax(1) == y for b in widths}
    cost = {b: model.uniform_bitops(b) / unit for b in widths}
    n = len(y)
    static = {b: float(right[b].float().mean()) for b in widths}
    # Oracle router, mean cost <= 1.0.
    base = cost[widths[0]]
    extra = []
    for i in range(n):
        if bool(right[widths[0]][i]):
            continue
        fixes = [cost[b] for b in widths if bool(right[b][i])]
        if fixes:
            extra.append(min(fixes) - base)
    spend, rescued = n * base, int(right[widths[0]].sum())
    for e in sorted(extra):
        if spend + e > n * 1.0:
            break
        spend, rescued = spend + e, rescued + 1
    oracle = rescued / n
    # Confidence cascade tuned on this split.
    best = (0.0, None)
    for lo in widths:
        top = logits[lo].topk(2, dim=1).values
        order = torch.argsort(top[:, 0] - top[:, 1], stable=True)  # least sure first
        for hi in (b for b in widths if b > lo):
            if cost[lo] > 1.0:
                continue
            k_max = min(n, int((1.0 - cost[lo]) * n / cost[hi]))
            gain = (right[hi][order].int() - right[lo][order].int()).cumsum(0)
            for k in range(k_max + 1):
                acc = (int(right[lo].sum()) + (int(gain[k - 1]) if k else 0)) / n
                if acc > best[0]:
                    best = (acc, f"{lo}->{hi}, {k} of {n} rerun")
    return {"static": static, "best_static": max(static.values()), "oracle": oracle, "cascade_tuned": best[0],
            "cascade_pair": best[1]}


def main() -> None:
    root, datasets = Path(sys.argv[1]), sys.argv[2:] or ["digits", "madelon"]
    for data in datasets:
        ds = load_dataset(data)
        rows = []
        for path in sorted(root.glob(f"{data}-dqt-seed*/model.pt")):
            r = analyse(DQTModel.load(path), ds.x_test, ds.y_test)
            rows.append(r)
            print(data, path.parent.name, json.dumps({k: (round(v * 100, 1) if isinstance(v, float) else v)
                                                      for k, v in r.items() if k != "static"}),
                  "static", {b: round(a * 100, 1) for b, a in r["static"].items()}, flush=True)
        if rows:
            mean = {k: statistics.fmean(r[k] for r in rows) for k in ("best_static", "oracle", "cascade_tuned")}
            s4 = statistics.fmean(r["static"][4] for r in rows)
            print(f"{data} mean over {len(rows)} seeds: static 4 {100 * s4:.1f}, best static width (any cost) "
                  f"{100 * mean['best_static']:.1f}, oracle router at <= 1.0x {100 * mean['oracle']:.1f}, "
                  f"test-tuned confidence cascade at <= 1.0x {100 * mean['cascade_tuned']:.1f}")


if __name__ == "__main__":
    main()
