"""End-to-end latency and throughput of frozen integer ResNets, and training step time, next to
the baselines users run today.

    python -m bench.latency [--device cpu|cuda] [--nets resnet18 resnet50] [--out bench/results]

Inference, batch 1 and a large batch: DQT's frozen integer program at uniform 8/4/2 bits and
in dynamic mode; torch float32 eager (CPU) or bf16 channels_last eager (GPU); torch.ao int8
(x86/fbgemm, CPU only); and a dequantize-requantize dynamic baseline that runs the same
controller in floating point (`bench.baselines.DequantRequantDynamic`). Training: one optimizer
step of DQT (static 8-bit, dynamic, dynamic with the consistency term) against float and
torch.ao fake-quant QAT steps on the same network. Also times a width switch of every weight.

The networks are untrained (latency does not depend on the weights); activation ranges are
calibrated on random images, and the controller's last layer is randomised so that dynamic mode
mixes widths across samples and layers, the case the dynamic rows are meant to measure. Writes
latency-<date>[-<device>].json / .md / .png with machine, date and commit; measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

import dqt_triton as dq
from bench.baselines import DequantRequantDynamic, torch_ao_fake_quant_qat, torch_ao_int8
from bench.common import machine
from dqt_triton import bitops, models
from dqt_triton.quant import GATE_GRADIENTS
from dqt_triton.training import TrainConfig

log = logging.getLogger("bench.latency")
RECIPE_ROW = "DQT dynamic step, dqt train recipe"
CHEAP_ROW = "DQT dynamic step, dqt train recipe with --consistency-share 0.25"
EARLIER_ROW = "DQT dynamic step, earlier recipe (--gate-gradients all --consistency-share 1)"

NETS = {
    "resnet18": ("ResNet-18 (CIFAR, 32x32)", lambda: models.resnet18_cifar(10, 3, 64), (3, 32, 32)),
    "resnet50": ("ResNet-50 (ImageNet, 224x224)", lambda: models.resnet50(1000, 3, 64), (3, 224, 224)),
}
BATCHES = {"cpu": {"resnet18": (1, 32), "resnet50": (1, 8)}, "cuda": {"resnet18": (1, 256), "resnet50": (1, 256)}}
# CPU: `dqt train`'s batch (TrainConfig.batch_size), so the step is the one the default settings run.
TRAIN = {"cpu": ("resnet18", TrainConfig.batch_size), "cuda": ("resnet18", 256)}
SECONDS_PER_ROW = 3.0


def measure(cases: dict, device: str, max_repeats: int, budget_s: float) -> dict:
    """Median seconds per call of every case. Two warm-up calls each, then rounds that call every
    case once (3..max_repeats rounds, as many as fit `budget_s`): interleaving keeps the ratios
    fair on a machine whose speed drifts while it runs."""

    def once(fn) -> float:
        return bitops.timed_call(fn, device)

    round_s = 0.0
    for fn in cases.values():
        once(fn)
        round_s += once(fn)
    rounds = max(3, min(max_repeats, int(budget_s / max(round_s, 1e-6))))
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(once(fn))
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def images(batch: int, shape, seed: int) -> torch.Tensor:
    """uint8 images whose coarse layout differs per sample (a random 4x4 pattern, upsampled, plus
    noise), so the controller, which sees a pooled input, chooses differently per sample."""
    gen = torch.Generator().manual_seed(seed)
    C, H, W = shape
    coarse = torch.randint(0, 256, (batch, C, 4, 4), generator=gen).float()
    base = F.interpolate(coarse, size=(H, W), mode="nearest")
    noise = torch.randint(-32, 33, (batch, C, H, W), generator=gen).float()
    return (base + noise).clamp(0, 255).to(torch.uint8)


def prepare(key: str, device: str, seed: int = 0) -> dict:
    """The float network, its DQTModel (calibrated, mixed-width controller) and frozen programs."""
    title, factory, shape = NETS[key]
    torch.manual_seed(seed)
    net = factory().eval()
    model = dq.DQTModel.from_float(net, shape, dynamic=True)
    model.set_dynamic(True).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(3):  # activation ranges (controller's included) from random images, EMA calibration
            model(images(2, shape, seed + 100 + i))
        fc2 = model.controller.fc2
        fc2.weight.copy_(torch.randn(fc2.weight.shape, generator=gen) * torch.exp(fc2.log_weight_step) * 40)
    model.eval().to(device)
    frozen = {}
    for bits in (8, 4, 2):
        frozen[f"uniform {bits}-bit"] = model.set_dynamic(False).set_bits(bits).freeze()
    frozen["dynamic"] = model.set_dynamic(True).freeze()
    return {"title": title, "shape": shape, "net": net, "model": model, "frozen": frozen}


def inference_rows(key: str, device: str, max_repeats: int) -> tuple[list[dict], dict]:
    p = prepare(key, device)
    model, net, shape = p["model"], p["net"], p["shape"]
    uniform8 = bitops.static_bitops(model, 8)
    float_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    float_net = net.to(device=device, dtype=float_dtype)
    if device == "cuda":
        float_net = float_net.to(memory_format=torch.channels_last)
    ao_model = None
    if device == "cpu":
        calibration = [images(4, shape, 1).float() * float(model.input_step)]
        try:
            ao_model = torch_ao_int8(net, shape, calibration)
        except Exception as exc:  # torch.ao missing or deprecated away: report, keep going
            log.warning("torch.ao int8 unavailable: %s", exc)
    dr = DequantRequantDynamic(model)
    rows = []
    for batch in BATCHES[device][key]:
        codes = images(batch, shape, batch).to(device)
        real = codes.float() * float(model.input_step)
        real_float = real.to(float_dtype)
        if device == "cuda":
            real_float = real_float.contiguous(memory_format=torch.channels_last)
        cases = {}
        for mode, fm in p["frozen"].items():
            cases[f"DQT frozen integer, {mode}"] = (lambda fm=fm: fm(codes), fm)
        float_name = "torch bf16 channels_last eager" if device == "cuda" else "torch float32 eager"
        cases[float_name] = (lambda: float_net(real_float), None)
        if ao_model is not None:
            cases[f"torch.ao int8 ({torch.backends.quantized.engine})"] = (lambda: ao_model(real), None)
        cases["dequant-requant dynamic (float, same controller)"] = (lambda: dr(codes), dr)
        with torch.no_grad():
            seconds = measure({impl: fn for impl, (fn, _) in cases.items()}, device, max_repeats,
                              SECONDS_PER_ROW * len(cases))
        base = seconds[float_name] * 1e3
        for impl, (fn, owner) in cases.items():
            row = {"net": p["title"], "batch": batch, "impl": impl, "ms": seconds[impl] * 1e3,
                   "images_per_s": batch / seconds[impl]}
            if owner is not None and getattr(owner, "last_bits", None) is not None:
                bits = owner.last_bits.float()
                bits = bits[..., 0] if bits.dim() == 3 else bits
                row["mean_bits"] = float(bits.mean())
                row["distinct_bits_per_layer"] = float(
                    sum(len(torch.unique(bits[:, i])) for i in range(bits.shape[1])) / bits.shape[1])
                if getattr(owner, "last_bitops", None) is not None:
                    row["gbitops_per_sample"] = float(owner.last_bitops.double().mean()) / 1e9
            elif impl.startswith("torch.ao"):
                row["gbitops_per_sample"] = uniform8 / 1e9
            rows.append(row)
            log.info("%s batch %d %-52s %10.2f ms %9.1f img/s", key, batch, impl, row["ms"], row["images_per_s"])
        for row in rows:
            if row["batch"] == batch and row["net"] == p["title"] and base:
                row["vs_float"] = base / row["ms"]
    switch = bitops.time_width_switch(model, device)
    rows_switch = {"net": p["title"], **switch}
    return rows, rows_switch


def training_rows(device: str, max_repeats: int) -> list[dict]:
    key, batch = TRAIN[device]
    title, factory, shape = NETS[key]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (batch, *shape), generator=gen, dtype=torch.uint8).to(device)
    target = torch.randint(0, 10, (batch,), generator=gen).to(device)
    real = codes.float() / 255.0

    # Every step: SGD with momentum and gradient clipping at norm 1 (the `dqt train` recipe clips).
    def float_step(module):
        opt = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(module(real), target).backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
        return step

    def dqt_step(model, target_bitops=None, **loss_kw):
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        loss_gen = torch.Generator().manual_seed(0)

        def step():
            opt.zero_grad(set_to_none=True)
            if model.dynamic:
                out = model.dqt_loss(codes, target, target_bitops=target_bitops, generator=loss_gen, **loss_kw)
                out.loss.backward()
            else:
                F.cross_entropy(model(codes), target).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        return step

    cases = {"torch float32 step": lambda: float_step(factory().to(device).train())}
    if device == "cpu":
        cases["torch.ao fake-quant QAT step (8-bit)"] = lambda: float_step(
            torch_ao_fake_quant_qat(factory(), shape).to(device).train())

    def dqt(dynamic, gate_gradients=None, **kw):
        def build():
            model = dq.DQTModel.from_float(factory(), shape, dynamic=dynamic, input_scale=1 / 255).to(device).train()
            if not dynamic:
                model.set_bits(8)
            kw2 = dict(kw)
            if dynamic:
                kw2.setdefault("target_bitops", model.uniform_bitops(4))
                kw2["gate_gradients"] = gate_gradients or recipe.gate_gradients
            return dqt_step(model, **kw2)
        return build

    # The `dqt train` recipe, from TrainConfig's defaults: dynamic path, sandwich (8-bit, 2-bit and
    # `sampled_widths` random widths, distilled) on `consistency_share` of the batch, and the
    # controller's imitation term: from the sandwich's own losses, or (`imitation_source="holdout"`)
    # judging every width on `imitation_samples` held-out samples, as the trainer passes them.
    recipe = TrainConfig()
    held = (codes[:recipe.imitation_samples].clone(), target[:recipe.imitation_samples].clone())
    train_kw = dict(alpha=recipe.alpha, beta=recipe.beta, sampled_widths=recipe.sampled_widths,
                    imitation_source=recipe.imitation_source, consistency_share=recipe.consistency_share)
    if recipe.imitation_source == "holdout":
        train_kw["imitation_data"] = held
    holdout_kw = {**train_kw, "imitation_source": "holdout", "imitation_data": held}
    cases["DQT static 8-bit QAT step"] = dqt(False)
    cases["DQT dynamic step (alpha 0: no consistency sandwich, held-out imitation)"] = dqt(
        True, **{**holdout_kw, "alpha": 0.0})
    cases[RECIPE_ROW] = dqt(True, **train_kw)
    for other in GATE_GRADIENTS:
        if other != recipe.gate_gradients:
            cases[f"DQT dynamic step, dqt train recipe with --gate-gradients {other}"] = dqt(True, other, **train_kw)
    if recipe.imitation_source != "holdout":
        cases["DQT dynamic step, dqt train recipe with --imitation-source holdout"] = dqt(True, **holdout_kw)
    # Cheaper still: the sandwich on a quarter of the batch. And the recipe before the defaults
    # changed (2026-11-23): every gate gradient, the sandwich on the whole batch.
    cases[CHEAP_ROW] = dqt(True, **{**train_kw, "consistency_share": 0.25})
    cases[EARLIER_ROW] = dqt(True, "all", **{**train_kw, "consistency_share": 1.0})
    cases["DQT dynamic step, every width every step"] = dqt(True, "all", **{**train_kw, "sampled_widths": -1,
                                                                          "consistency_share": 1.0})
    steps = {}
    for impl, build in cases.items():
        try:
            steps[impl] = build()
        except Exception as exc:  # torch.ao QAT missing: report and go on
            log.warning("%s unavailable: %s", impl, exc)
    seconds = measure(steps, device, max_repeats, 2 * SECONDS_PER_ROW * len(steps))
    rows = []
    for impl in steps:
        rows.append({"net": title, "batch": batch, "impl": impl, "ms": seconds[impl] * 1e3,
                     "images_per_s": batch / seconds[impl]})
        log.info("train %-56s %10.1f ms", impl, rows[-1]["ms"])
    qat = next((r["ms"] for r in rows if r["impl"].startswith("torch.ao")), None)
    for row in rows:
        if qat:
            row["vs_fake_quant_qat"] = row["ms"] / qat
    return rows


def targets(rows: list[dict], switches: list[dict], device: str, train: list[dict] = ()) -> list[str]:
    """The issues' targets as measured ratios (met or missed; a GPU target on CPU is 'not measured')."""
    lines = []
    recipe = next((r for r in train if r["impl"] == RECIPE_ROW and r.get("vs_fake_quant_qat")), None)
    if recipe:
        ratio = recipe["vs_fake_quant_qat"]
        lines.append(f"DQT training step (`dqt train` recipe) takes {ratio:.2f}x a torch.ao fake-quant QAT step "
                     f"(target <= 3x: {'met' if ratio <= 3 else 'missed'})")

    def find(net_prefix, batch, impl_prefix):
        for r in rows:
            if r["net"].startswith(net_prefix) and r["batch"] == batch and r["impl"].startswith(impl_prefix):
                return r
        return None

    for net in sorted({r["net"] for r in rows}):
        batches = sorted({r["batch"] for r in rows if r["net"] == net})
        if device == "cpu":
            ours, ao = find(net, 1, "DQT frozen integer, uniform 8-bit"), find(net, 1, "torch.ao int8")
            if ours and ao:
                ratio = ours["ms"] / ao["ms"]
                lines.append(f"{net}, batch 1: DQT uniform 8-bit takes {ratio:.2f}x the time of torch.ao int8 "
                             f"(target <= 2x: {'met' if ratio <= 2 else 'missed'})")
        for batch in batches:
            dyn, u8 = find(net, batch, "DQT frozen integer, dynamic"), find(net, batch, "DQT frozen integer, uniform 8")
            if dyn and u8:
                ratio = dyn["ms"] / u8["ms"]
                lines.append(f"{net}, batch {batch}: dynamic mixed widths take {ratio:.2f}x uniform 8-bit "
                             f"(GPU target <= 1.10x{'' if device == 'cuda' else '; measured here on CPU'})")
    ours, bf16 = find("ResNet-50", 256, "DQT frozen integer, uniform 8"), find("ResNet-50", 256, "torch bf16")
    if ours and bf16:
        ratio = ours["images_per_s"] / bf16["images_per_s"]
        lines.append(f"ResNet-50 batch 256: DQT uniform 8-bit throughput is {ratio:.2f}x torch bf16 channels_last "
                     f"(target >= 1.3x: {'met' if ratio >= 1.3 else 'missed'})")
    else:
        lines.append("ResNet-50 batch 256 vs torch bf16 channels_last on GPU (target >= 1.3x): not measured in this "
                     "run (needs --device cuda)")
    for s in switches:
        lines.append(f"{s['net']}: width switch of {s['elements'] / 1e6:.1f}M weights on {s['device']}: shift "
                     f"{s['shift_seconds'] * 1e3:.2f} ms vs dequantize/requantize {s['dequant_requant_seconds'] * 1e3:.2f}"
                     f" ms = {s['speedup']:.1f}x (target >= 5x: {'met' if s['speedup'] >= 5 else 'missed'})")
    return lines


