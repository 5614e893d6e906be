"""The evidence for dynamic widths: one DQT checkpoint per task and seed, its static widths and
their hull, the best static per-layer allocation, the uniform-width confidence cascade, the
escalation mode and the paper's controller at run-time budgets, against models trained alone
at each width and the float model, over seeds.

    python -m bench.evidence run [--setups digits madelon mnist1d mnist1d-narrow vit-mnist1d] [--seeds 0 1 2 3 4]
                                 [--jobs 2] [--no-baselines]
    python -m bench.evidence summarize [--out bench/results/evidence-DATE]
    python -m bench.evidence repolicy [--out ...]   # policies again from the saved checkpoints

`run` trains every configuration in its own process (one JSON per run under OUT/runs/,
skipped when present, so an interrupted run continues; `--jobs` processes at once, each
pinned to one thread) and then summarizes: OUT/summary.json, OUT/summary.md (mean +- standard
error over seeds, paired differences per seed, and every target as a measured value) and
OUT/accuracy_vs_bitops.png (needs matplotlib). Measures; asserts nothing. Every accuracy is the
integer-only eval on the test split; policies are calibrated on the held-out calibration split
of the training set (`TrainConfig.calibration_holdout`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

# Per setup: the dataset, model and schedule (warm-up epochs of 8-bit QAT, then DQT epochs),
# and the widths trained alone. The MADELON MLP has four hidden layers so three are governed.
# mnist1d-narrow is the 16-channel CNN (the default has 32): its checkpoint loses 4-5 pp from 4
# bits to 2 (the default one about 2), the headroom dynamic widths need.
SETUPS = {
    "digits": dict(data="digits", model="resnet18", width=8, warmup_epochs=4, epochs=6),
    "madelon": dict(data="madelon", model="mlp", width=32, depth=4, warmup_epochs=4, epochs=6),
    "mnist1d": dict(data="mnist1d", model="cnn1d", width=8, warmup_epochs=30, epochs=30),
    "mnist1d-narrow": dict(data="mnist1d", model="cnn1d", width=4, warmup_epochs=30, epochs=30),
    "vit-mnist1d": dict(data="mnist1d", model="vit", warmup_epochs=20, epochs=30),
}
ALONE_WIDTHS = {"digits": (8, 4, 2), "madelon": (8, 4, 2), "mnist1d": (8, 6, 4, 3, 2), "mnist1d-narrow": (4, 2),
                "vit-mnist1d": ()}
STATIC_WIDTHS = (8, 7, 6, 5, 4, 3, 2)
VARIANTS = {  # name -> TrainConfig overrides; `--variants` picks others (run them with --setups)
    "dqt": {},
    "dqt_floor": {"shift_rule": "floor"},
    "dqt_holdout": {"imitation_source": "holdout"},
    **{f"static{b}": {"static_bits": b} for b in STATIC_WIDTHS},
}
POLICIES = ("deployed", "allocation", "cascade", "escalation", "cascade3", "gated", "controller")
POLICY_NAMES = {"deployed": "deployed", "allocation": "best static allocation", "cascade": "uniform cascade",
                "escalation": "escalation", "cascade3": "3-stage cascade", "gated": "gated cascade",
                "controller": "paper's controller"}
DEPLOYMENT_BUDGET = 4.0  # `dqt train --budget`'s default


def _float_baseline(setup: dict, seed: int) -> dict:
    """The float model with the same architecture, data split and epochs (Adam, lr 3e-3)."""
    import torch
    import torch.nn.functional as F

    from dqt_triton.training import TrainConfig, float_network, load_dataset, split_training_set

    cfg = TrainConfig(seed=seed, **setup)
    ds = load_dataset(cfg.data, limit=cfg.limit)
    fit = split_training_set(cfg, len(ds.y_train))[2]  # the samples DQT trains on
    torch.manual_seed(seed)
    net = float_network(cfg, ds)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    scale = ds.input_scale
    for epoch in range(cfg.warmup_epochs + cfg.epochs):
        net.train()
        order = fit[torch.randperm(len(fit), generator=torch.Generator().manual_seed(seed * 1000 + epoch))]
        for idx in order.split(cfg.batch_size):
            loss = F.cross_entropy(net(ds.x_train[idx].float() * scale), ds.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(ds.x_test.float() * scale).argmax(1) == ds.y_test).float().mean().item()
    return {"rows": [{"mode": "float", "accuracy": acc, "bitops": None}], "config": {"seed": seed, **setup}}


def run_one(name: str, variant: str, seed: int, out: Path, setup: dict, overrides: dict) -> None:
    """Train one configuration in this process and write OUT/runs/SETUP-VARIANT-seedN.json."""
    import torch

    from dqt_triton.training import TrainConfig, Trainer

    torch.set_num_threads(1)
    start = time.perf_counter()
    if variant == "float":
        result = _float_baseline(setup, seed)
    else:
        cfg = TrainConfig(seed=seed, **setup, **overrides)
        trainer = Trainer(cfg, out / "checkpoints" / f"{name}-{variant}-seed{seed}")
        result = trainer.train()
        result["config"] = asdict(cfg)
    result.update(setup=name, variant=variant, seed=seed, seconds=time.perf_counter() - start)
    (out / "runs" / f"{name}-{variant}-seed{seed}.json").write_text(json.dumps(result, indent=2) + "\n")


def jobs_for(setups, seeds, variants, baselines: bool = True) -> list:
    """(setup, variant, seed) of a run: DQT, and with `baselines` the float model and the
    setup's widths trained alone."""
    todo = []
    for name in setups:
        names = ["float", *variants, *(f"static{b}" for b in ALONE_WIDTHS[name])] if baselines else list(variants)
        todo += [(name, v, s) for s in seeds for v in names]
    # the DQT checkpoints first: a run cut short still has every seed's policies
    return sorted(todo, key=lambda job: job[1] not in variants)


