"""CPU throughput of the integer ops next to torch's own kernels, measured in one run.

    python -m bench.cpu_ops [--repeats N] [--out bench/results]

Prints a table and writes cpu_ops-<date>.json / .md with the machine, date and commit.
Measures, never asserts: the targets live in the issue and the closing notes.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

import dqt_triton as dq
from bench.common import machine, timeit


def add_torch_ao_case(cases: dict, kind: str, make_module, xf: torch.Tensor, wf: torch.Tensor) -> None:
    """Add the torch.ao int8 baseline built by `make_module(nnq)`, fed the same codes as ours."""
    try:
        import torch.ao.nn.quantized as nnq

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized-tensor creation is deprecated in torch
            module = make_module(nnq)
            module.set_weight_bias(torch.quantize_per_tensor(wf * 0.01, 0.01, 0, torch.qint8), torch.zeros(wf.shape[0]))
            module.scale, module.zero_point = 1.0, 0
            xq = torch.quantize_per_tensor(xf / 255.0, 1 / 255.0, 0, torch.quint8)
        cases[f"torch.ao int8 {kind} ({torch.backends.quantized.engine})"] = lambda: module(xq)
    except (ImportError, RuntimeError) as exc:
        print(f"torch.ao int8 {kind} unavailable: {exc}")


def matmul_cases(M: int, K: int, N: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    requant = {"multiplier": 1 << 30, "shift": 40, "relu": True}
    xf, wf = x.float(), w.float()
    xd, wd = x.double(), w.double()
    x8 = x.to(torch.int8)
    wt = w.T.contiguous()
    cases = {
        "dqt reference (pure Numba), 8-bit, requant": lambda: dq.int_matmul(x, w, backend="reference", **requant),
        "dqt cpu path, 8-bit, requant": lambda: dq.int_matmul(x, w, backend="cpu", **requant),
        "dqt cpu path, 4-bit, requant": lambda: dq.int_matmul(x, w, act_shift=4, weight_shift=4, backend="cpu", **requant),
        "dqt cpu path, mixed per-sample shifts": lambda: dq.int_matmul(
            x, w, act_shift=torch.arange(M) % 7, weight_shift=torch.arange(M) % 5, backend="cpu", **requant),
        "torch float32 matmul": lambda: xf @ wf.T,
        "torch float64 matmul": lambda: xd @ wd.T,
        "torch._int_mm (int8 -> int32)": lambda: torch._int_mm(x8, wt),
    }
    add_torch_ao_case(cases, "Linear", lambda nnq: nnq.Linear(K, N), xf, wf)
    if M * K * N <= 64 * 1024 * 1024:
        xi, wi = x.int(), w.int()
        cases["torch int32 matmul"] = lambda: xi @ wi.T
    return cases, 2 * M * K * N


def conv_cases(B: int, C: int, HW: int, Cout: int, ksize: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, C, HW, HW), generator=gen).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-128, 128, (Cout, C, ksize, ksize), generator=gen).to(torch.int8)
    pad = ksize // 2
    requant = {"multiplier": 1 << 30, "shift": 40, "relu": True}
    xf, wf = x.float(), w.float()
    cases = {
        "dqt reference (pure Numba), 8-bit, requant": lambda: dq.int_conv2d(x, w, padding=pad, backend="reference", **requant),
        "dqt cpu path, 8-bit, requant": lambda: dq.int_conv2d(x, w, padding=pad, backend="cpu", **requant),
        "dqt cpu path, 4-bit, requant": lambda: dq.int_conv2d(x, w, padding=pad, act_shift=4, weight_shift=4, backend="cpu", **requant),
        "torch float32 conv2d (channels_last)": lambda: torch.nn.functional.conv2d(xf, wf, padding=pad),
    }
    add_torch_ao_case(cases, "Conv2d", lambda nnq: nnq.Conv2d(C, Cout, ksize, padding=pad), xf, wf)
    macs = B * Cout * HW * HW * C * ksize * ksize
    return cases, 2 * macs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    info = machine()
    rows = []
    problems = {
        "matmul 256x1024x1024": matmul_cases(256, 1024, 1024),
        "conv3x3 ResNet-18 (B=8, 64->64, 32x32)": conv_cases(8, 64, 32, 64, 3),
    }
    for problem, (cases, ops) in problems.items():
        for name, fn in cases.items():
            seconds = timeit(fn, args.repeats)
            rows.append({"problem": problem, "impl": name, "ms": seconds * 1e3, "gops": ops / seconds / 1e9})
            print(f"{problem:<40} {name:<48} {seconds * 1e3:9.3f} ms {ops / seconds / 1e9:8.1f} GOPS", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"cpu_ops-{info['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "command": "python -m bench.cpu_ops", "rows": rows}, indent=2) + "\n")
    lines = [f"# CPU op throughput, {info['date']}", "",
             f"Machine: {info['cpu']}, {info['threads']} threads, torch {info['torch']} ({info['torch_cpu_capability']}), "
             f"commit {info['commit']}. Command: `python -m bench.cpu_ops`. Integer GOPS = 2 * MACs / time (median).", "",
             "| problem | implementation | ms | GOPS |", "|---|---|---:|---:|"]
    lines += [f"| {r['problem']} | {r['impl']} | {r['ms']:.3f} | {r['gops']:.1f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
