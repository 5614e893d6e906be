"""Everything a session with a GPU should run, in one command, in the order that keeps the most
when time or the machine runs out.

    python -m bench.gpu [--budget-s 540] [--stages sweep kernels latency tests]
    TRITON_INTERPRET=1 python -m bench.gpu --smoke       # CPU check of the driver and the smoke stages

Stages, each its own process with its own time limit (a fault or hang in one does not lose the
others), each writing its own stamped results under --out:

1. sweep: `bench.gpu_sweep`, every autotune configuration alone against Numba, faults isolated
   per process, so a configuration that faults is named before anything autotunes over it.
2. kernels: `bench.gpu_kernels`, the Triton kernels next to cuBLAS/cuDNN (the kernel targets).
3. latency: `bench.latency --device cuda`, frozen models end to end and the width switch.
4. tests: every `gpu` and `interpreter` kernel test compiled, one pytest process per test file
   with CUDA_LAUNCH_BLOCKING=1, so a fault fails its own file only.

Writes gpu-<device>-<date>.md: device, commit, command, and per stage its command, exit status,
seconds and the tail of its output. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("sweep", "kernels", "latency", "tests")
# Shares of the total budget, in stage order; what a stage leaves unused passes to the next.
SHARES = {"sweep": 0.3, "kernels": 0.2, "latency": 0.2, "tests": 0.3}
TEST_FILES = ("tests/kernels/test_gpu.py", "tests/kernels/test_library.py", "tests/kernels/test_gemm.py",
              "tests/kernels/test_elementwise_pool.py")


def stage_commands(stage: str, smoke: bool, out: Path, seconds: float) -> list[list[str]]:
    """The processes a stage runs (empty: nothing to run on this machine)."""
    py = sys.executable
    if stage == "sweep":
        return [[py, "-m", "bench.gpu_sweep", "--budget-s", str(int(max(seconds - 30, 10))), "--out", str(out)]
                + (["--smoke"] if smoke else [])]
    if stage == "kernels":
        return [[py, "-m", "bench.gpu_kernels", "--out", str(out)] + (["--smoke"] if smoke else [])]
    if stage == "latency":
        return [] if smoke else [[py, "-m", "bench.latency", "--device", "cuda", "--max-repeats", "10",
                                  "--out", str(out)]]
    if stage == "tests":
        if smoke:  # CI runs these files already: check that the GPU selection collects
            return [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "interpreter or gpu",
                     *TEST_FILES]]
        return [[py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "interpreter or gpu", f] for f in TEST_FILES]
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


def run_stage(cmd: list[str], seconds: float, env: dict) -> dict:
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(seconds, 1.0))
        status, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        status = "timeout"
        output = "".join(o.decode() if isinstance(o, bytes) else (o or "") for o in (exc.stdout, exc.stderr))
    return {"command": " ".join(cmd[1:] if cmd[0] == sys.executable else cmd), "status": status,
            "seconds": time.monotonic() - start, "tail": output.strip().splitlines()[-15:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of all stages together")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--smoke", action="store_true", help="CPU under TRITON_INTERPRET=1: the smoke stages only")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)

    from bench.common import bench_device, machine

    bench_device("bench.gpu", args.smoke)
    info = machine()
    device = info.get("gpu", "cpu-interpreter")
    args.out.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    report = args.out / f"gpu-{'smoke-' if args.smoke else ''}{name}-{info['date'][:10]}.md"
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "DQT_COMMIT": info["commit"]}
    deadline = time.monotonic() + args.budget_s
    results = []
    for i, stage in enumerate(args.stages):
        left = deadline - time.monotonic()
        share = SHARES[stage] / sum(SHARES[s] for s in args.stages[i:])
        allowed = left * share
        cmds = stage_commands(stage, args.smoke, args.out, allowed)
        if not cmds:
            results.append((stage, [{"command": "-", "status": "not run (needs a GPU)", "seconds": 0.0, "tail": []}]))
            continue
        runs = []
        for j, cmd in enumerate(cmds):
            runs.append(run_stage(cmd, (allowed - sum(r["seconds"] for r in runs)) / (len(cmds) - j), env))
            print(f"[bench.gpu] {stage}: {runs[-1]['command']} -> {runs[-1]['status']} "
                  f"({runs[-1]['seconds']:.0f} s)", flush=True)
        results.append((stage, runs))
    command = "python -m bench.gpu " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# GPU validation, {info['date']}", "",
             f"Device: {device}; torch {info['torch']}, Triton {info.get('triton', '?')}, commit {info['commit']}. "
             f"Command: `{command.strip()}` (CUDA_LAUNCH_BLOCKING=1 in every stage). Each stage's own results file "
             "sits next to this one.", "", "| stage | command | exit | seconds |", "|---|---|---|---:|"]
    for stage, runs in results:
        lines += [f"| {stage} | `{r['command']}` | {r['status']} | {r['seconds']:.0f} |" for r in runs]
    for stage, runs in results:
        for r in runs:
            if r["tail"]:
                lines += ["", f"## {stage}: `{r['command']}`", "", "```", *r["tail"], "```"]
    report.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {report}")
    return 0 if all(r["status"] == 0 or str(r["status"]).startswith("not run") for _, runs in results
                    for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