def markdown(info: dict, command: str, rows: list[dict], train: list[dict], goals: list[str]) -> str:
    where = info.get("gpu", info["cpu"])
    lines = [f"# End-to-end latency, {info['date']}", "",
             f"Machine: {where}, {info['threads']} CPU threads, torch {info['torch']}, commit {info['commit']}. "
             f"Command: `{command}`. Median over interleaved rounds (every implementation once per round) after two "
             "warm-ups; untrained networks (latency does not "
             "depend on the weights), random images, randomised controller so dynamic mode mixes widths (mean bits, and in brackets the mean number of distinct widths per layer within the batch)."]
    if rows:
        lines += ["", "## Inference", "",
                  "| network | batch | implementation | ms | images/s | speed vs float | GBitOPs/sample | mean bits "
                  "(widths per layer) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        gb = f"{r['gbitops_per_sample']:.2f}" if "gbitops_per_sample" in r else ""
        mb = f"{r['mean_bits']:.2f} ({r['distinct_bits_per_layer']:.1f})" if "mean_bits" in r else ""
        lines.append(f"| {r['net']} | {r['batch']} | {r['impl']} | {r['ms']:.2f} | {r['images_per_s']:.1f} | "
                     f"{r.get('vs_float', float('nan')):.2f}x | {gb} | {mb} |")
    if train:
        lines += ["", f"## Training step ({train[0]['net']}, batch {train[0]['batch']})", "",
                  "| step | ms | images/s | time vs fake-quant QAT |", "|---|---:|---:|---:|"]
        for r in train:
            vs = f"{r['vs_fake_quant_qat']:.2f}x" if "vs_fake_quant_qat" in r else ""
            lines.append(f"| {r['impl']} | {r['ms']:.1f} | {r['images_per_s']:.1f} | {vs} |")
    lines += ["", "## Targets", ""] + [f"- {g}" for g in goals]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], train: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[plot]'): no plot")
        return False
    groups = sorted({(r["net"], r["batch"]) for r in rows})
    panels = len(groups) + (1 if train else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.2 + 0.45 * 8 * panels / 2), squeeze=False)
    def bars(ax, sel: list[dict], title: str, fmt: str) -> None:
        drawn = ax.barh([r["impl"] for r in sel], [r["ms"] for r in sel],
                        color=["tab:blue" if r["impl"].startswith("DQT") else "tab:gray" for r in sel])
        ax.bar_label(drawn, fmt=fmt, fontsize=7, padding=2)
        ax.set_xlim(0, 1.15 * max(r["ms"] for r in sel))
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)

    for ax, (net, batch) in zip(axes[:, 0], groups):
        sel = [r for r in rows if (r["net"], r["batch"]) == (net, batch)]
        bars(ax, sel, f"{net}, batch {batch}: latency (ms; DQT in blue)", "%.1f")
    if train:
        bars(axes[-1, 0], train, f"{train[0]['net']}, batch {train[0]['batch']}: training step (ms)", "%.0f")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--nets", nargs="+", choices=sorted(NETS), default=sorted(NETS))
    parser.add_argument("--no-train", action="store_true", help="skip the training-step rows")
    parser.add_argument("--no-inference", action="store_true",
                        help="training-step rows only (written to latency-train-DATE.*)")
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--replot", type=Path, metavar="JSON", help="redraw the markdown and PNG of a saved run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.replot:
        report = json.loads(args.replot.read_text())
        stem = args.replot.with_suffix("")
        text = markdown(report["machine"], report["command"], report["inference"], report["training"],
                        report["targets"])
        stem.with_suffix(".md").write_text(text)
        report["plot"] = plot(report["inference"], report["training"], stem.with_suffix(".png"))
        return report
    given = sys.argv[1:] if argv is None else argv  # as run, so the results say how to reproduce them
    command = "python -m bench.latency" + (f" {' '.join(given)}" if given else "")
    info = machine()
    rows, switches = [], []
    for key in [] if args.no_inference else args.nets:
        net_rows, switch = inference_rows(key, args.device, args.max_repeats)
        rows += net_rows
        switches.append(switch)
    train = [] if args.no_train else training_rows(args.device, args.max_repeats)
    goals = targets(rows, switches, args.device, train)
    args.out.mkdir(parents=True, exist_ok=True)
    # A training-only run gets its own files, so it never replaces a full run's table.
    kind = "latency-train" if args.no_inference else "latency"
    stem = args.out / f"{kind}-{info['date'][:10]}{'' if args.device == 'cpu' else '-' + args.device}"
    report = {"machine": info, "command": command, "device": args.device, "inference": rows,
              "width_switch": switches, "training": train, "targets": goals}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(info, command, rows, train, goals)
    stem.with_suffix(".md").write_text(text)
    report["plot"] = plot(rows, train, stem.with_suffix(".png"))
    print(text)
    return report


if __name__ == "__main__":
    main()