def run(setups, seeds, variants, out: Path, jobs: int, baselines: bool = True) -> None:
    (out / "runs").mkdir(parents=True, exist_ok=True)
    todo = [(name, v, s) for name, v, s in jobs_for(setups, seeds, variants, baselines)
            if not (out / "runs" / f"{name}-{v}-seed{s}.json").exists()]
    # One thread per process: Numba's and OpenMP's pools spin when oversubscribed.
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def launch(job):
        name, v, s = job
        begin = time.perf_counter()
        # The child gets the resolved configuration, not the names: what this process runs is what
        # gets trained.
        config = json.dumps({"setup": SETUPS[name], "overrides": VARIANTS.get(v, {})})
        proc = subprocess.run([sys.executable, "-m", "bench.evidence", "one", name, v, str(s), config, "--out",
                               str(out)], env=env, capture_output=True, text=True)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        print(f"{name} {v} seed {s}: {time.perf_counter() - begin:.0f}s {status}", flush=True)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(launch, todo))
    summarize(out)


def repolicy_one(path: Path, out: Path) -> None:
    """Recompute one DQT run's width policies and results table from its saved checkpoint with
    the current code (the checkpoint and its calibration split are fixed by the run's config)."""
    import torch

    from bench.common import machine
    from dqt_triton import DQTModel
    from dqt_triton.training import TrainConfig, calibrate, calibration_data, load_dataset, results_table

    torch.set_num_threads(1)
    r = json.loads(path.read_text())
    cfg = TrainConfig.from_saved(r["config"])
    ckpt = out / "checkpoints" / f"{r['setup']}-{r['variant']}-seed{r['seed']}" / "model.pt"
    model = DQTModel.load(ckpt)
    ds = load_dataset(cfg.data, cfg.data_dir, cfg.seed, cfg.limit)
    calibrate(model, cfg, *calibration_data(cfg, ds))  # what the trainer does after training
    model.save(ckpt)
    r.update(results_table(model, ds))
    r["policies_recomputed_at"] = machine()["commit"]
    path.write_text(json.dumps(r, indent=2) + "\n")


