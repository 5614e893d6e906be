"""Every autotune configuration of the GEMM kernels, one at a time, against the Numba reference.

    python -m bench.gpu_sweep [--jobs 12] [--budget-s 480] [--configs matmul:1 conv:0] [--out bench/results]
    TRITON_INTERPRET=1 python -m bench.gpu_sweep --smoke --configs matmul:3 conv:6   # CPU check of the script

Autotuning picks one configuration per shape, so the test suite exercises only the winners;
a configuration that crashes or computes wrong codes can hide until some shape picks it. Here
each GPU tile of `int_matmul_kernel` and `int_conv2d_kernel` (`gpu_matmul_configs()`,
`gpu_conv_configs()`: the GPU's tiles on any machine, also under the interpreter, whose
autotuner holds one small tile) is pinned alone (no benchmarking) and run over a grid of cases:
odd and aligned shapes, per-layer and per-sample weight shifts, uint8/int8 codes, both shift
rules, every epilogue, [N] constants and [8, N] width tables. Each result is compared with
`torch.equal` against the Numba reference.

A kernel fault (an illegal memory access) poisons the CUDA context of its process, so every
configuration runs in its own worker process under CUDA_LAUNCH_BLOCKING=1; after a fault the
worker is restarted at the next case and the faulting case is recorded. Results are appended
to a JSON-lines log as they come, so a run cut short by its budget still reports what it
covered. It measures and reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

MATMUL_SHAPES = [(1, 13, 23), (17, 13, 23), (64, 45, 37), (150, 40, 70), (256, 256, 256)]  # (M, K, N)
CONV_SHAPES = [(3, 5, 5, 10, 3, 1), (4, 16, 9, 24, 3, 2), (2, 64, 8, 64, 1, 1)]  # (B, C, H, Cout, k, stride)
EPILOGUES = ["raw", "requant", "requant_relu", "float"]


def cases(kind: str, smoke: bool = False) -> list[dict]:
    """The case grid of one kernel; `smoke` keeps the first two."""
    shapes = MATMUL_SHAPES if kind == "matmul" else CONV_SHAPES
    names = ("M", "K", "N") if kind == "matmul" else ("B", "C", "H", "Cout", "k", "stride")
    grid = [dict(zip(names, shape), per_sample=ps, x_dtype=xd, rule=rule, epilogue=ep, tables=tab)
            for shape, ps, xd, rule, ep, tab in itertools.product(
                shapes, [False, True], ["uint8", "int8"], ["floor", "round"], EPILOGUES, [False, True])]
    return grid[:2] if smoke else grid


def _operands(kind: str, case: dict, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x_dtype = getattr(torch, case["x_dtype"])
    lo, hi = (0, 256) if x_dtype == torch.uint8 else (-128, 128)
    if kind == "matmul":
        samples, n = case["M"], case["N"]
        x = torch.randint(lo, hi, (case["M"], case["K"]), generator=gen).to(x_dtype)
        w = torch.randint(-128, 128, (n, case["K"]), generator=gen).to(torch.int8)
    else:
        samples, n, size = case["B"], case["Cout"], case["H"]
        x = torch.randint(lo, hi, (samples, case["C"], size, size), generator=gen).to(x_dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randint(-128, 128, (n, case["C"], case["k"], case["k"]), generator=gen).to(torch.int8)
    act_shift = torch.randint(0, 8, (samples,), generator=gen)
    weight_shift = torch.randint(0, 8, (samples,), generator=gen) if case["per_sample"] else 3
    rows = (8, n) if case["tables"] else (n,)
    kwargs = {"bias": torch.randint(-(2**20), 2**20, rows, generator=gen, dtype=torch.int32), "shift_rule": case["rule"]}
    if case["epilogue"].startswith("requant"):
        kwargs.update(multiplier=torch.randint(2**30, 2**31 - 1, rows, generator=gen),
                      shift=torch.randint(36, 44, (n,), generator=gen), relu=case["epilogue"] == "requant_relu")
    elif case["epilogue"] == "float":
        kwargs["out_scale"] = torch.rand(rows, generator=gen) * 1e-4
    return x, w, act_shift, weight_shift, kwargs


def _run(kind: str, case: dict, seed: int, backend: str, device: torch.device) -> torch.Tensor:
    import dqt_triton as dq

    x, w, act_shift, weight_shift, kwargs = _operands(kind, case, seed)
    moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    if isinstance(weight_shift, torch.Tensor):
        weight_shift = weight_shift.to(device)
    if kind == "matmul":
        return dq.int_matmul(x.to(device), w.to(device), act_shift=act_shift.to(device), weight_shift=weight_shift,
                             backend=backend, **moved)
    return dq.int_conv2d(x.to(device), w.to(device), stride=case["stride"], padding=case["k"] // 2,
                         act_shift=act_shift.to(device), weight_shift=weight_shift, backend=backend, **moved)


def gpu_tiles(kind: str) -> list:
    """The GPU tiles of one kernel, on any machine (the indices `--configs` and the table use)."""
    from dqt_triton.kernels.configs import gpu_conv_configs, gpu_matmul_configs

    return gpu_matmul_configs() if kind == "matmul" else gpu_conv_configs()


def worker(kind: str, config_index: int, start: int, smoke: bool) -> None:
    """Runs cases start.. with one pinned GPU tile; prints START/DONE lines as it goes."""
    from dqt_triton.kernels import gemm

    kernel = gemm.int_matmul_kernel if kind == "matmul" else gemm.int_conv2d_kernel
    kernel.configs = [gpu_tiles(kind)[config_index]]  # one configuration: the autotuner launches it directly
    kernel.cache = {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    grid = cases(kind, smoke)
    for i in range(start, len(grid)):
        print(f"START {i}", flush=True)
        want = _run(kind, grid[i], i, "reference", torch.device("cpu"))
        got = _run(kind, grid[i], i, "triton", device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        print(f"DONE {i} {'equal' if torch.equal(got.cpu(), want) else 'DIFFERS'}", flush=True)


def sweep_config(kind: str, config_index: int, smoke: bool, deadline: float, log) -> dict:
    """Drives worker processes for one configuration until every case ran or the deadline passed."""
    grid = cases(kind, smoke)
    result = {"kernel": kind, "config": config_index, "equal": 0, "differs": [], "faults": [], "finished": False}
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    start = 0
    while start < len(grid):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.gpu_sweep", "--worker", kind, str(config_index),
                                   str(start)] + (["--smoke"] if smoke else []),
                                  check=False, capture_output=True, text=True, env=env, timeout=remaining)
            stdout, returncode, stderr = proc.stdout, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as timeout:
            stdout = timeout.stdout.decode() if isinstance(timeout.stdout, bytes) else (timeout.stdout or "")
            returncode, stderr = None, ""
        last = None
        for line in stdout.splitlines():
            parts = line.split()
            if parts[:1] == ["START"]:
                last = int(parts[1])
            elif parts[:1] == ["DONE"]:
                if parts[2] == "equal":
                    result["equal"] += 1
                else:
                    result["differs"].append(grid[int(parts[1])])
        if returncode == 0:
            result["finished"] = True
            break
        if returncode is None or last is None:  # out of time, or failed before its first case
            if last is None and returncode is not None:
                result["faults"].append({"case": None, "error": stderr.strip().splitlines()[-1:]})
            break
        errors = [line for line in stderr.splitlines() if "rror" in line][-2:]
        result["faults"].append({"case": grid[last], "error": errors})
        start = last + 1
    log.write(json.dumps(result) + "\n")
    log.flush()
    return result


def _table(results: list[dict], kind: str) -> list[str]:
    tiles = gpu_tiles(kind)
    lines = [f"| {kind} config | cases equal | differ | faults | finished |", "|---|---:|---:|---:|---|"]
    for r in sorted((r for r in results if r["kernel"] == kind), key=lambda r: r["config"]):
        c = tiles[r["config"]]
        tile = f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}, {c.num_warps} warps, {c.num_stages} stages"
        lines.append(f"| {r['config']}: {tile} | {r['equal']} | {len(r['differs'])} | {len(r['faults'])} | "
                     f"{'yes' if r['finished'] else 'no (budget)'} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=12, help="configurations swept at once")
    parser.add_argument("--budget-s", type=float, default=480.0, help="wall-clock budget of the whole sweep")
    parser.add_argument("--smoke", action="store_true", help="two cases per configuration; CPU under TRITON_INTERPRET=1")
    parser.add_argument("--configs", nargs="+", metavar="KIND:I",
                        help="only these tiles (matmul:I, conv:I: indices into gpu_matmul_configs/gpu_conv_configs)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "CONFIG", "START"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]), args.smoke)
        return
    from bench.common import bench_device, machine

    bench_device("bench.gpu_sweep", args.smoke)

    info = machine()
    command = "python -m bench.gpu_sweep " + " ".join(argv if argv is not None else sys.argv[1:])
    jobs = [(kind, i) for kind in ("matmul", "conv") for i in range(len(gpu_tiles(kind)))]
    if args.configs:
        chosen = set()
        for item in args.configs:
            kind, _, index = item.partition(":")
            if (kind, int(index) if index.isdigit() else -1) not in jobs:
                parser.error(f"--configs {item}: expected matmul:I or conv:I with I a GPU tile index")
            chosen.add((kind, int(index)))
        jobs = [job for job in jobs if job in chosen]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (("gpu_sweep-smoke-" if args.smoke else "gpu_sweep-") + info["date"][:10])
    deadline = time.monotonic() + args.budget_s
    with open(stem.with_suffix(".jsonl"), "w") as log, ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda job: sweep_config(*job, args.smoke, deadline, log), jobs))
    device_name = info.get("gpu", f"CPU ({info['cpu']}, Triton interpreter)")
    lines = [f"# Autotune configurations one at a time, {info['date']}", "",
             (f"Device: {device_name}; torch {info['torch']}, Triton {info.get('triton', '?')}, commit {info['commit']}. "
             f"Command: `{command.strip()}`. Each configuration runs alone over {len(cases('matmul', args.smoke))} "
             f"matmul / {len(cases('conv', args.smoke))} conv cases, compared with the Numba reference by torch.equal."),
             ""] + _table(results, "matmul") + [""] + _table(results, "conv")
    problems = [(r["kernel"], r["config"], kind, item) for r in results
                for kind, items in (("differs", r["differs"]), ("fault", r["faults"])) for item in items]
    lines += ["", "## Faults and differences", ""]
    lines += [f"- {k} config {c}: {what}: `{json.dumps(item)}`" for k, c, what, item in problems] or ["none"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {stem}.md and {stem}.jsonl")


if __name__ == "__main__":
    main()
