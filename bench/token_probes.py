"""Probes of a trained checkpoint with widths per token, no retraining: how its accuracy and
BitOPs move with the budget code (`budget_curve`), how each governed layer alone at another width
moves the metric (`layer_widths`: which layers could pay for others), and how fixed per-token
rules do on the same network (`fixed_rules`: digits only, blank patches against inked ones,
least ink, random tokens), and for a next-token model how well anything could tell which
tokens a width moves (`token_harm`: an oracle, a predictor that sees the model's output, random).

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


def forced_outputs(model, ds, widths, batch_size: int = 256):
    """Logits and BitOPs per sample (float64, the controller counted) of the test split at
    `widths` [N, (T,) governed]: the integer eval program, what deploys
    (`DQTModel(x, widths)` in eval mode), not the training path, whose float norms differ from it."""
    import torch

    logits, bitops = [], []
    with torch.no_grad():
        for x, w in zip(ds.x_test.split(batch_size), widths.split(batch_size)):
            logits.append(model(x, w))
            bitops.append(model.last_bitops)
    return torch.cat(logits), torch.cat(bitops).double()


def forced_metric(model, ds, widths, batch_size: int = 256) -> dict:
    """Test metric (accuracy, or perplexity for next-token targets) and BitOPs / uniform 4 without
    the controller, with the test split run at `widths` (`forced_outputs`)."""
    import torch
    import torch.nn.functional as F

    logits, bitops = forced_outputs(model, ds, widths, batch_size)
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


def _cheapest_within(loss, cost):
    """Per token, the choice minimising loss + lam * cost, with lam the smallest that keeps the
    summed cost at or below zero (bisection): the best allocation that `loss` can tell."""
    lo, hi = 0.0, 1e4
    for _ in range(80):
        lam = (lo + hi) / 2
        if float(cost[(loss + lam * cost).argmin(-1)].sum()) > 0:
            lo = lam
        else:
            hi = lam
    return (loss + hi * cost).argmin(-1)


def token_harm(run: Path, low: int = 3, high: int = 5, base: int = 4, ridge: float = 0.1) -> dict:
    """Can a controller tell which tokens a width moves? For a next-token model: the governed
    layers after the last attention step (whose width for token t changes token t's prediction
    alone) at `low`, `base` and `high` bits for every token, the rest at `base`; then three
    allocations of those layers' widths at or below the BitOPs of `base`:

    - *oracle*: each token's width chosen knowing its loss at every width (an upper bound no
      controller reaches: it picks the lucky draws of the quantization noise);
    - *predicted*: a ridge regression fitted on the first half of the test windows predicts each
      token's loss change at `low` and `high` from the `base` model's own output distribution,
      its entropy and the current token (more than the controller sees: it reads the layers'
      input, not the output), allocated on the second half;
    - *random*: the predicted allocation's counts of each width on random tokens.
    """
    import torch
    import torch.nn.functional as F

    model, _, ds = load_run(run)
    if ds.y_test.dim() < 2:
        raise ValueError(f"token_harm needs next-token targets; {run} is a classifier")
    missing = [b for b in (low, base, high) if b not in model.candidate_bits]
    if missing:
        raise ValueError(f"token_harm: widths {missing} are not candidates of {run} ({model.candidate_bits})")
    attention = [i for i, s in enumerate(model.steps) if s.kind == "attention"]
    if not attention:
        raise ValueError(f"token_harm: {run} has no attention step, so no layer is local to one token")
    model.set_dynamic(True)
    last_attention = attention[-1]
    after = {s.name for s in model.steps[last_attention + 1:] if s.kind == "layer"}
    local = [i for i, name in enumerate(model.governed) if name in after]
    n, tokens, governed = len(ds.x_test), model.controller.tokens, len(model.governed)
    nll, bitops = {}, {}
    for bits in (low, base, high):
        widths = torch.full((n, tokens, governed), base)
        widths[:, :, local] = bits
        logits, per_sample = forced_outputs(model, ds, widths)  # logits [N, vocab, T]
        nll[bits] = F.cross_entropy(logits, ds.y_test, reduction="none")
        bitops[bits] = float(per_sample.mean())
        if bits == base:
            probs = logits.float().softmax(1).transpose(1, 2)  # [N, T, vocab]
    unit = model.uniform_bitops(4)
    cost = torch.tensor([(bitops[b] - bitops[base]) / unit / tokens for b in (low, base, high)])
    loss = torch.stack([nll[b] for b in (low, base, high)], -1)  # [N, T, 3]

    def perplexity(pick, part=slice(None)):
        return float(torch.exp(loss[part].gather(-1, pick[..., None]).mean()))

    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1, keepdim=True)
    current = F.one_hot(ds.x_test.long(), probs.shape[-1]).float()
    features = torch.cat([probs, entropy, current, torch.ones_like(entropy)], -1)
    change = torch.stack([loss[..., 0] - loss[..., 1], loss[..., 2] - loss[..., 1]], -1)
    half, held = n // 2, slice(n // 2, None)
    fit_x, fit_y = features[:half].flatten(0, 1), change[:half].flatten(0, 1)
    weights = torch.linalg.solve(fit_x.T @ fit_x + ridge * torch.eye(fit_x.shape[1]), fit_x.T @ fit_y)
    guess = features[held] @ weights
    predicted = _cheapest_within(torch.stack([guess[..., 0], torch.zeros_like(guess[..., 0]), guess[..., 1]], -1), cost)
    shuffled = predicted.flatten()[torch.randperm(predicted.numel(), generator=torch.Generator().manual_seed(0))]
    oracle = _cheapest_within(loss, cost)

    def correlation(k):
        return float(torch.corrcoef(torch.stack([guess[..., k].flatten(), change[held][..., k].flatten()]))[0, 1])

    def shares(pick):
        return {str(b): float((pick == i).float().mean()) for i, b in enumerate((low, base, high))}

    return {"layers": [model.governed[i] for i in local], "widths": [low, base, high],
            "perplexity": {str(b): float(torch.exp(nll[b].mean())) for b in (low, base, high)},
            "bitops_vs_uniform4": {str(b): bitops[b] / unit for b in (low, base, high)},
            "oracle": {"perplexity": perplexity(oracle), "shares": shares(oracle)},
            "held_out": {"windows": n - half, "base_perplexity": float(torch.exp(nll[base][held].mean())),
                         "predicted": {"perplexity": perplexity(predicted, held), "shares": shares(predicted),
                                       "correlation_low": correlation(0), "correlation_high": correlation(1)},
                         "random": {"perplexity": perplexity(shuffled.view_as(predicted), held)}}}


def fixed_rules(run: Path) -> list[dict]:
    """Test accuracy (the integer eval program, `forced_metric`) with each
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
        harm = None
        if "perplexity" in layers[0]:
            above = [b for b in sorted({r["bits"] for r in layers[1:]}) if b > layers[0]["bits"]]
            harm = data[str(run)]["token_harm"] = token_harm(run, high=above[0]) if above else None
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
        if harm:
            low, base, high = (str(b) for b in harm["widths"])
            lines += ["", f"| {', '.join(harm['layers'])} (after the last attention) at | test perplexity | BitOPs |",
                      "|---|---:|---:|"]
            lines += [f"| {b} bits, every token | {harm['perplexity'][b]:.3f} | {harm['bitops_vs_uniform4'][b]:.3f}x |"
                      for b in (low, base, high)]
            held = harm["held_out"]
            lines += ["", f"| their widths per token, at most the BitOPs of {base} bits | perplexity | "
                      f"tokens at {low} / {base} / {high} |", "|---|---:|---:|"]
            lines += [f"| {name} | {r['perplexity']:.3f} | {' / '.join(f'{100 * v:.0f}%' for v in r['shares'].values())} |"
                      for name, r in (("oracle (knows each token's loss; all windows)", harm["oracle"]),
                                      (f"predicted (held-out {held['windows']} windows)", held["predicted"]))]
            lines += [f"| random, the predicted counts (held out) | {held['random']['perplexity']:.3f} | |",
                      f"| {base} bits, every token (held out) | {held['base_perplexity']:.3f} | |", "",
                      f"Predicted against measured loss change per token: correlation "
                      f"{held['predicted']['correlation_low']:.3f} at {low} bits, "
                      f"{held['predicted']['correlation_high']:.3f} at {high} bits."]
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
