"""Probes of a trained checkpoint with widths per token, no retraining: how its accuracy and
BitOPs move with the budget code (`budget_curve`), how each governed layer alone at another width
moves the metric (`layer_widths`: which layers could pay for others), and how fixed per-token
rules do on the same network (`fixed_rules`: digits only, blank patches against inked ones,
least ink, random tokens).

Usage: python -m bench.token_probes RUN_DIR [RUN_DIR ...] [--out RESULTS.md]
(RUN_DIR: a `dqt train --controller token|token-shared` output folder on digits, MNIST-1D or pydoc)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.common import load_run


def budget_curve(run: Path, below: int = 3, above: int = 6) -> list[dict]:
    """Accuracy and BitOPs / uniform 4 on the calibration split and the test split (integer eval)
    at the budget codes around the calibrated one."""
    import torch

    from dqt_triton.training import calibration_data

    model, cfg, ds = load_run(run)
    xc, yc = calibration_data(cfg, ds)
    model.set_dynamic(True)
    unit, calibrated = model.uniform_bitops(4), model.budget_code
    rows = []
    for code in range(max(calibrated - below, 0), calibrated + above + 1):
        model.set_budget(code)
        row = {"code": code, "calibrated": code == calibrated}
        for split, (x, y) in (("calibration", (xc, yc)), ("test", (ds.x_test, ds.y_test))):
            with torch.no_grad():
                row[split] = {"accuracy": float((model(x).argmax(1) == y).float().mean()),
                              "bitops_vs_uniform4": float(model.last_bitops.double().mean()) / unit}
        rows.append(row)
    return rows


def forced_metric(model, ds, widths, batch_size: int = 256) -> dict:
    """Test metric (accuracy, or perplexity for next-token targets) and BitOPs / uniform 4 less the
    controller's, with the test split run at `widths` [N, (T,) governed] (`force_widths`; the
    training path at eval statistics, whose integers the eval path equals)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        outs = [model.train_forward(x, force_widths=w)
                for x, w in zip(ds.x_test.split(batch_size), widths.split(batch_size))]
    logits, bitops = torch.cat([o.logits for o in outs]), torch.cat([o.bitops for o in outs]).double()
    metric = ({"perplexity": float(torch.exp(F.cross_entropy(logits, ds.y_test)))} if ds.y_test.dim() > 1
              else {"accuracy": float((logits.argmax(1) == ds.y_test).float().mean())})
    unit, controller = model.uniform_bitops(4), 64 * model.controller.macs()
    return {**metric, "bitops_vs_uniform4": (float(bitops.mean()) - controller) / unit}


def layer_widths(run: Path, widths: tuple = (3, 5), base: int = 4) -> list[dict]:
    """`forced_metric` with every governed layer at `base` bits and then each one alone at each of
    `widths` (candidates only), for every token: which layers could pay for others."""
    import torch

    model, _, ds = load_run(run)
    model.set_dynamic(True)
    governed = len(model.governed)
    shape = (len(ds.x_test), *((model.controller.tokens,) if model.controller.per_token else ()), governed)

    def measure(layer_bits: list) -> dict:
        return forced_metric(model, ds, torch.tensor(layer_bits).expand(shape))

    rows = [{"layer": "none", "bits": base, **measure([base] * governed)}]
    for bits in (b for b in widths if b in model.candidate_bits):
        for i, name in enumerate(model.governed):
            rows.append({"layer": name, "bits": bits, **measure([bits if j == i else base for j in range(governed)])})
    return rows