def repolicy(out: Path, jobs: int) -> None:
    """`repolicy_one` for every DQT run under OUT/runs, `jobs` processes at once, then summarize."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    runs = {p: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}
    # DQT runs not yet recomputed (an interrupted repolicy continues)
    paths = [p for p, r in runs.items() if r["variant"] in VARIANTS and not r["variant"].startswith("static")
             and "policies_recomputed_at" not in r]

    def launch(path):
        begin = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "bench.evidence", "repolicy-one", str(path), "--out", str(out)],
                              env=env, capture_output=True, text=True)
        status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
        print(f"{path.name}: policies {time.perf_counter() - begin:.0f}s {status}", flush=True)

    with ThreadPoolExecutor(max_workers=max(jobs, 1)) as pool:
        list(pool.map(launch, paths))
    summarize(out)


# ---------------------------------------------------------------------------------- summary

def mean_se(values) -> tuple:
    """Mean and standard error over seeds (None, None without values; SE 0 for one)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def _pct(mean, se=None, signed=False) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" +- {100 * se:.1f}" if se is not None else "")


def _hull(points, bitops):
    from dqt_triton.policy import hull_accuracy

    return hull_accuracy(points, bitops)


def collect(results: list) -> dict:
    """Per setup: widths (checkpoint and trained alone), float, and per budget and policy the
    per-seed accuracy, BitOPs / uniform 4, hull of the same seed's static widths at that cost,
    and the decile spread."""
    out: dict = {}
    for r in results:
        s = out.setdefault(r["setup"], {"seeds": set(), "checkpoint": {}, "alone": {}, "float": [], "budgets": {},
                                        "seconds": {}})
        s["seconds"].setdefault(r["variant"], []).append(r.get("seconds"))
        if r["variant"] == "float":
            s["float"].append(r["rows"][0]["accuracy"])
            continue
        statics = [row for row in r["rows"] if row["mode"].startswith("static")]
        if r["variant"].startswith("static"):
            for row in statics:
                s["alone"].setdefault(int(row["mode"].split()[1].split("-")[0]), []).append(row["accuracy"])
            continue
        if r["variant"] != "dqt":
            continue
        s["seeds"].add(r["seed"])
        unit = r["uniform4_bitops"]
        points = [(row["bitops"], row["accuracy"]) for row in statics]
        for row in statics:
            b = int(row["mode"].split()[1].split("-")[0])
            s["checkpoint"].setdefault(b, {"accuracy": [], "bitops": []})
            s["checkpoint"][b]["accuracy"].append(row["accuracy"])
            s["checkpoint"][b]["bitops"].append(row["bitops"] / unit)
        for row in r.get("budgets") or []:
            per = s["budgets"].setdefault(row["budget_bits"], {})
            if row.get("best_static") is not None and row.get("gain_over_static") is not None:
                g = per.setdefault("vs_static", {"gain": [], "se": [], "best_static": [], "widest": [], "uniform": [],
                                                 "family": [], "seed": []})
                fits = [st for st in statics if st["bitops"] <= row["budget_bitops"] * (1 + 1e-9)]
                widest = max(fits, key=lambda st: st["bitops"], default=None)
                best_uniform = max(fits, key=lambda st: st["accuracy"], default=None)
                g["gain"].append(row["gain_over_static"])
                g["se"].append(row["gain_se"])
                g["best_static"].append(row["best_static"]["accuracy"])
                g["widest"].append(None if widest is None else row["deployed"]["accuracy"] - widest["accuracy"])
                g["uniform"].append(None if best_uniform is None else row["deployed"]["accuracy"] - best_uniform["accuracy"])
                g["family"].append(row["deployed_family"])
                g["seed"].append(r["seed"])
            for p in POLICIES:
                got = row.get(p)
                if got is None:
                    continue
                e = per.setdefault(p, {"accuracy": [], "bitops": [], "hull": [], "spread": [], "seed": []})
                e["accuracy"].append(got["accuracy"])
                e["bitops"].append(got["bitops"] / unit)
                e["hull"].append(_hull(points, got["bitops"]))
                e["spread"].append(got.get("spread"))
                e["seed"].append(r["seed"])
    return out


def above_hull(per: dict, p: str) -> tuple:
    if p not in per:
        return None, None
    return mean_se([a - h for a, h in zip(per[p]["accuracy"], per[p]["hull"]) if h is not None])


