"""Helpers shared by the benchmark scripts: timing and the machine/commit stamp of a result."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import time
from pathlib import Path

import torch


def timeit(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after two warm-up calls (JIT compile, caches)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def load_run(run: Path):
    """A `dqt train --out RUN` folder's saved model (eval mode), its training config and its
    dataset (the same split the run used; test split and calibration split as in training)."""
    import json

    from dqt_triton import DQTModel
    from dqt_triton.data import load_dataset
    from dqt_triton.training import TrainConfig

    cfg = TrainConfig.from_saved(json.loads((run / "results.json").read_text())["config"])
    return DQTModel.load(run / "model.pt").eval(), cfg, load_dataset(cfg.data, cfg.data_dir, cfg.seed, cfg.limit)


def bench_device(script: str, smoke: bool) -> torch.device:
    """The GPU, or the CPU for a --smoke run under TRITON_INTERPRET=1; otherwise exits saying so."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    from dqt_triton.kernels.common import interpreting

    if smoke and interpreting():
        return torch.device("cpu")
    raise SystemExit(f"{script} needs a CUDA device (or --smoke with TRITON_INTERPRET=1 for a CPU check of the script)")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = os.environ.get("DQT_COMMIT", "unknown")  # copies without .git (GPU machines)
    info = {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(gpu_info())
    return info


def gpu_info() -> dict:
    """GPU name, SM count, memory, clocks (from nvidia-smi when present) and Triton version."""
    props = torch.cuda.get_device_properties(0)
    info = {"gpu": props.name, "sms": props.multi_processor_count, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        query = "clocks.sm,clocks.max.sm,clocks.mem,power.limit"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip().splitlines()[0]
        info["clocks"] = dict(zip(query.split(","), (v.strip() for v in out.split(","))))
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return info
