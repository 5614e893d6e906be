"""GPU throughput of the Triton integer kernels next to cuBLAS and cuDNN, measured in one run.

    python -m bench.gpu_kernels [--only matmul|conv] [--out bench/results]
    TRITON_INTERPRET=1 python -m bench.gpu_kernels --smoke      # tiny shapes on CPU: code paths only

For every shape it times (median of triton.testing.do_bench) our kernel with the requantizing
epilogue at 8 and 4 bits and with mixed per-sample shifts, next to `torch._int_mm` (cuBLAS
int8, no epilogue), the unfused pipeline (shift in torch, `_int_mm`, requantize in torch),
bf16 `torch.matmul`, and for convolutions cuDNN bf16 channels_last and im2col + `_int_mm`.
It checks that the unfused pipeline's codes equal ours (the comparison is only meaningful if
both compute the same thing), prints a table, and writes gpu_kernels-<date>.json / .md with the
machine, date and commit. It measures and reports ratios against the targets; it asserts none.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import dqt_triton as dq
from bench.common import bench_device, machine, timeit

# Dense int8 tensor-core peaks (TOPS) from NVIDIA's data sheets.
INT8_PEAK_TOPS = {"H100 PCIe": 1513.0, "H100": 1979.0, "H200": 1979.0, "A100": 624.0}

REQUANT_MULTIPLIER, REQUANT_SHIFT = 1 << 30, 40  # 2^-10: keeps 8-bit outputs off the clamp

MATMUL_SHAPES = [  # (label, M, N, K)
    ("square 4096", 4096, 4096, 4096),
    ("square 8192", 8192, 8192, 8192),
    ("ResNet-50 fc, batch 256", 256, 1000, 2048),
    ("BERT-base FFN up, 4096 tokens", 4096, 3072, 768),
    ("BERT-base FFN down, 4096 tokens", 4096, 768, 3072),
    ("LLaMA-7B proj, batch 1", 1, 4096, 4096),
    ("LLaMA-7B proj, batch 4", 4, 4096, 4096),
    ("LLaMA-7B proj, batch 16", 16, 4096, 4096),
    ("LLaMA-7B MLP up, batch 16", 16, 11008, 4096),
]

CONV_SHAPES = [  # (label, B, Cin, H, Cout, k, stride)
    ("ResNet-50 stem 7x7/2, b256", 256, 3, 224, 64, 7, 2),
    ("ResNet-50 conv2 3x3, b256", 256, 64, 56, 64, 3, 1),
    ("ResNet-50 conv3 3x3, b256", 256, 128, 28, 128, 3, 1),
    ("ResNet-50 conv4 3x3, b256", 256, 256, 14, 256, 3, 1),
    ("ResNet-50 conv5 3x3, b256", 256, 512, 7, 512, 3, 1),
    ("ResNet-50 conv3 3x3/2, b256", 256, 128, 56, 128, 3, 2),
    ("ResNet-50 1x1 256->64, b256", 256, 256, 56, 64, 1, 1),
    ("ResNet-50 1x1 1024->256, b256", 256, 1024, 14, 256, 1, 1),
    ("ResNet-18 CIFAR 3x3 64, b256", 256, 64, 32, 64, 3, 1),
    ("ResNet-18 CIFAR 3x3 128, b256", 256, 128, 16, 128, 3, 1),
    ("ResNet-18 CIFAR 3x3 256, b256", 256, 256, 8, 256, 3, 1),
    ("ResNet-18 CIFAR 3x3 512, b256", 256, 512, 4, 512, 3, 1),
]

SMOKE_MATMUL = [("smoke 32x48x64", 32, 48, 64), ("smoke batch 1", 1, 40, 64)]
SMOKE_CONV = [("smoke 3x3", 2, 8, 6, 16, 3, 1), ("smoke 7x7/2", 1, 3, 9, 8, 7, 2)]


def bench_ms(fn, device: torch.device) -> float:
    """Median milliseconds per call: do_bench (CUDA events, L2 flushed) on a GPU, a wall clock
    on the CPU smoke run."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median"))
    return timeit(fn, 3) * 1e3


