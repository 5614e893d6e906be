"""Where a frozen DQT program's time goes on the CPU path (issue 28): by step and by kernel.

    python -m bench.cpu_profile [--nets resnet18 mobilenet_v2] [--sizes 224] [--batches 1 16]
                                [--modes "static 8-bit" dynamic] [--out bench/results]

The programs are `bench.cpu`'s (torchvision ResNet-18 and MobileNetV2, 10 classes), on the GEMM
route this CPU picks. Two views of the same calls, each over `REPEATS` calls after a warm-up:

- by step: wall time inside each step kind's `run`, the layers split by shape (k x k, 1x1,
  depthwise convolutions, linear); "between steps" is the rest of the same calls (the runtime's
  loop, the controller's host work, output assembly);
- by kernel: `cProfile`'s own time of the library calls and Numba kernels (oneDNN convolution,
  int8/float32 GEMMs, epilogues, shifts, im2col, element-wise and pooling kernels); "Python" is
  the rest: argument checks, dispatch and numpy/torch glue around them.

Writes cpu-profile-<date>.json / .md with the machine, date, commit and command; measures,
asserts nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import json
import logging
import pstats
import sys
import time
from pathlib import Path

import torch

from bench import cpu
from bench.common import machine
from bench.latency import images
from dqt_triton.reference import blas
from dqt_triton.steps import KINDS

log = logging.getLogger("bench.cpu_profile")
REPEATS = 10
# cProfile entries (function name) -> kernel group; everything else is "Python".
KERNELS = {
    "qconv2d_pointwise": "oneDNN int8 convolution",
    "_int_mm": "int8 GEMM (torch._int_mm)",
    "matmul": "float32 GEMM",
    "conv2d": "float32 convolution",
    "_epilogue_rows": "epilogue (requantize)",
    "_shift_samples": "activation shift",
    "_shift_rows": "activation shift",
    "_im2col": "im2col",
    "_depthwise_acc": "depthwise kernel",
}
ELEMENTWISE_PREFIX = "int_"  # reference's Numba kernels: int_add_kernel, int_lut_kernel, ...


def layer_category(consts) -> str:
    """'k x k conv', '1x1 conv', 'depthwise conv' or 'linear' for a layer step's constants."""
    if consts.conv is None:
        return "linear"
    cout, cg, kh, kw = consts.weight.shape
    if consts.conv.groups > 1 and cg == 1:
        return "depthwise conv"
    return "1x1 conv" if kh * kw == 1 else f"{kh}x{kw} conv"


class StepTimer:
    """Wraps every step kind's `run` to add its wall time to a category (restored on exit)."""

    def __init__(self) -> None:
        self.seconds: dict = collections.defaultdict(float)
        self.saved: dict = {}

    def __enter__(self) -> "StepTimer":
        for kind in KINDS.values():
            self.saved[kind] = kind.run

            def timed(step, ins, consts, ctx, run=kind.run, kind=kind):
                start = time.perf_counter()
                out = run(step, ins, consts, ctx)
                label = layer_category(consts) if kind.kind == "layer" else kind.kind
                self.seconds[label] += time.perf_counter() - start
                return out

            kind.run = timed
        return self

    def __exit__(self, *exc) -> None:
        for kind, run in self.saved.items():
            kind.run = run


def kernel_seconds(stats: pstats.Stats) -> dict:
    """Own time of every kernel group in a cProfile run."""
    out: dict = collections.defaultdict(float)
    for (_, _, func), (_, _, tottime, _, _) in stats.stats.items():
        name = func.strip("<>").split(" ")[-1].split(".")[-1]  # "<built-in method torch._ops.onednn.x>" -> "x"
        if name in KERNELS:
            out[KERNELS[name]] += tottime
        elif name.startswith(ELEMENTWISE_PREFIX) and name.endswith("_kernel"):
            out["element-wise and pooling kernels"] += tottime
    return out


