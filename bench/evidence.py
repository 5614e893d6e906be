"""The paper's claims measured: baselines, one DQT checkpoint at every width, dynamic vs static,
the consistency and shift-rule ablations, over seeds and two offline datasets.

    python -m bench.evidence run [--datasets digits madelon] [--seeds 0 1 2] [--out bench/results/evidence]
    python -m bench.evidence summarize [--out bench/results/evidence]

`run` trains every configuration (one JSON per run under OUT/runs/, skipped when present, so an
interrupted run continues) and then summarizes: OUT/summary.json, OUT/summary.md (mean and std
over seeds) and OUT/accuracy_vs_bitops.png (needs matplotlib). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import machine
from dqt_triton.training import TrainConfig, Trainer, float_network, load_dataset

# Per dataset: model and schedule (warm-up epochs of 8-bit QAT, then DQT epochs).
SETUPS = {
    "digits": dict(model="resnet18", width=8, warmup_epochs=4, epochs=4),
    "madelon": dict(model="mlp", width=32, warmup_epochs=4, epochs=4),
}
VARIANTS = {  # name -> TrainConfig overrides
    "dqt": {},
    "dqt_alpha0": {"alpha": 0.0},
    "dqt_round": {"shift_rule": "round"},
    "static8": {"static_bits": 8},
    "static4": {"static_bits": 4},
    "static2": {"static_bits": 2},
}


def _float_baseline(dataset: str, seed: int, setup: dict) -> dict:
    """The float model with the same architecture, data and epochs (Adam, lr 3e-3)."""
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
    return {"rows": [{"mode": "float", "accuracy": acc, "bitops": None}]}


def run(datasets, seeds, out: Path) -> None:
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        setup = SETUPS[dataset]
        for seed in seeds:
            for variant in ["float", *VARIANTS]:
                path = runs / f"{dataset}-{variant}-seed{seed}.json"
                if path.exists():
                    continue
                start = time.perf_counter()
                if variant == "float":
                    result = _float_baseline(dataset, seed, setup)
                    config = {"data": dataset, "seed": seed, **setup}
                else:
                    cfg = TrainConfig(data=dataset, seed=seed, **setup, **VARIANTS[variant])
                    result = Trainer(cfg, out / "checkpoints" / f"{dataset}-{variant}-seed{seed}").train()
                    config = asdict(cfg)
                result.update(dataset=dataset, variant=variant, seed=seed, config=config,
                              seconds=time.perf_counter() - start)
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(f"{dataset} {variant} seed {seed}: {time.perf_counter() - start:.0f}s", flush=True)
    summarize(out)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(out: Path) -> dict:
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    table = {}
    for r in results:
        for row in r["rows"]:
            key = (r["dataset"], r["variant"], row["mode"])
            table.setdefault(key, {"accuracy": [], "bitops_vs_uniform4": [], "seeds": []})
            table[key]["accuracy"].append(row["accuracy"])
            table[key]["bitops_vs_uniform4"].append(row.get("bitops_vs_uniform4"))
            table[key]["seeds"].append(r["seed"])
        if r.get("agreement_dynamic") is not None:
            key = (r["dataset"], r["variant"], "agreement")
            table.setdefault(key, {"accuracy": [], "bitops_vs_uniform4": [], "seeds": []})
            table[key]["accuracy"].append(r["agreement_dynamic"])
            table[key]["seeds"].append(r["seed"])
    rows = []
    for (dataset, variant, mode), v in sorted(table.items()):
        acc_mean, acc_std = _mean_std(v["accuracy"])
        bit_mean, _ = _mean_std(v["bitops_vs_uniform4"])
        rows.append({"dataset": dataset, "variant": variant, "mode": mode, "mean": acc_mean, "std": acc_std,
                     "bitops_vs_uniform4": bit_mean, "seeds": sorted(v["seeds"])})
    info = machine()
    summary = {"machine": info, "command": "python -m bench.evidence run", "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# DQT evidence, {info['date']}", "",
             f"Machine: {info['cpu']} ({info['threads']} threads), torch {info['torch']}, commit {info['commit']}. "
             "Command: `python -m bench.evidence run`. Accuracy of the integer-only eval on the held-out split, "
             "mean +- std over the seeds listed; BitOPs relative to every layer at 4 bits.", "",
             "| dataset | variant | mode | accuracy | BitOPs / uniform-4 | seeds |", "|---|---|---|---:|---:|---|"]
    for r in rows:
        bit = f"{r['bitops_vs_uniform4']:.2f}" if r["bitops_vs_uniform4"] is not None else ""
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['mode']} | {r['mean']:.4f} +- {r['std']:.4f} | {bit} | "
                     f"{','.join(map(str, r['seeds']))} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "accuracy_vs_bitops.png")
    print("\n".join(lines))
    return summary


def _plot(rows, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    datasets = sorted({r["dataset"] for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    styles = {"dqt": "o-", "dqt_alpha0": "s--", "dqt_round": "^:"}
    for ax, dataset in zip(axes[0], datasets):
        for variant, style in styles.items():
            pts = sorted((r["bitops_vs_uniform4"], r["mean"], r["std"]) for r in rows
                         if r["dataset"] == dataset and r["variant"] == variant and r["mode"].startswith("static"))
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts], fmt=style,
                            label=f"{variant}: one checkpoint, static widths")
            dyn = [r for r in rows if r["dataset"] == dataset and r["variant"] == variant and r["mode"] == "dynamic"]
            for r in dyn:
                ax.errorbar([r["bitops_vs_uniform4"]], [r["mean"]], [r["std"]], fmt="*", markersize=14,
                            label=f"{variant}: dynamic")
        for r in rows:
            if r["dataset"] == dataset and r["variant"].startswith("static") and r["mode"].startswith("static"):
                ax.errorbar([r["bitops_vs_uniform4"]], [r["mean"]], [r["std"]], fmt="kx", markersize=9)
        floats = [r for r in rows if r["dataset"] == dataset and r["variant"] == "float"]
        for r in floats:
            ax.axhline(r["mean"], color="gray", linestyle="--", label="float")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("BitOPs per sample / uniform 4-bit")
        ax.set_ylabel("top-1 accuracy (integer eval)")
        ax.set_title(f"{dataset} (x: separately trained static baselines)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "summarize"])
    parser.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("bench/results/evidence"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.datasets, args.seeds, args.out)
    else:
        summarize(args.out)


if __name__ == "__main__":
    main()