def int8_peak_tops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, peak in INT8_PEAK_TOPS.items():
        if key in name:
            return peak
    return None


def unfused_matmul(x, w, ka, kw, multiplier, shift):
    """The same contract built from torch ops around cuBLAS: shift, offset uint8 into int8,
    `_int_mm`, correction, master units, requantize. `_int_mm` needs M > 16: rows are padded."""
    xs = (x.to(torch.int16) >> ka[:, None]) - 128
    ws = (w.to(torch.int16) >> kw)
    M = x.shape[0]
    if M <= 16:
        xs = F.pad(xs, (0, 0, 0, 32 - M))
    acc = torch._int_mm(xs.to(torch.int8), ws.to(torch.int8).t())[:M]
    acc = acc + 128 * ws.sum(dim=1, dtype=torch.int32)[None, :]
    v = (acc.to(torch.int64) << (ka + kw)[:, None]).clamp_min(0)
    return ((v * multiplier + (1 << (shift - 1))) >> shift).clamp(0, 255).to(torch.uint8)


def matmul_rows(label, M, N, K, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8).to(device)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8).to(device)
    ka_mixed = torch.randint(0, 8, (M,), generator=gen).to(device)
    kw_mixed = torch.randint(0, 8, (M,), generator=gen).to(device)
    requant = {"multiplier": REQUANT_MULTIPLIER, "shift": REQUANT_SHIFT, "relu": True}
    ka0 = torch.zeros(M, dtype=torch.int64, device=device)
    ours = dq.int_matmul(x, w, **requant)
    unfused_out = unfused_matmul(x, w, ka0, 0, REQUANT_MULTIPLIER, REQUANT_SHIFT)
    exact = bool(torch.equal(ours, unfused_out))
    x8 = (x.to(torch.int16) - 128).to(torch.int8)
    x8_mm = x8 if M > 16 else F.pad(x8, (0, 0, 0, 32 - M))
    wt = w.t()  # [K, N] column-major view: cuBLAS's preferred int8 layout
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    # A frozen program's layer: weights at every width kept pre-shifted, activations shifted once.
    layer = dq.ops.prepare_layer(w, x_dtype=x.dtype, **requant)
    ka_i32, kw_i32 = ka_mixed.to(torch.int32), kw_mixed.to(torch.int32)
    cases = {
        "dqt triton, 8-bit, requant": lambda: dq.int_matmul(x, w, **requant),
        "dqt prepared (pre-shifted operands), 8-bit, requant": lambda: dq.ops.run_prepared(layer, x, 0, 0),
        "dqt prepared (pre-shifted operands), mixed per-sample shifts": lambda: dq.ops.run_prepared(
            layer, x, ka_i32, kw_i32),
        "dqt triton, 4-bit, requant": lambda: dq.int_matmul(x, w, act_shift=4, weight_shift=4, **requant),
        "dqt triton, mixed per-sample shifts, requant": lambda: dq.int_matmul(
            x, w, act_shift=ka_mixed, weight_shift=kw_mixed, **requant),
        "dqt triton, 8-bit, raw int32": lambda: dq.int_matmul(x, w),
        "torch._int_mm (cuBLAS int8, no epilogue)" + (" [M padded to 32]" if M <= 16 else ""):
            lambda: torch._int_mm(x8_mm, wt),
        "unfused: torch shift + _int_mm + torch requant": lambda: unfused_matmul(
            x, w, ka0, 0, REQUANT_MULTIPLIER, REQUANT_SHIFT),
        "torch bf16 matmul": lambda: xb @ wb.t(),
    }
    return _time_cases("matmul", label, cases, 2 * M * N * K, device, exact)


