"""The nested-accuracy and dynamic-width evidence: one DQT checkpoint at every width against
models trained alone at each width, dynamic mode at run-time budgets, per-input adaptivity,
both shift rules and the consistency ablation, over seeds and two offline datasets.

    python -m bench.evidence run [--datasets digits madelon] [--seeds 0 1 2] [--jobs 2]
    python -m bench.evidence summarize [--out bench/results/evidence]

`run` trains every configuration in its own process (one JSON per run under OUT/runs/,
skipped when present, so an interrupted run continues; `--jobs` processes at once, each
pinned to one thread) and then summarizes: OUT/summary.json, OUT/summary.md (mean +- std over
seeds, and every target of the evidence as a measured value) and OUT/accuracy_vs_bitops.png
(needs matplotlib). Measures; asserts nothing. All accuracies are of the integer-only eval.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

# Per dataset: model and schedule (warm-up epochs of 8-bit QAT, then DQT epochs). The MADELON
# MLP has four hidden layers so the controller governs three (first and last stay at 8 bits).
SETUPS = {
    "digits": dict(model="resnet18", width=8, warmup_epochs=4, epochs=6),
    "madelon": dict(model="mlp", width=32, depth=4, warmup_epochs=4, epochs=6),
}
STATIC_WIDTHS = (8, 7, 6, 5, 4, 3, 2)
VARIANTS = {  # name -> TrainConfig overrides
    "dqt": {},
    "dqt_floor": {"shift_rule": "floor"},
    # Without the sandwich there are no passes to imitate: the controller judges held-out samples.
    "dqt_alpha0": {"alpha": 0.0, "imitation_source": "holdout"},
    "dqt_holdout": {"imitation_source": "holdout"},
    **{f"static{b}": {"static_bits": b} for b in STATIC_WIDTHS},
    "static4_floor": {"static_bits": 4, "shift_rule": "floor"},
}
BUDGETS = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0)  # run-time budgets, as uniform-b BitOPs


def _float_baseline(dataset: str, seed: int, setup: dict) -> dict:
    """The float model with the same architecture, data and epochs (Adam, lr 3e-3)."""
    import torch
    import torch.nn.functional as F

    from dqt_triton.training import TrainConfig, float_network, load_dataset

    cfg = TrainConfig(data=dataset, seed=seed, **setup)
    ds = load_dataset(dataset, limit=cfg.limit)
    torch.manual_seed(seed)
    net = float_network(cfg, ds)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scale = ds.input_scale
    for epoch in range(cfg.warmup_epochs + cfg.epochs):
        net.train()
        order = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for idx in order.split(cfg.batch_size):
            loss = F.cross_entropy(net(ds.x_train[idx].float() * scale), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(ds.x_test.float() * scale).argmax(1) == ds.y_test).float().mean().item()
    return {"rows": [{"mode": "float", "accuracy": acc, "bitops": None}], "config": {"data": dataset, "seed": seed,
                                                                                    **setup}}


def run_one(dataset: str, variant: str, seed: int, out: Path, setup: dict, overrides: dict) -> None:
    """Train one configuration in this process and write OUT/runs/DATASET-VARIANT-seedN.json."""
    import torch

    from dqt_triton.training import TrainConfig, Trainer, budget_sweep

    torch.set_num_threads(1)
    start = time.perf_counter()
    if variant == "float":
        result = _float_baseline(dataset, seed, setup)
    else:
        cfg = TrainConfig(data=dataset, seed=seed, **setup, **overrides)
        trainer = Trainer(cfg, out / "checkpoints" / f"{dataset}-{variant}-seed{seed}")
        result = trainer.train()
        result["config"] = asdict(cfg)
        if trainer.model.controller is not None:
            result["sweep"] = budget_sweep(trainer.model, trainer.ds, BUDGETS)
        result["uniform4_bitops"] = trainer.model.uniform_bitops(4)
    result.update(dataset=dataset, variant=variant, seed=seed, seconds=time.perf_counter() - start)
    (out / "runs" / f"{dataset}-{variant}-seed{seed}.json").write_text(json.dumps(result, indent=2) + "\n")


def run(datasets, seeds, out: Path, jobs: int) -> None:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(d, v, s) for d in datasets for s in seeds for v in ["float", *VARIANTS]
            if not (out / "runs" / f"{d}-{v}-seed{s}.json").exists()]
    # One thread per process: Numba's and OpenMP's pools spin when oversubscribed.
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def launch(job):
        d, v, s = job
        begin = time.perf_counter()
        # The child gets the resolved configuration, not the names: what this process runs is what
        # gets trained.
        config = json.dumps({"setup": SETUPS[d], "overrides": VARIANTS.get(v, {})})
        proc = subprocess.run([sys.executable, "-m", "bench.evidence", "one", d, v, str(s), config, "--out", str(out)],
                              env=env, capture_output=True, text=True)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        print(f"{d} {v} seed {s}: {time.perf_counter() - begin:.0f}s {status}", flush=True)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(launch, todo))
    summarize(out)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(mean, std=None, pct=True) -> str:
    if mean is None:
        return "n/a"
    if pct:
        return f"{100 * mean:.1f}" + (f" +- {100 * std:.1f}" if std is not None else "")
    return f"{mean:.2f}" + (f" +- {std:.2f}" if std is not None else "")


def _collect(results: list[dict]) -> dict:
    """(dataset, variant, key) -> list over seeds, for accuracies, BitOPs and dynamic statistics."""
    table: dict = {}

    def add(key, value):
        table.setdefault(key, []).append(value)

    for r in results:
        d, v = r["dataset"], r["variant"]
        for row in r["rows"]:
            add((d, v, row["mode"], "accuracy"), row["accuracy"])
            add((d, v, row["mode"], "bitops_vs_uniform4"), row.get("bitops_vs_uniform4"))
            for k in ("spread", "cheap_half_accuracy", "dear_half_accuracy"):
                if row["mode"] == "dynamic":
                    add((d, v, "dynamic", k), row.get(k))
        if r.get("agreement_dynamic") is not None:
            add((d, v, "dynamic", "agreement"), r["agreement_dynamic"])
        for row in r.get("sweep", []):
            mode = f"dynamic@{row['budget_bits']}"
            for k in ("accuracy", "bitops_vs_uniform4", "spread", "cheap_half_accuracy", "dear_half_accuracy"):
                add((d, v, mode, k), row.get(k))
        add((d, v, "train", "seconds"), r.get("seconds"))
    return table


def _targets(table: dict, dataset: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows of the issue's targets for one dataset."""
    def m(variant, mode, key="accuracy"):
        return _mean_std(table.get((dataset, variant, mode, key), []))[0]

    out = []
    gaps = []
    for b in STATIC_WIDTHS:
        nested, alone = m("dqt", f"static {b}-bit"), m(f"static{b}", f"static {b}-bit")
        if nested is None or alone is None:
            continue
        limit = 0.05 if b == 2 else 0.015
        gaps.append(alone - nested <= limit)
        out.append((f"one checkpoint at {b} bits within {100 * limit:.1f} pp of {b}-bit trained alone",
                    f"{_fmt(nested)} vs {_fmt(alone)} ({100 * (nested - alone):+.1f} pp)",
                    "met" if alone - nested <= limit else "missed"))
    eight = m("dqt", "static 8-bit")
    lower = [m("dqt", f"static {b}-bit") for b in STATIC_WIDTHS[1:]]
    if eight is not None and all(v is not None for v in lower):
        out.append(("8-bit not below any lower width (same checkpoint)", f"8-bit {_fmt(eight)}, best lower "
                    f"{_fmt(max(lower))}", "met" if eight >= max(lower) else "missed"))
    for variant, rule, static4 in (("dqt", "round", "static4"), ("dqt_floor", "floor", "static4_floor")):
        alone = m(static4, "static 4-bit")
        best = None
        for mode in ["dynamic"] + [f"dynamic@{b}" for b in BUDGETS]:
            acc, cost = m(variant, mode), m(variant, mode, "bitops_vs_uniform4")
            if acc is not None and cost is not None and cost <= 1.0 and (best is None or acc > best[0]):
                best = (acc, cost, mode)
        if best is not None and alone is not None:
            out.append((f"{rule} rule: dynamic at <= 1.0x uniform-4 BitOPs >= 1 pp above static 4-bit trained alone",
                        f"{_fmt(best[0])} at {best[1]:.2f}x ({best[2]}) vs {_fmt(alone)} "
                        f"({100 * (best[0] - alone):+.1f} pp)", "met" if best[0] - alone >= 0.01 else "missed"))
    above = 0
    for b in BUDGETS:
        acc, cost = m("dqt", f"dynamic@{b}"), m("dqt", f"dynamic@{b}", "bitops_vs_uniform4")
        if acc is None or cost is None:
            continue
        # The static curve at this cost: linear interpolation between the nested checkpoint's widths.
        pts = [(m("dqt", f"static {w}-bit", "bitops_vs_uniform4"), m("dqt", f"static {w}-bit")) for w in STATIC_WIDTHS]
        pts = sorted(p for p in pts if p[0] is not None and p[1] is not None)
        static_here = None
        for (c0, a0), (c1, a1) in zip(pts, pts[1:]):
            if c0 <= cost <= c1:
                static_here = a0 + (a1 - a0) * (cost - c0) / (c1 - c0)
        if static_here is not None and acc > static_here:
            above += 1
    out.append(("dynamic above the static curve at >= 3 budgets", f"{above} of {len(BUDGETS)} budgets",
                "met" if above >= 3 else "missed"))
    spread = m("dqt", "dynamic@4.0", "spread")
    cheap, dear = m("dqt", "dynamic@4.0", "cheap_half_accuracy"), m("dqt", "dynamic@4.0", "dear_half_accuracy")
    if spread is not None:
        out.append(("per-input BitOPs, dearest 10% / cheapest 10% >= 2.0 (budget uniform 4)",
                    f"{spread:.2f}x; accuracy cheap half {_fmt(cheap)}, dear half {_fmt(dear)}",
                    "met" if spread >= 2.0 else "missed"))
    return out