def targets(name: str, s: dict) -> list:
    """(target, measured, verdict) of issue 40 for one setup: the deployed policy against the
    best static choice that fits each budget (mean over seeds, its SE, the worst seed), and the
    checkpoint against the widths trained alone."""
    rows = []
    low = []
    for b in sorted(s["budgets"]):
        g = s["budgets"][b].get("vs_static")
        if g is None:
            continue
        mean, se = mean_se(g["gain"])
        worst = min(g["gain"])
        measured = f"{_pct(mean, se, signed=True)} pp, worst seed {_pct(worst, signed=True)}"
        if b >= 3.0:
            rows.append((f"budget {b}: deployed - best affordable static >= -0.1 pp (mean)", measured,
                         "met" if mean >= -0.001 else "missed"))
        if b == DEPLOYMENT_BUDGET:
            rows.append((f"budget {b} (deployment): no seed below -0.5 pp", measured,
                         "met" if worst >= -0.005 else "missed"))
        if 2.0 < b < 3.0:
            low.append(mean)
            rows.append((f"budget {b}: deployed - best affordable static >= +1.5 pp (mean)", measured,
                         "met" if mean >= 0.015 else "missed"))
        rows.append((f"budget {b}: deployed never below best affordable static by more than 0.3 pp (mean)", measured,
                     "met" if mean >= -0.003 else "missed"))
    four = s["checkpoint"].get(4)
    cheap = [(mean_se(per["deployed"]["accuracy"])[0], mean_se(per["deployed"]["bitops"])[0], b)
             for b, per in s["budgets"].items() if "deployed" in per and mean_se(per["deployed"]["bitops"])[0] <= 0.6]
    if four and cheap:
        acc, cost, b = max(cheap)
        gap = acc - mean_se(four["accuracy"])[0]
        rows.append(("aim: static 4-bit's accuracy within 0.3 pp at <= 0.6x its BitOPs",
                     f"{_pct(gap, signed=True)} pp at {cost:.2f}x (budget {b})", "met" if gap >= -0.003 else "missed"))
    for b in sorted(s["alone"], reverse=True):
        if b not in s["checkpoint"]:
            continue
        nested, alone = mean_se(s["checkpoint"][b]["accuracy"]), mean_se(s["alone"][b])
        limit = 0.05 if b == 2 else 0.015
        rows.append((f"checkpoint at {b} bits within {100 * limit:.1f} pp of {b}-bit trained alone",
                     f"{_pct(nested[0])} vs {_pct(alone[0])} ({_pct(nested[0] - alone[0], signed=True)} pp)",
                     "met" if alone[0] - nested[0] <= limit else "missed"))
    if 4 in s["checkpoint"] and 2 in s["checkpoint"]:
        drop = mean_se(s["checkpoint"][4]["accuracy"])[0] - mean_se(s["checkpoint"][2]["accuracy"])[0]
        rows.append(("checkpoint loses >= 3 pp from 4 bits to 2 (headroom)", f"{_pct(drop)} pp",
                     "met" if drop >= 0.03 else "not this network"))
    return rows