def im2col_nhwc(x_nhwc, k, stride, pad):
    """[B*OH*OW, k*k*C] patches of an NHWC tensor (materialised, as an im2col baseline does)."""
    xp = F.pad(x_nhwc, (0, 0, pad, pad, pad, pad))
    patches = xp.unfold(1, k, stride).unfold(2, k, stride)  # [B, OH, OW, C, k, k]
    B, OH, OW, C = patches.shape[:4]
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(B * OH * OW, k * k * C)


def conv_rows(label, B, C, H, Cout, k, stride, device):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (B, C, H, H), generator=gen).to(torch.uint8)
    x = x.to(device).contiguous(memory_format=torch.channels_last)
    w = torch.randint(-128, 128, (Cout, C, k, k), generator=gen).to(torch.int8).to(device)
    w = w.contiguous(memory_format=torch.channels_last)
    pad = k // 2
    ka_mixed = torch.randint(0, 8, (B,), generator=gen).to(device)
    kw_mixed = torch.randint(0, 8, (B,), generator=gen).to(device)
    requant = {"multiplier": REQUANT_MULTIPLIER, "shift": REQUANT_SHIFT, "relu": True}
    geo = {"stride": stride, "padding": pad}
    # _int_mm needs K % 8 == 0: channels are zero-padded to a multiple of 8 (3 -> 8 for the stem).
    c_pad = -C % 8
    x_nhwc = F.pad((x.to(torch.int16) - 128).to(torch.int8).permute(0, 2, 3, 1), (0, c_pad))
    w_kc = F.pad(w.permute(0, 2, 3, 1), (0, c_pad)).reshape(Cout, -1).t()  # [k*k*C, Cout], column-major
    xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
    OH = (H + 2 * pad - k) // stride + 1

    def im2col_int_mm():
        cols = im2col_nhwc(x_nhwc, k, stride, pad)
        return torch._int_mm(cols, w_kc)

    layer = dq.ops.prepare_layer(w, x_dtype=x.dtype, conv=geo, **requant)
    ka_i32, kw_i32 = ka_mixed.to(torch.int32), kw_mixed.to(torch.int32)
    cases = {
        "dqt triton, 8-bit, requant": lambda: dq.int_conv2d(x, w, **geo, **requant),
        "dqt prepared (pre-shifted operands), 8-bit, requant": lambda: dq.ops.run_prepared(layer, x, 0, 0),
        "dqt prepared (pre-shifted operands), mixed per-sample shifts": lambda: dq.ops.run_prepared(
            layer, x, ka_i32, kw_i32),
        "dqt triton, 4-bit, requant": lambda: dq.int_conv2d(x, w, act_shift=4, weight_shift=4, **geo, **requant),
        "dqt triton, mixed per-sample shifts, requant": lambda: dq.int_conv2d(
            x, w, act_shift=ka_mixed, weight_shift=kw_mixed, **geo, **requant),
        "cuDNN bf16 conv2d (channels_last)" if device.type == "cuda" else "torch bf16 conv2d (channels_last)":
            lambda: F.conv2d(xb, wb, stride=stride, padding=pad),
        "im2col + torch._int_mm (no epilogue)": im2col_int_mm,
    }
    return _time_cases("conv", label, cases, 2 * B * Cout * OH * OH * C * k * k, device, None)


def _time_cases(kind, label, cases, ops, device, exact):
    rows = []
    for impl, fn in cases.items():
        ms = bench_ms(fn, device)
        rows.append({"kind": kind, "problem": label, "impl": impl, "ms": ms, "tops": ops / (ms * 1e-3) / 1e12,
                     "unfused_equals_ours": exact if impl.startswith("unfused") else None})
        print(f"{label:<34} {impl:<52} {ms:9.4f} ms {ops / (ms * 1e-3) / 1e12:9.2f} TOPS", flush=True)
    return rows


def _find(rows, problem, prefix):
    for r in rows:
        if r["problem"] == problem and r["impl"].startswith(prefix):
            return r
    return None