def summarize(out: Path) -> dict:
    from bench.common import machine

    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    table = _collect(results)
    info = machine()
    datasets = sorted({r["dataset"] for r in results})
    lines = [f"# DQT nested-accuracy evidence, {info['date']}", "",
             f"Machine: {info['cpu']} ({info['threads']} threads), torch {info['torch']}, commit {info['commit']}. "
             "Command: `python -m bench.evidence run --jobs 2`. Accuracy (%) of the integer-only eval on the held-out "
             "split, mean +- std over seeds; BitOPs relative to uniform 4-bit (governed layers at 4 bits, first and "
             "last layers at 8 in every row, static and dynamic alike).", ""]
    summary_rows = []
    for d in datasets:
        seeds = sorted({r["seed"] for r in results if r["dataset"] == d})
        lines += [f"## {d} (seeds {', '.join(map(str, seeds))})", "",
                  "| width | trained alone | DQT round: one checkpoint | DQT floor: one checkpoint | "
                  "DQT round, alpha = 0 | DQT round, held-out imitation | BitOPs / uniform 4 |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for b in STATIC_WIDTHS:
            mode = f"static {b}-bit"
            cells = [_fmt(*_mean_std(table.get((d, v, mode, "accuracy"), [])))
                     for v in (f"static{b}", "dqt", "dqt_floor", "dqt_alpha0", "dqt_holdout")]
            cost = _mean_std(table.get((d, "dqt", mode, "bitops_vs_uniform4"), []))[0]
            lines.append(f"| {b} | " + " | ".join(cells) + f" | {_fmt(cost, pct=False)} |")
        f_acc = _mean_std(table.get((d, "float", "float", "accuracy"), []))
        s4f = _mean_std(table.get((d, "static4_floor", "static 4-bit", "accuracy"), []))
        lines += ["", f"Float: {_fmt(*f_acc)}. Static 4-bit trained alone with the floor rule: {_fmt(*s4f)}.", "",
                  "Dynamic mode (one checkpoint; run-time budget codes calibrated on the training set):", "",
                  "| variant | budget (uniform b) | accuracy | BitOPs / uniform 4 | dearest 10% / cheapest 10% | "
                  "accuracy cheap half / dear half |", "|---|---|---:|---:|---:|---|"]
        for v in ("dqt", "dqt_floor", "dqt_alpha0", "dqt_holdout"):
            for mode in [f"dynamic@{b}" for b in BUDGETS]:
                acc = _mean_std(table.get((d, v, mode, "accuracy"), []))
                if acc[0] is None:
                    continue
                cost = _mean_std(table.get((d, v, mode, "bitops_vs_uniform4"), []))
                spread = _mean_std(table.get((d, v, mode, "spread"), []))
                cheap = _mean_std(table.get((d, v, mode, "cheap_half_accuracy"), []))[0]
                dear = _mean_std(table.get((d, v, mode, "dear_half_accuracy"), []))[0]
                lines.append(f"| {v} | {mode.split('@')[1]} | {_fmt(*acc)} | {_fmt(*cost, pct=False)} | "
                             f"{_fmt(*spread, pct=False)} | {_fmt(cheap)} / {_fmt(dear)} |")
                summary_rows.append({"dataset": d, "variant": v, "mode": mode, "accuracy": acc[0],
                                     "accuracy_std": acc[1], "bitops_vs_uniform4": cost[0], "spread": spread[0]})
            agree = _mean_std(table.get((d, v, "dynamic", "agreement"), []))
            if agree[0] is not None:
                lines.append(f"| {v} | train-path / integer-eval agreement | {_fmt(*agree)} | | | |")
        lines += ["", "Targets (measured; nothing here is asserted):", "", "| target | measured | verdict |",
                  "|---|---|---|"]
        lines += [f"| {t} | {mv} | {verdict} |" for t, mv, verdict in _targets(table, d)]
        secs = {v: _mean_std(table.get((d, v, "train", "seconds"), []))[0] for v in ("dqt", "static4", "float")}
        lines += ["", "Training time per run (s, mean): " + ", ".join(f"{v} {s:.0f}" for v, s in secs.items() if s),
                  ""]
        for (dd, v, mode, key), values in sorted(table.items()):
            if dd == d and mode.startswith("static") and key == "accuracy":
                mean, std = _mean_std(values)
                summary_rows.append({"dataset": d, "variant": v, "mode": mode, "accuracy": mean, "accuracy_std": std,
                                     "bitops_vs_uniform4": _mean_std(table.get((d, v, mode, "bitops_vs_uniform4"),
                                                                               []))[0]})
    summary = {"machine": info, "command": "python -m bench.evidence run --jobs 2", "rows": summary_rows,
               "targets": {d: _targets(table, d) for d in datasets}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(table, datasets, out / "accuracy_vs_bitops.png")
    print("\n".join(lines))
    return summary


def _plot(table: dict, datasets: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8), squeeze=False)

    def series(d, v, modes):
        pts = []
        for mode in modes:
            acc = _mean_std(table.get((d, v, mode, "accuracy"), []))
            cost = _mean_std(table.get((d, v, mode, "bitops_vs_uniform4"), []))[0]
            if acc[0] is not None and cost is not None:
                pts.append((cost, 100 * acc[0], 100 * acc[1]))
        return sorted(pts)

    statics = [f"static {b}-bit" for b in STATIC_WIDTHS]
    dyn = [f"dynamic@{b}" for b in BUDGETS]
    for ax, d in zip(axes[0], datasets):
        alone = []
        for b in STATIC_WIDTHS:
            alone += series(d, f"static{b}", [f"static {b}-bit"])
        for pts, style, label in (
                (alone, "kx--", "static, each width trained alone"),
                (series(d, "dqt", statics), "o-", "DQT round: one checkpoint, static widths"),
                (series(d, "dqt", dyn), "*-", "DQT round: dynamic, run-time budgets"),
                (series(d, "dqt_holdout", dyn), "v-.", "DQT round, controller judges held-out samples: dynamic"),
                (series(d, "dqt_floor", statics), "s:", "DQT floor: one checkpoint, static widths"),
                (series(d, "dqt_floor", dyn), "^:", "DQT floor: dynamic, run-time budgets")):
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], fmt=style, label=label,
                            markersize=8 if "*" in style else 5, capsize=2)
        f_acc = _mean_std(table.get((d, "float", "float", "accuracy"), []))[0]
        if f_acc is not None:
            ax.axhline(100 * f_acc, color="gray", linestyle="--", label="float")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("BitOPs per sample / uniform 4-bit (first and last layers at 8 bits)")
        ax.set_ylabel("top-1 accuracy, integer eval (%)")
        ax.set_title(d)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "summarize", "one"])
    parser.add_argument("args", nargs="*", help="for `one`: DATASET VARIANT SEED CONFIG_JSON")
    parser.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/evidence"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.datasets, args.seeds, args.out, args.jobs)
    elif args.command == "one":
        dataset, variant, seed, config = args.args
        config = json.loads(config)
        if "candidate_bits" in config["setup"]:
            config["setup"]["candidate_bits"] = tuple(config["setup"]["candidate_bits"])
        run_one(dataset, variant, int(seed), args.out, config["setup"], config["overrides"])
    else:
        summarize(args.out)


if __name__ == "__main__":
    main()
