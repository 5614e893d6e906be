"""BitOPs tables and width-transition cost for ResNet-18 (CIFAR) and ResNet-50 (ImageNet 224).

    python -m bench.bitops [--out bench/results]

Untrained models (BitOPs do not depend on the weights; the dynamic row uses the untrained
controller on random images, so it shows the accounting, not a trained policy). Writes
bitops-<date>.json / .md with machine, date and commit. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import dqt_triton as dq
from bench.common import machine
from dqt_triton import bitops, models

PAPER_RESNET50 = {"shifts": 28.3e6, "flops": 56.6e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--batch", type=int, default=8, help="random images for the dynamic row")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    nets = {"ResNet-18 (CIFAR, 32x32)": (models.resnet18_cifar(10, 3, 64), (3, 32, 32)),
            "ResNet-50 (ImageNet, 224x224)": (models.resnet50(1000, 3, 64), (3, 224, 224))}
    info, report = machine(), {}
    lines = [f"# BitOPs and transition cost, {info['date']}", "",
             f"Machine: {info['cpu']}, torch {info['torch']}, commit {info['commit']}. Command: `python -m bench.bitops`.",
             "BitOPs = MACs x weight bits x activation bits over conv/linear layers (controller at 8x8 in dynamic "
             "mode; adds and pools not counted). Transition: every weight plus every layer-input activation of one "
             "sample changes precision once.", ""]
    for name, (net, shape) in nets.items():
        model = dq.DQTModel.from_float(net, shape, dynamic=True)
        x = torch.randint(0, 256, (args.batch, *shape), dtype=torch.uint8)
        rows = bitops.bitops_table(model, dynamic_input=x)
        cost = bitops.transition_cost(model)
        timing = bitops.time_width_switch(model, "cpu")
        timing_gpu = bitops.time_width_switch(model, "cuda") if torch.cuda.is_available() else None
        report[name] = {"rows": rows, "transition": cost, "switch_timing_cpu": timing, "switch_timing_cuda": timing_gpu,
                        "layers": len(model.layer_names), "macs": sum(model.arch.macs.values())}
        lines += [f"## {name}: {len(model.layer_names)} conv/linear layers, {report[name]['macs'] / 1e9:.3f} GMACs", "",
                  "| mode | GBitOPs / sample | vs uniform 8 |", "|---|---:|---:|"]
        for r in rows:
            extra = f" (min {r['min'] / 1e9:.2f}, max {r['max'] / 1e9:.2f})" if "min" in r else ""
            lines.append(f"| {r['mode']} | {r['bitops'] / 1e9:.3f}{extra} | {r['vs_uniform8']:.3f} |")
        lines += ["", f"Transition: {cost['weight_elements'] / 1e6:.2f}M weights + {cost['activation_elements'] / 1e6:.2f}M "
                  f"activations = {cost['elements'] / 1e6:.2f}M elements: DQT {cost['dqt_shifts'] / 1e6:.2f}M shifts vs "
                  f"{cost['dequant_requant_flops'] / 1e6:.2f}M floating-point operations.",
                  f"Weight switch to 4 bits on CPU: shift {timing['shift_seconds'] * 1e3:.2f} ms vs dequantize/requantize "
                  f"{timing['dequant_requant_seconds'] * 1e3:.2f} ms ({timing['speedup']:.1f}x).",
                  f"Weight switch to 4 bits on GPU: shift {timing_gpu['shift_seconds'] * 1e3:.3f} ms vs dequantize/"
                  f"requantize {timing_gpu['dequant_requant_seconds'] * 1e3:.3f} ms ({timing_gpu['speedup']:.1f}x)."
                  if timing_gpu else "Weight switch on GPU: not measured (no CUDA device in this run).", ""]
        if "ResNet-50" in name:
            lines.append(f"Paper (ResNet-50): {PAPER_RESNET50['shifts'] / 1e6:.1f}M shifts vs "
                         f"{PAPER_RESNET50['flops'] / 1e6:.1f}M FLOPs; ours counts {cost['elements'] / 1e6:.2f}M elements.")
            lines.append("")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bitops-{info['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "command": "python -m bench.bitops",
                                                     "report": report}, indent=2) + "\n")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