def profile(program, codes: torch.Tensor) -> dict:
    """{'total_ms', 'steps': {category: ms}, 'kernels': {group: ms}} per call of `program`."""
    program(codes)
    with torch.no_grad():
        with StepTimer() as timer:  # the total from the same calls, so the shares add up under drift
            start = time.perf_counter()
            for _ in range(REPEATS):
                program(codes)
            total = (time.perf_counter() - start) / REPEATS
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(REPEATS):
            program(codes)
        prof.disable()
        profiled = sum(t for (_, _, f), (_, _, t, _, _) in pstats.Stats(prof).stats.items())
    steps = {k: v / REPEATS * 1e3 for k, v in sorted(timer.seconds.items(), key=lambda kv: -kv[1])}
    steps["between steps"] = total * 1e3 - sum(steps.values())
    kernels = {k: v / REPEATS * 1e3 for k, v in sorted(kernel_seconds(pstats.Stats(prof)).items(),
                                                       key=lambda kv: -kv[1])}
    kernels["Python (checks, dispatch, glue)"] = profiled / REPEATS * 1e3 - sum(kernels.values())
    return {"total_ms": total * 1e3, "steps": steps, "kernels": kernels,
            "kernels_total_ms": profiled / REPEATS * 1e3}


def markdown(info: dict, command: str, results: list[dict]) -> str:
    lines = [f"# Where the CPU path's time goes, {info['date'][:10]}", "",
             f"Machine: {info.get('cpu', '')}; int8 flags: {', '.join(blas.cpu_int8_flags()) or 'none'}; GEMM route "
             f"{blas.cpu_gemm_route()}, oneDNN int8 convolution {'on' if blas.library_conv_enabled() else 'off'}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. Commit {info.get('commit')}. "
             f"Command: `{command}`.", "",
             f"Milliseconds per call, means over {REPEATS} calls. By step: wall time in each step kind "
             "(layers by shape). By kernel: cProfile's own time of each kernel group (the profiler's overhead "
             "inflates 'Python' a little, so its total runs above the unprofiled one).", ""]
    for r in results:
        lines += [f"## {r['net']} {r['input']}, batch {r['batch']}, DQT {r['mode']}: {r['total_ms']:.2f} ms", "",
                  "| by step | ms | share | | by kernel | ms | share |", "|---|---|---|---|---|---|---|"]
        steps, kernels = list(r["steps"].items()), list(r["kernels"].items())
        for i in range(max(len(steps), len(kernels))):
            left = f"{steps[i][0]} | {steps[i][1]:.2f} | {steps[i][1] / r['total_ms']:.0%}" if i < len(steps) \
                else " | | "
            right = f"{kernels[i][0]} | {kernels[i][1]:.2f} | {kernels[i][1] / r['kernels_total_ms']:.0%}" \
                if i < len(kernels) else " | | "
            lines.append(f"| {left} | | {right} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(cpu.NETS), choices=cpu.NETS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[224])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--modes", nargs="+", default=["static 8-bit", "dynamic"],
                        choices=["static 8-bit", "static 4-bit", "dynamic"])
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = machine()
    route = blas.cpu_gemm_route()
    results = []
    for name in args.nets:
        for size in args.sizes:
            programs = cpu.prepare(name, size)["frozen"][route]
            for batch in args.batches:
                codes = images(batch, (3, size, size), batch)
                for mode in args.modes:
                    r = {"net": name, "input": f"3x{size}x{size}", "batch": batch, "mode": mode,
                         **profile(programs[mode], codes)}
                    results.append(r)
                    log.info("%s %d b%d %s: %.2f ms; steps %s", name, size, batch, mode, r["total_ms"],
                             ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-profile-{info['date'][:10]}"
    command = "python -m bench.cpu_profile " + " ".join(argv if argv is not None else sys.argv[1:])
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "command": command.strip(),
                                                     "results": results}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(info, command.strip(), results))
    log.info("wrote %s.json and .md", stem)
    return {"results": results}


if __name__ == "__main__":
    main()
