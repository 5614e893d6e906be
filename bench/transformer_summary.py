"""Summarise bench/transformer_trials.sh: mean and standard deviation over seeds of each width of
the one DQT checkpoint, of the same architecture trained alone at that width, and of the
per-token controller, with BitOPs relative to uniform 4 bits, the per-token width histogram, and
whether the controller's choice of tokens matters (its widths shuffled among each sample's
tokens, `shuffled_widths`).

Usage: python -m bench.transformer_summary TRIALS_DIR [--json ROWS.json] [--calibrated-widths]
(--json writes every run's rows and the options that differ between runs; --calibrated-widths
adds each checkpoint's controller as `--controller-widths calibrated` deploys it)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench.common import load_run


def _rows(path: Path) -> dict:
    return {r["mode"]: r for r in json.loads(path.read_text())["rows"]}


def summarise(trials: Path) -> str:
    seeds = sorted(int(p.name.split("-s")[1]) for p in trials.glob("token-s*") if (p / "results.json").exists())
    if not seeds:
        raise SystemExit(f"no finished token-s* runs under {trials}")
    token = {s: _rows(trials / f"token-s{s}" / "results.json") for s in seeds}
    metric = "perplexity" if "perplexity" in token[seeds[0]]["static 8-bit"] else "accuracy"
    unit = 1.0 if metric == "perplexity" else 100.0

    def stat(values: list) -> str:
        if not values:
            return "n/a"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{unit * statistics.mean(values):.{2 if unit == 1 else 1}f} ± {unit * spread:.{2 if unit == 1 else 1}f}"

    lines = [f"seeds {seeds}; {metric}{' %' if unit == 100 else ''} (mean ± standard deviation over seeds)", "",
             "| width | one checkpoint | trained alone | difference | BitOPs vs uniform 4 |", "|---|---:|---:|---:|---:|"]
    for bits in (b for b in (8, 7, 6, 5, 4, 3, 2) if f"static {b}-bit" in token[seeds[0]]):
        mode = f"static {bits}-bit"
        ours = [token[s][mode][metric] for s in seeds]
        alone = [_rows(p)[mode][metric] for s in seeds
                 if (p := trials / f"static{bits}-s{s}" / "results.json").exists()]
        diff = stat([a - b for a, b in zip(ours, alone)]) if len(alone) == len(ours) else "n/a"
        if metric == "perplexity" and len(alone) == len(ours):  # and relative to the model alone
            rel = [100 * (a / b - 1) for a, b in zip(ours, alone)]
            diff += f" ({statistics.mean(rel):+.1f}% ± {statistics.stdev(rel) if len(rel) > 1 else 0.0:.1f}%)"
        lines.append(f"| {bits} | {stat(ours)} | {stat(alone)} | {diff} | "
                     f"{token[seeds[0]][mode]['bitops_vs_uniform4']:.2f} |")
    ctrl = [token[s]["controller"] for s in seeds]
    saved = json.loads((trials / f"token-s{seeds[0]}" / "results.json").read_text())["config"]
    what = ("one width per token" if saved.get("controller_granularity") == "token-shared"
            else "a width per governed layer and token")
    lines += ["", f"controller ({what}): {metric} {stat([c[metric] for c in ctrl])} at "
              f"{statistics.mean(c['bitops_vs_uniform4'] for c in ctrl):.2f}x uniform-4 BitOPs; static 4 of the same "
              f"checkpoints {stat([token[s]['static 4-bit'][metric] for s in seeds])}; controller - static 4: "
              f"{stat([token[s]['controller'][metric] - token[s]['static 4-bit'][metric] for s in seeds])}",
              "per-token width histogram (governed layers x tokens, mean over seeds): " +
              " ".join(f"{b}:{statistics.mean(c['histogram'].get(str(b), 0.0) for c in ctrl):.2f}" for b in (2, 3, 4, 5, 6, 7, 8))]
    return "\n".join(lines)


def shuffled_widths(model_path: Path, seeds: int = 5) -> tuple[float, dict, str]:
    """The per-token controller's test metric on the integer eval program (what deploys) against the same widths moved among each sample's tokens (the same
    widths and BitOPs per sample): "tokens" moves each token's whole width profile (its widths at
    every layer) to another token, which tests whether the controller knows which tokens need
    bits; "layers" draws a new permutation per layer, which also breaks up each token's profile.
    Returns (controller, {"tokens": [metric per draw], "layers": [...]}, metric name)."""
    import torch
    import torch.nn.functional as F

    model, _, ds = load_run(model_path.parent)
    model.set_dynamic(True)
    governed = [model.layer_names.index(n) for n in model.governed]
    shuffle = {"generator": None, "per_layer": False}

    def moved(x):
        with torch.no_grad():
            model(x)
        widths = model.last_bits[..., governed, 0]  # [B, T, governed]: the controller's choice
        if shuffle["generator"] is None:
            return widths
        B, T, L = widths.shape
        keys = torch.rand(B, T, L if shuffle["per_layer"] else 1, generator=shuffle["generator"])
        return widths.gather(1, keys.argsort(1).expand(B, T, L))  # a permutation of the T tokens per sample (and layer)

    def metric() -> float:
        out = torch.cat([model(x, moved(x)) for x in ds.x_test.split(256)])
        if ds.y_test.dim() > 1:
            return float(torch.exp(F.cross_entropy(out, ds.y_test)))
        return float((out.argmax(1) == ds.y_test).float().mean())

    ctrl, draws = metric(), {"tokens": [], "layers": []}
    for kind in draws:
        shuffle["per_layer"] = kind == "layers"
        for i in range(seeds):
            shuffle["generator"] = torch.Generator().manual_seed(i)
            draws[kind].append(metric())
    return ctrl, draws, "perplexity" if ds.y_test.dim() > 1 else "accuracy"


def token_widths(model_path: Path) -> str:
    """Which tokens get bits: the controller's mean width per token position on the test split
    (digits: a 4 x 4 grid of 2 x 2 patches; MNIST-1D: 10 tokens of 4 samples), for the tokens
    whose mean |input| is above their sample's median against the others, and on digits for
    blank patches (no ink) against the others."""
    import torch

    model, cfg, ds = load_run(model_path.parent)
    model.set_dynamic(True)
    with torch.no_grad():
        model(ds.x_test)
    governed = [model.layer_names.index(n) for n in model.governed]
    widths = model.last_bits[..., governed, 0].float().mean(-1)  # [N, T]: each token's mean over governed layers
    n, grid = len(ds.x_test), (4, 4) if cfg.data == "digits" else (1, widths.shape[1])
    image = ds.x_test[:, 0].float()
    ph, pw = image.shape[1] // grid[0], image.shape[2] // grid[1]
    patches = image.unfold(1, ph, ph).unfold(2, pw, pw).reshape(n, grid[0] * grid[1], ph * pw)
    energy = patches.abs().mean(-1)
    strong = energy > energy.median(1, keepdim=True).values
    rows = [" ".join(f"{v:.2f}" for v in row.tolist()) for row in widths.mean(0).view(*grid)]
    text = (f"mean width per token position ({grid[0]} x {grid[1]}):\n  " + "\n  ".join(rows) +
            f"\ntokens above their sample's median |input| ({float(strong.float().mean()):.0%}): "
            f"{float(widths[strong].mean()):.2f} bits; the others: {float(widths[~strong].mean()):.2f} bits")
    if cfg.data == "digits":
        blank = patches.amax(-1) == 0
        text += (f"\nblank patches ({float(blank.float().mean()):.0%} of tokens): {float(widths[blank].mean()):.2f} "
                 f"bits; patches with ink: {float(widths[~blank].mean()):.2f} bits")
    return text


def character_widths(model_path: Path) -> str:
    """Which characters get bits on the pydoc corpus: the controller's mean width (over governed
    layers) on the test split by the character each token reads (its class, and the characters
    of at least 1% of tokens with the fewest and the most bits), and for the tokens whose next
    character the model predicts worse than the median token (cross-entropy) against the others."""
    import torch
    import torch.nn.functional as F

    model, _, ds = load_run(model_path.parent)
    model.set_dynamic(True)
    governed = [model.layer_names.index(n) for n in model.governed]
    widths, losses = [], []
    with torch.no_grad():
        for x, y in zip(ds.x_test.split(256), ds.y_test.split(256)):
            losses.append(F.cross_entropy(model(x), y, reduction="none"))  # [B, T]
            widths.append(model.last_bits[..., governed, 0].float().mean(-1))
    widths, losses, chars = torch.cat(widths), torch.cat(losses), ds.x_test.long()
    name = {0: "newline", 1: "space"}
    text = lambda c: name.get(c, repr(chr(c + 31)))  # noqa: E731 (pydoc_ids: printable ASCII 32..126 as 1..95)
    printable = chars + 31
    classes = {"letters": ((printable >= 65) & (printable <= 90)) | ((printable >= 97) & (printable <= 122)),
               "digits": (printable >= 48) & (printable <= 57), "space": chars == 1, "newline": chars == 0}
    classes["punctuation"] = ~torch.stack(list(classes.values())).any(0)
    parts = [f"{k} {float(m.float().mean()):.1%}: {float(widths[m].mean()):.2f}" for k, m in classes.items() if m.any()]
    ids, counts = chars.flatten().unique(return_counts=True)
    frequent = [(float(widths[chars == c].mean()), text(int(c))) for c, n in zip(ids, counts) if n >= 0.01 * chars.numel()]
    frequent.sort()
    hard = losses > losses.median()
    return ("mean width by the character a token reads (share of tokens: bits): " + "; ".join(parts) +
            "\nfewest bits: " + ", ".join(f"{c} {w:.2f}" for w, c in frequent[:6]) +
            "\nmost bits: " + ", ".join(f"{c} {w:.2f}" for w, c in frequent[::-1][:6]) +
            f"\ntokens whose next character is harder than the median token's (cross-entropy): "
            f"{float(widths[hard].mean()):.2f} bits; the others: {float(widths[~hard].mean()):.2f} bits")


def calibrated_widths(trials: Path) -> str:
    """Each token-s* checkpoint as `dqt train --controller-widths calibrated` would deploy it:
    `calibration.calibrate_widths` on the run's own calibration split within uniform-4 BitOPs
    (`--budget`), then the test split in integers; against static 4 of the same checkpoint."""
    import torch

    from dqt_triton.calibration import calibrate_widths
    from dqt_triton.training import calibration_data, evaluate

    lines, diffs = ["controller with calibrated widths (`--controller-widths calibrated`), test split:"], []
    for results in sorted(trials.glob("token-s*/results.json")):
        model, cfg, ds = load_run(results.parent)
        unit = model.uniform_bitops(4)
        widths, code = calibrate_widths(model, *calibration_data(cfg, ds), model.uniform_bitops(cfg.budget_bits))
        model.set_dynamic(True)
        with torch.no_grad():
            row = evaluate(model, ds.x_test, ds.y_test)
        metric = "perplexity" if "perplexity" in row else "accuracy"
        unit_m = 1.0 if metric == "perplexity" else 100.0
        static4 = _rows(results)["static 4-bit"][metric]
        diffs.append(unit_m * (row[metric] - static4))
        hist = " ".join(f"{b}:{p:.2f}" for b, p in row["histogram"].items() if p > 0)
        lines.append(f"  {results.parent.name}: widths {list(widths)}, code {code}: {metric} {unit_m * row[metric]:.2f} "
                     f"at {row['bitops'] / unit:.3f}x uniform-4 BitOPs; static 4 {unit_m * static4:.2f}; "
                     f"difference {diffs[-1]:+.2f}; histogram {hist}")
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    lines.append(f"  controller - static 4: {statistics.mean(diffs):+.2f} ± {spread:.2f} over {len(diffs)} seeds")
    return "\n".join(lines)


def collect(trials: Path) -> dict:
    """Every run's result rows by mode (metric, BitOPs, histogram, the controller's allowed widths) with
    the options that differ between runs (widths, imitation targets, schedule, controller)."""
    keep = ("accuracy", "perplexity", "bitops", "bitops_vs_uniform4", "histogram", "allowed_bits")
    runs = {}
    for path in sorted(trials.glob("*/results.json")):
        saved = json.loads(path.read_text())
        runs[path.parent.name] = {
            "options": {k: saved["config"].get(k) for k in ("candidate_bits", "token_costs", "warmup_epochs", "epochs",
                                                            "static_schedule", "limit", "controller_granularity",
                                                            "controller_hidden", "controller_widths")},
            **{r["mode"]: {k: r[k] for k in keep if k in r} for r in saved["rows"]}}
    return runs


def shuffle_table(trials: Path) -> str:
    """`shuffled_widths` for every checkpoint with a per-token controller under `trials`."""
    lines = ["controller against its widths moved among each sample's tokens, whole profiles ('tokens') or per layer "
             "('layers'); integer eval, mean (range) of 5 draws:"]
    for results in sorted(trials.glob("*/results.json")):
        path = results.parent / "model.pt"
        if "controller" not in _rows(results):
            continue  # a model trained alone
        ctrl, draws, metric = shuffled_widths(path)
        unit = 1.0 if metric == "perplexity" else 100.0
        moved = ", ".join(f"{kind} moved {unit * statistics.mean(d):.2f} ({unit * min(d):.2f}-{unit * max(d):.2f})"
                          for kind, d in draws.items())
        lines.append(f"  {path.parent.name}: controller {unit * ctrl:.2f}; {moved} {metric}")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(collect(Path(sys.argv[1])), indent=1) + "\n")
    print(summarise(Path(sys.argv[1])))
    if "--calibrated-widths" in sys.argv:
        print()
        print(calibrated_widths(Path(sys.argv[1])))
    print()
    print(shuffle_table(Path(sys.argv[1])))
    model = Path(sys.argv[1]) / "token-s0" / "model.pt"
    data = json.loads((model.parent / "results.json").read_text())["config"]["data"]
    print()
    print(character_widths(model) if data == "pydoc" else token_widths(model))
