"""Warm Triton's compile cache for the launches `python -m bench.gpu` makes later, compiling
without launching.

    python -m bench.gpu_warm [--jobs 12] [--smoke]
    TRITON_INTERPRET=1 python -m bench.gpu_warm --smoke     # CPU rehearsal: every call, nothing compiled

Set TRITON_CACHE_DIR to the directory the later steps share. While warming, the autotuned GEMM
kernels (`int_matmul_kernel`, `int_conv2d_kernel`) compile each configuration they would run
(the pinned one, or every configuration left after pruning) through `JITFunction.run(...,
warmup=True)`, the same path and cache key as a real launch, and launch nothing: a faulting
configuration cannot fault here, and the later steps spend their time limits running rather
than compiling. The other Triton kernels (activation shifts, element-wise, pooling) are small
and run for real. The GEMM outputs are therefore uninitialised: nothing here checks a result.

Warmed: the faulting test of bench.gpu's step 2 (`test_all_64_shift_pairs_in_one_mixed_batch`,
64x45x37, per-sample shifts, both code dtypes and both shift rules) with each GPU matmul tile
pinned and autotuned; every Triton launch of `bench.gpu_kernels` (its own row builders, each
case called once instead of timed); and the frozen ResNets of `bench.latency --device cuda` at
its batch sizes. Items are spread over `--jobs` worker processes (compiling is CPU work); each
prints one line as it finishes, so a run cut short still says what it warmed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
from typing import Callable, Iterator

import torch

# The faulting test's operands (tests/kernels/test_gemm.py::test_all_64_shift_pairs_in_one_mixed_batch).
FAULTING_SHAPE = (64, 45, 37)  # (M, K, N)


@contextlib.contextmanager
def compile_only(kernel, compiled: list) -> Iterator[None]:
    """`kernel[grid](...)` of an autotuned kernel compiles, without launching, the configurations
    it would run: the single one when pinned, else the pruned ones (no timing). Appends one
    (kernel name, config) per compile request to `compiled`."""

    def run(*args, **kwargs):
        kwargs["warmup"] = True  # JITFunction.run: compile (or hit the cache), skip the launch
        kernel.nargs = dict(zip(kernel.arg_names, args))  # what prune_configs reads, as in Autotuner.run
        try:
            configs = kernel.configs if len(kernel.configs) == 1 else kernel.prune_configs(kwargs)
            for config in configs:
                kernel.fn.run(*args, **kwargs, **config.all_kwargs())
                compiled.append((getattr(kernel, "base_fn", kernel.fn).__name__, str(config)))
        finally:
            kernel.nargs = None

    kernel.run = run  # the instance attribute shadows Autotuner.run for kernel[grid](...)
    try:
        yield
    finally:
        del kernel.run


@contextlib.contextmanager
def pinned(kernel, config) -> Iterator[None]:
    """The autotuned `kernel` runs `config` alone (as tests/conftest.py's DQT_PIN_TILE)."""
    saved = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = ([config] if config is not None else saved[0]), {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warm_faulting_test(tile: int | None) -> None:
    """The faulting test's four launches (uint8/int8 codes x floor/round), with GPU matmul tile
    `tile` pinned, or autotuned when None; the autotuned item also compiles the test's Numba
    reference (cached on disk, `cache=True`), which every pinned run calls."""
    import dqt_triton as dq
    from dqt_triton.kernels import gemm
    from dqt_triton.kernels.configs import gpu_matmul_configs

    M, K, N = FAULTING_SHAPE
    device = _device()
    config = gpu_matmul_configs()[tile] if tile is not None else None
    with pinned(gemm.int_matmul_kernel, config):
        for x_dtype in (torch.uint8, torch.int8):
            x = torch.zeros((M, K), dtype=x_dtype, device=device)
            w = torch.zeros((N, K), dtype=torch.int8, device=device)
            pairs = torch.randperm(64, generator=torch.Generator().manual_seed(7)).to(device)
            for rule in ("floor", "round"):
                dq.int_matmul(x, w, act_shift=pairs % 8, weight_shift=pairs // 8, shift_rule=rule, backend="triton")
                if tile is None:
                    dq.int_matmul(x.cpu(), w.cpu(), act_shift=pairs.cpu() % 8, weight_shift=pairs.cpu() // 8,
                                  shift_rule=rule, backend="reference")


def warm_kernel_bench(kind: str, shape: tuple) -> None:
    """One problem of `bench.gpu_kernels`, through its own row builder, each case called once."""
    from bench import gpu_kernels

    def once(fn, device):
        fn()
        return 1.0

    saved = gpu_kernels.bench_ms
    gpu_kernels.bench_ms = once
    try:
        rows = gpu_kernels.matmul_rows if kind == "matmul" else gpu_kernels.conv_rows
        with contextlib.redirect_stdout(io.StringIO()):  # its per-row timing lines mean nothing here
            rows(*shape, _device())
    finally:
        gpu_kernels.bench_ms = saved


def warm_latency(net: str) -> None:
    """The frozen programs of `bench.latency --device cuda` for `net`, one forward per batch size."""
    from bench import latency

    p = latency.prepare(net, "cuda")
    with torch.no_grad():
        for batch in latency.BATCHES["cuda"][net]:
            codes = latency.images(batch, p["shape"], batch).to("cuda")
            for program in p["frozen"].values():
                program(codes)


def plan(smoke: bool) -> list[tuple[str, Callable[[], None]]]:
    """(name, call) of every warm item, in the order the later steps need them."""
    from bench import gpu_kernels
    from dqt_triton.kernels.configs import gpu_matmul_configs

    items: list[tuple[str, Callable[[], None]]] = []
    for tile in [*range(len(gpu_matmul_configs())), None]:
        name = f"faulting test, matmul tile {tile}" if tile is not None else "faulting test, autotuned"
        items.append((name, lambda tile=tile: warm_faulting_test(tile)))
    matmuls, convs = ((gpu_kernels.SMOKE_MATMUL, gpu_kernels.SMOKE_CONV) if smoke
                      else (gpu_kernels.MATMUL_SHAPES, gpu_kernels.CONV_SHAPES))
    items += [(f"gpu_kernels matmul {s[0]}", lambda s=s: warm_kernel_bench("matmul", s)) for s in matmuls]
    items += [(f"gpu_kernels conv {s[0]}", lambda s=s: warm_kernel_bench("conv", s)) for s in convs]
    if not smoke:  # the frozen ResNets on the CPU interpreter would take minutes
        from bench import latency

        items += [(f"latency {net}", lambda net=net: warm_latency(net)) for net in sorted(latency.NETS)]
    return items


def worker(index: int, jobs: int, smoke: bool) -> int:
    """Warms items index, index + jobs, ...; one WARM line each. Returns the number that failed."""
    import dqt_triton as dq
    from bench.common import bench_device
    from dqt_triton.kernels import gemm

    bench_device("bench.gpu_warm", smoke)
    failed = 0
    for name, call in plan(smoke)[index::jobs]:
        compiled: list = []
        start = time.monotonic()
        # The rehearsal's CPU tensors would take the Numba path unless the Triton backend is forced;
        # on a GPU nothing is forced (the latency item calibrates its models on the CPU first).
        backend = dq.use_backend("triton") if not torch.cuda.is_available() else contextlib.nullcontext()
        try:
            with compile_only(gemm.int_matmul_kernel, compiled), compile_only(gemm.int_conv2d_kernel, compiled), \
                    backend:
                call()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - one item's failure must not stop the others
            failed += 1
            status = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"WARM {name}: {status}, {len(compiled)} GEMM compile requests "
              f"({len(set(compiled))} distinct tiles), {time.monotonic() - start:.1f} s", flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=min(12, os.cpu_count() or 1), help="worker processes")
    parser.add_argument("--smoke", action="store_true", help="the small rehearsal plan (CPU, TRITON_INTERPRET=1)")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("INDEX", "JOBS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return min(worker(*args.worker, args.smoke), 100)  # the exit status counts the failed items
    # This process imports neither torch nor the kernels (the workers do, each checking the device):
    # its seconds go to the workers.
    if args.smoke and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise SystemExit("bench.gpu_warm --smoke is the CPU rehearsal: run it with TRITON_INTERPRET=1")
    jobs = max(1, args.jobs)
    print(f"[bench.gpu_warm] {jobs} workers, TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR', '(default)')}",
          flush=True)
    start = time.monotonic()
    # Workers stay in this process group: a driver that kills the group on timeout ends them too.
    procs = [subprocess.Popen([sys.executable, "-m", "bench.gpu_warm", "--worker", str(i), str(jobs)]
                              + (["--smoke"] if args.smoke else [])) for i in range(jobs)]
    codes = [p.wait() for p in procs]
    print(f"[bench.gpu_warm] workers exited {codes} after {time.monotonic() - start:.0f} s "
          f"({sum(c for c in codes if c > 0)} items failed)", flush=True)
    return 0 if not any(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