def fixed_rules(run: Path) -> list[dict]:
    """Test accuracy (training path at eval statistics, which the integer eval equals) with each
    token's width set by a rule instead of the controller, every governed layer alike: blank 2 x 2
    patches (no ink) at one width and the others at another; the k patches with least ink at a
    lower width; k random patches at a lower width (the rules whose widths are all candidates).
    BitOPs / uniform 4 without the controller, which a fixed rule does not need."""
    import torch

    model, _, ds = load_run(run)
    model.set_dynamic(True)
    n = len(ds.x_test)
    patches = ds.x_test[:, 0].float().unfold(1, 2, 2).unfold(2, 2, 2).reshape(n, 16, 4)
    blank, ink_rank = patches.amax(-1) == 0, patches.sum(-1).argsort(1).argsort(1)
    random_rank = torch.rand(n, 16, generator=torch.Generator().manual_seed(0)).argsort(1)
    governed = len(model.governed)

    def measure(widths) -> dict:  # batches of 120, as the committed digits probes were measured
        return forced_metric(model, ds, widths.view(n, 16, 1).expand(n, 16, governed), batch_size=120)

    rules = [(f"every patch {b}", torch.full((n, 16), b)) for b in (4, 3)]
    rules += [(f"blank {lo}, inked {hi}", torch.where(blank, lo, hi)) for lo, hi in ((2, 4), (3, 4), (4, 3), (2, 5))]
    rules += [(f"{k} least-ink patches {lo}, others 4", torch.where(ink_rank < k, lo, 4)) for k, lo in ((6, 2), (6, 3))]
    rules += [(f"{k} random patches {lo}, others 4", torch.where(random_rank < k, lo, 4)) for k, lo in ((6, 2), (6, 3))]
    return [{"rule": name, **measure(w)} for name, w in rules if set(w.unique().tolist()) <= set(model.candidate_bits)]


def report(runs: list[Path]) -> tuple[str, dict]:
    """Markdown and JSON of both probes for each run."""
    lines, data = [], {}
    for run in runs:
        digits = json.loads((run / "results.json").read_text())["config"]["data"] == "digits"
        curve, layers, rules = budget_curve(run), layer_widths(run), fixed_rules(run) if digits else []
        data[str(run)] = {"budget_curve": curve, "layer_widths": layers, "fixed_rules": rules}
        lines += [f"## {run}", "", "| budget code | calibration accuracy @ BitOPs | test accuracy @ BitOPs |",
                  "|---:|---:|---:|"]
        lines += [f"| {r['code']}{' (calibrated)' if r['calibrated'] else ''} | "
                  f"{100 * r['calibration']['accuracy']:.2f} @ {r['calibration']['bitops_vs_uniform4']:.3f}x | "
                  f"{100 * r['test']['accuracy']:.2f} @ {r['test']['bitops_vs_uniform4']:.3f}x |" for r in curve]
        metric = "perplexity" if "perplexity" in layers[0] else "accuracy"
        scale = 1.0 if metric == "perplexity" else 100.0
        lines += ["", f"| one governed layer at another width, the rest at {layers[0]['bits']} (no controller) | "
                  f"test {metric} | BitOPs |", "|---|---:|---:|"]
        lines += [f"| {'none' if r['layer'] == 'none' else r['layer'] + ' at ' + str(r['bits'])} | "
                  f"{scale * r[metric]:.3f} | {r['bitops_vs_uniform4']:.3f}x |" for r in layers]
        if rules:
            lines += ["", "| widths by rule (no controller) | test accuracy | BitOPs |", "|---|---:|---:|"]
            lines += [f"| {r['rule']} | {100 * r['accuracy']:.2f} | {r['bitops_vs_uniform4']:.3f}x |" for r in rules]
        lines.append("")
    return "\n".join(lines), data


def main(argv: list[str]) -> None:
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    from bench.common import machine

    text, data = report([Path(a) for a in argv])
    info = machine()
    head = (f"# Per-token checkpoints probed ({info['date'][:10]})\n\nMachine: {info['cpu']}, {info['threads']} threads, "
            f"torch {info['torch']}; commit {info['commit']}; command `python -m bench.token_probes {' '.join(argv)}`\n\n")
    if out is None:
        print(head + text)
        return
    out.write_text(head + text)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "runs": data}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