def target_lines(rows) -> list[str]:
    """The issue's targets as measured ratios (higher is better unless stated)."""
    lines = []
    peak = int8_peak_tops()

    def ratio(problem, ours, theirs, what):
        a, b = _find(rows, problem, ours), _find(rows, problem, theirs)
        if a and b:
            lines.append(f"- {problem}: {what} = {b['ms'] / a['ms']:.2f}x")

    ratio("square 4096", "dqt triton, 8-bit, requant", "torch._int_mm", "speed vs `_int_mm` (target >= 0.9x)")
    for problem in [p for p, *_ in MATMUL_SHAPES]:
        ratio(problem, "dqt triton, 8-bit, requant", "unfused", "speed vs unfused pipeline (target >= 1.5x)")
    big = _find(rows, "square 8192", "dqt triton, 8-bit, requant")
    if big and peak:
        lines.append(f"- square 8192: {big['tops']:.0f} TOPS = {100 * big['tops'] / peak:.0f}% of the "
                     f"{peak:.0f} TOPS int8 peak (target >= 70%)")
    for problem in [p for p, *_ in CONV_SHAPES if "ResNet-50" in p and "3x3" in p]:
        ratio(problem, "dqt triton, 8-bit, requant", "cuDNN", "speed vs cuDNN bf16 (target >= 1.3x)")
    for r in rows:
        if r["impl"].startswith("dqt triton, mixed"):
            uniform = _find(rows, r["problem"], "dqt triton, 8-bit, requant")
            lines.append(f"- {r['problem']}: mixed-shift time / uniform time = {r['ms'] / uniform['ms']:.2f}x "
                         "(target <= 1.10x)")
        if r["impl"].startswith("dqt prepared (pre-shifted operands), mixed"):
            in_loop = _find(rows, r["problem"], "dqt triton, mixed")
            lines.append(f"- {r['problem']}: pre-shifted operands (frozen programs) vs shifts in the K loop, mixed "
                         f"shifts = {in_loop['ms'] / r['ms']:.2f}x speed")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["matmul", "conv"], help="run one half of the table")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; runs on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    device = bench_device("bench.gpu_kernels", args.smoke)
    info = machine()
    command = "python -m bench.gpu_kernels " + " ".join(argv if argv is not None else sys.argv[1:])
    matmuls, convs = (SMOKE_MATMUL, SMOKE_CONV) if args.smoke else (MATMUL_SHAPES, CONV_SHAPES)
    rows = []
    with dq.use_backend("triton"):  # CPU tensors in the smoke run would otherwise take the Numba path
        if args.only in (None, "matmul"):
            for shape in matmuls:
                rows += matmul_rows(*shape, device)
        if args.only in (None, "conv"):
            for shape in convs:
                rows += conv_rows(*shape, device)
    targets = target_lines(rows)
    print("\n".join(targets))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (("gpu_kernels-smoke-" if args.smoke else "gpu_kernels-") + info["date"][:10])
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": info, "command": command.strip(), "rows": rows, "targets": targets}, indent=2) + "\n")
    device_name = info.get("gpu", f"CPU ({info['cpu']}, Triton interpreter)")
    lines = [f"# Triton kernel throughput, {info['date']}", "",
             f"Device: {device_name}; torch {info['torch']}, Triton {info.get('triton', '?')}, commit {info['commit']}. "
             f"Command: `{command.strip()}`. TOPS = 2 * MACs / median time.", "",
             "| problem | implementation | ms | TOPS |", "|---|---|---:|---:|"]
    lines += [f"| {r['problem']} | {r['impl']} | {r['ms']:.4f} | {r['tops']:.2f} |" for r in rows]
    lines += ["", "## Against the targets", ""] + targets
    unequal = [r["problem"] for r in rows if r["unfused_equals_ours"] is False]
    lines += ["", "Unfused pipeline output equals ours on every matmul shape." if not unequal
              else f"Unfused pipeline output DIFFERS from ours on: {', '.join(unequal)}"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