def summarize(out: Path) -> dict:
    from bench.common import machine

    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    table = collect(results)
    info = machine()
    trained = sorted({str((r.get("config") or {}).get("commit", "")) for r in results} - {""})
    lines = [f"# Dynamic widths at the user's budget: the deployed policy against the best static choice, "
             f"{info['date'][:10]}", "",
             f"Machine: {info['cpu']} (each run on 1 thread), torch {info['torch']}, summarized at commit "
             f"{info['commit']}; policies recomputed at {sorted({str(r.get('policies_recomputed_at')) for r in results})}"
             f"{'; trained at ' + ', '.join(trained) if trained else ''}. Commands: `python -m bench.evidence run` "
             "(training; `--no-baselines` for DQT checkpoints only), `repolicy` (policies from the saved checkpoints "
             "with the current code), `summarize` (see the module docstring). Accuracy (%) of the integer-only "
             "eval on the test split, mean +- standard error over seeds; BitOPs relative to uniform 4-bit (governed "
             "layers at 4 bits, first and last layers at 8 in every row). Differences are paired by seed (the same "
             "checkpoint). Policies are fitted and chosen on the held-out 20% of the training set (5-fold "
             "cross-fitting); the best static choice is the best, on the test split, of the uniform widths and the "
             "calibrated per-layer allocation that fit the budget.", ""]
    summary: dict = {"machine": info, "command": "python -m bench.evidence run --jobs 2", "setups": {},
                     # every run's rows, so that the summary alone can be re-read (the per-run files stay out of git)
                     "runs": [{k: r.get(k) for k in ("setup", "variant", "seed", "seconds", "rows", "budgets",
                                                     "uniform4_bitops", "policies_recomputed_at")} for r in results]}
    for name in [n for n in SETUPS if n in table] + sorted(set(table) - set(SETUPS)):
        s = table[name]
        setup = SETUPS.get(name, {})
        lines += [f"## {name} ({', '.join(f'{k}={v}' for k, v in setup.items())}; seeds "
                  f"{', '.join(map(str, sorted(s['seeds'])))})", "",
                  "| width | trained alone | one DQT checkpoint | BitOPs / uniform 4 |", "|---|---:|---:|---:|"]
        for b in sorted(s["checkpoint"], reverse=True):
            c = s["checkpoint"][b]
            lines.append(f"| {b} | {_pct(*mean_se(s['alone'].get(b, [])))} | {_pct(*mean_se(c['accuracy']))} | "
                         f"{mean_se(c['bitops'])[0]:.2f} |")
        lines += ["", f"Float: {_pct(*mean_se(s['float']))}.", "",
                  "Deployed policy against the best static choice that fits each budget (the best of the uniform "
                  "widths and the calibrated allocation within the budget, on the test split), pp, paired by seed:", "",
                  "| budget (uniform b) | best affordable static | deployed - best static | worst seed | "
                  "deployed - best affordable uniform width | deployed - widest affordable width | deployed families |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        rows = []
        for b in sorted(s["budgets"]):
            g = s["budgets"][b].get("vs_static")
            if g is None:
                continue
            families = ", ".join(f"{f} {g['family'].count(f)}" for f in sorted(set(g["family"])))
            lines.append(f"| {b} | {_pct(*mean_se(g['best_static']))} | {_pct(*mean_se(g['gain']), signed=True)} | "
                         f"{_pct(min(g['gain']), signed=True)} | {_pct(*mean_se(g['uniform']), signed=True)} | "
                         f"{_pct(*mean_se(g['widest']), signed=True)} | {families} |")
        lines += ["", "Every policy (accuracy % @ BitOPs / uniform 4, mean over seeds), and the deployed policy "
                  "against the hull of the uniform widths at its own BitOPs (forgives unspent budget):", "",
                  "| budget (uniform b) | " + " | ".join(POLICY_NAMES[p] for p in POLICIES) +
                  " | deployed - hull at its BitOPs | controller - hull | deployed decile spread |",
                  "|---|" + "---:|" * (len(POLICIES) + 3)]
        for b in sorted(s["budgets"]):
            per = s["budgets"][b]
            cells = []
            for p in POLICIES:
                if p in per:
                    acc, cost = mean_se(per[p]["accuracy"]), mean_se(per[p]["bitops"])[0]
                    cells.append(f"{_pct(*acc)} @ {cost:.2f}")
                else:
                    cells.append("-")
            dh, ch = above_hull(per, "deployed"), above_hull(per, "controller")
            spread = mean_se(per.get("deployed", {}).get("spread", []))
            lines.append(f"| {b} | " + " | ".join(cells) + f" | {_pct(*dh, signed=True)} | {_pct(*ch, signed=True)} | "
                         f"{'n/a' if spread[0] is None else f'{spread[0]:.2f}x'} |")
            g = per.get("vs_static")
            rows.append({"budget_bits": b, **{p: {"accuracy": mean_se(per[p]["accuracy"]),
                                                  "bitops_vs_uniform4": mean_se(per[p]["bitops"])[0],
                                                  "above_hull": above_hull(per, p)} for p in per if p in POLICIES},
                         "deployed_minus_best_static": None if g is None else {
                             "mean_se": mean_se(g["gain"]), "worst": min(g["gain"]),
                             "per_seed": dict(zip(g["seed"], g["gain"])), "families": dict(zip(g["seed"], g["family"])),
                             "minus_best_uniform": mean_se(g["uniform"]), "minus_widest": mean_se(g["widest"])}})
        found = targets(name, s)
        secs = {v: mean_se(x)[0] for v, x in s["seconds"].items()}
        lines += ["", "Targets (measured; nothing here is asserted):", "", "| target | measured | verdict |",
                  "|---|---|---|", *[f"| {t} | {m} | {v} |" for t, m, v in found], "",
                  "Training time per run (s, mean, one thread): " +
                  ", ".join(f"{v} {x:.0f}" for v, x in sorted(secs.items()) if x), ""]
        summary["setups"][name] = {"setup": setup, "seeds": sorted(s["seeds"]), "budgets": rows, "targets": found,
                                   "checkpoint": {b: mean_se(c["accuracy"]) for b, c in s["checkpoint"].items()},
                                   "alone": {b: mean_se(v) for b, v in s["alone"].items()},
                                   "float": mean_se(s["float"])}
    (out / "summary.json").write_text(json.dumps(summary) + "\n")  # one line: every run's rows make it large
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(table, out / "accuracy_vs_bitops.png")
    print("\n".join(lines))
    return summary


def _plot(table: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    names = list(table)
    fig, axes = plt.subplots(1, len(names), figsize=(6.5 * len(names), 5), squeeze=False)
    styles = {"deployed": "*-", "allocation": "s--", "cascade": "v-.", "escalation": "P:", "cascade3": "d-.",
              "gated": "x--", "controller": "^:"}
    for ax, name in zip(axes[0], names):
        s = table[name]
        ck = sorted((mean_se(c["bitops"])[0], 100 * mean_se(c["accuracy"])[0], 100 * mean_se(c["accuracy"])[1])
                    for c in s["checkpoint"].values())
        if ck:
            ax.errorbar([p[0] for p in ck], [p[1] for p in ck], [p[2] for p in ck], fmt="o-", color="k",
                        label="one checkpoint, uniform widths (its hull)", capsize=2)
        alone = []
        for b, accs in s["alone"].items():
            if b in s["checkpoint"]:
                alone.append((mean_se(s["checkpoint"][b]["bitops"])[0], 100 * mean_se(accs)[0], 100 * mean_se(accs)[1]))
        if alone:
            alone.sort()
            ax.errorbar([p[0] for p in alone], [p[1] for p in alone], [p[2] for p in alone], fmt="x", color="gray",
                        markersize=8, label="each width trained alone", capsize=2)
        for p in POLICIES:
            pts = sorted((mean_se(per[p]["bitops"])[0], 100 * mean_se(per[p]["accuracy"])[0],
                          100 * mean_se(per[p]["accuracy"])[1]) for per in s["budgets"].values() if p in per)
            if pts:
                ax.errorbar([q[0] for q in pts], [q[1] for q in pts], [q[2] for q in pts], fmt=styles[p],
                            label=POLICY_NAMES[p], markersize=9 if p == "deployed" else 5, capsize=2)
        f_acc = mean_se(s["float"])[0]
        if f_acc is not None:
            ax.axhline(100 * f_acc, color="gray", linestyle="--", label="float")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("BitOPs per sample / uniform 4-bit (first and last layers at 8 bits)")
        ax.set_ylabel("top-1 accuracy, integer eval (%), mean +- SE")
        ax.set_title(name)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "summarize", "repolicy", "one", "repolicy-one"],
                        help="repolicy: recompute the DQT runs' width policies from their checkpoints (current code)")
    parser.add_argument("args", nargs="*", help="for `one`: SETUP VARIANT SEED CONFIG_JSON; `repolicy-one`: RUN_JSON")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--variants", nargs="+", default=["dqt"], choices=[v for v in VARIANTS if
                                                                          not v.startswith("static")],
                        help="DQT variants besides float and the widths trained alone")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--no-baselines", action="store_true",
                        help="DQT checkpoints only: no float model, no widths trained alone (the policy evidence)")
    parser.add_argument("--jobs", type=int, default=2, help="training processes at once (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/evidence"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.setups, args.seeds, args.variants, args.out, args.jobs, not args.no_baselines)
    elif args.command == "one":
        name, variant, seed, config = args.args
        config = json.loads(config)
        for key in ("candidate_bits", "policy_budgets"):  # JSON lists back to TrainConfig's tuples
            if key in config["setup"]:
                config["setup"][key] = tuple(config["setup"][key])
        run_one(name, variant, int(seed), args.out, config["setup"], config["overrides"])
    elif args.command == "repolicy":
        repolicy(args.out, args.jobs)
    elif args.command == "repolicy-one":
        repolicy_one(Path(args.args[0]), args.out)
    else:
        summarize(args.out)


if __name__ == "__main__":
    main()
