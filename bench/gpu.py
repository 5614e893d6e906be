"""Everything a session with a GPU runs, as one command that ends inside its budget and keeps
what it recorded.

    python -m bench.gpu [--budget-s 540] [--steps env warm faulting tests kernels latency] [--out bench/results]
    TRITON_INTERPRET=1 python -m bench.gpu --smoke --out DIR      # CPU rehearsal of every CPU-side part

Steps, in this order; each runs as its own processes, each process in its own process group,
killed with its group at the step's time limit, so a hang costs one step and the next one runs:

0. env: GPU, driver, CUDA, torch, Triton, Triton's bundled ptxas, compute-sanitizer (where it is,
   its version, and whether it can run a CUDA program here), commit.
1. warm: `bench.gpu_warm` compiles what the later steps launch into TRITON_CACHE_DIR, which every
   step shares, so their time limits are spent running rather than compiling.
2. faulting: `tests/kernels/test_gemm.py::test_all_64_shift_pairs_in_one_mixed_batch`, where the
   compiled kernels faulted on an H100 (bench/results/gpu-tests-h100-2026-11-23.md), once with
   each GPU matmul tile pinned alone (DQT_PIN_TILE, tests/conftest.py) and once autotuned, with
   CUDA_LAUNCH_BLOCKING=1, under `compute-sanitizer --tool memcheck` where it works. The
   sanitizer's findings (kernel, access, address) go into the report.
3. tests: every `gpu`- and `interpreter`-marked kernel test, compiled: one pytest process per file
   of tests/kernels (CUDA_LAUNCH_BLOCKING=1), so a fault fails its own file only.
4. kernels: `bench.gpu_kernels` (Triton next to cuBLAS/cuDNN); its own results files.
5. latency: `bench.latency --device cuda` (frozen ResNets end to end); its own results files.
Optional, not in the default list: sweep (`bench.gpu_sweep`, every tile over a case grid).

Budget: each step may use `left * share / (shares of the steps still to run)` of what is left
of --budget-s, so time a step leaves unused passes on to the later ones. The processes of one
step (the pinned runs, the test files) run --jobs at a time under the step's one deadline.

`--smoke` (CPU, TRITON_INTERPRET=1) runs the same driver: the probe with the GPU tools absent,
the warm step (every call made, nothing compiled), step 2 for real under the interpreter with
the first and the last GPU tile pinned (the same command for each; tests/kernels/test_bounds.py
runs every tile), step 3 as --collect-only, and steps 4-5 reported as needing a GPU.

Writes gpu-[smoke-]<device>-<date>.md (rewritten after every step, so a run cut short keeps
what it did) and .log (every command's whole output): device, date, commit, the command, the
versions, a table of steps, the pinned runs, the sanitizer's findings and each step's output
tail. Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STEPS = ("env", "warm", "faulting", "tests", "kernels", "latency", "sweep")
DEFAULT_STEPS = ("env", "warm", "faulting", "tests", "kernels", "latency")
# Shares of the budget (of 540 s: 54, 76, 86, 162, 92 and 70 s if every step used all of its own;
# a step that ends early passes the rest on). The faulting test and the test files come before
# the benchmarks, which matter less if time runs out.
SHARES = {"env": 0.10, "warm": 0.14, "faulting": 0.16, "tests": 0.30, "kernels": 0.17, "latency": 0.13,
          "sweep": 0.25}
MIN_STEP_S = 5.0  # a step offered less than this is reported as not run
FAULTING_TEST = "tests/kernels/test_gemm.py::test_all_64_shift_pairs_in_one_mixed_batch"
KERNEL_TESTS = "tests/kernels"
PIN_LINE = re.compile(r"DQT_PIN_TILE=\S+: \w+ launched (\d+) times, (\d+) with the pinned tile")
SANITIZER_PLACES = ("/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer", "/opt/cuda/bin",
                    "/usr/local/cuda-*/bin", "/usr/local/cuda-*/compute-sanitizer")
TAIL_LINES = {"kernels": 60, "latency": 60}  # the benchmarks print a row per measurement as they go
DEFAULT_TAIL = 25


@dataclass
class Run:
    """One process of a step, and what came of it."""

    step: str
    label: str
    cmd: list[str]
    env: dict = field(default_factory=dict)  # variables set on top of the driver's environment
    status: int | str | None = None  # exit status, or "not run (...)"
    timed_out: bool = False
    seconds: float = 0.0
    output: str = ""

    def shown(self) -> str:
        """The command as a person would type it (the interpreter as `python`)."""
        env = " ".join(f"{k}={v}" for k, v in self.env.items() if k != "TRITON_CACHE_DIR")
        cmd = ["python" if c == sys.executable else c for c in self.cmd]
        return (env + " " if env else "") + shlex.join(cmd)

    def summary(self) -> str:
        """pytest's closing line, or the last line of output."""
        lines = [line.strip("= ") for line in self.output.strip().splitlines()]
        for line in reversed(lines):
            if re.search(r"\b(passed|failed|errors?|skipped|deselected|no tests ran|collected)\b", line) \
                    and re.search(r"\bin [\d.]+s\b", line):
                return line
        return lines[-1] if lines else ""


def run_process(cmd: list[str], env: dict, timeout: float) -> tuple[int, bool, float, str]:
    """(exit status, timed out, seconds, output) of `cmd` run in its own process group; at the
    time limit the whole group is killed (compute-sanitizer's target and pytest's children too)."""
    start = time.monotonic()
    # Output to a file, not a pipe: a killed process's stray children cannot hold a pipe open.
    with tempfile.TemporaryFile("w+") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    text=True)
        except OSError as exc:  # a tool that is not there: the step records it and the next one runs
            return 127, False, time.monotonic() - start, f"could not start {cmd[0]}: {exc}"
        timed_out = False
        try:
            status = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        try:  # whatever the group left running (a hung worker) goes with it
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        out.seek(0)
        return status, timed_out, time.monotonic() - start, out.read()


# --------------------------------------------------------------------------------------------
# Step 0: the probe (a subprocess of its own, so a hanging driver costs the env step only)


def tool_version(cmd: list[str], timeout: float = 20.0) -> str:
    """The last non-empty line `cmd` prints (a tool's --version), 'absent', or what went wrong."""
    if not (os.path.isfile(cmd[0]) or shutil.which(cmd[0])):
        return "absent"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return lines[-1] if lines else f"no output (exit {proc.returncode})"


def find_sanitizer() -> str | None:
    """compute-sanitizer on PATH or in a usual CUDA install place, else None."""
    import glob

    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for place in SANITIZER_PLACES:
        for folder in sorted(glob.glob(place), reverse=True):  # newest CUDA first
            path = os.path.join(folder, "compute-sanitizer")
            if os.access(path, os.X_OK):
                return path
    return None


def probe(timeout_s: float) -> dict:
    """Versions and tools of this machine; with a GPU, whether compute-sanitizer can run a CUDA program."""
    import platform

    info: dict = {"python": platform.python_version()}
    for module in ("torch", "triton", "numba", "numpy", "pytest", "hypothesis"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is a finding, not an error
            info[module] = f"absent ({type(exc).__name__})"
    import torch

    info["torch_cuda"] = torch.version.cuda or "none (CPU build)"
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", sms=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1))
    try:
        import triton

        bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        info["ptxas_bundled"] = f"{tool_version([str(bundled), '--version'])} ({bundled})"
    except ImportError:
        info["ptxas_bundled"] = "absent (no triton)"
    if os.environ.get("TRITON_PTXAS_PATH"):
        info["ptxas_TRITON_PTXAS_PATH"] = tool_version([os.environ["TRITON_PTXAS_PATH"], "--version"])
    info["ptxas_on_path"] = tool_version(["ptxas", "--version"])
    info["nvcc"] = tool_version(["nvcc", "--version"])
    smi = tool_version(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                        "--format=csv,noheader"])
    info["nvidia_smi"] = smi
    if shutil.which("nvidia-smi"):
        header = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
        match = re.search(r"Driver Version:\s*(\S+).*?CUDA Version:\s*(\S+)", header)
        if match:
            info["driver"], info["driver_cuda"] = match.groups()
    sanitizer = find_sanitizer()
    info["sanitizer"] = sanitizer or "absent (PATH, " + ", ".join(SANITIZER_PLACES) + ")"
    if sanitizer:
        info["sanitizer_version"] = tool_version([sanitizer, "--version"])
        if info["cuda_available"]:
            # Some sandboxes refuse the device ('Device not supported'): try a tiny CUDA program first.
            code = ("import torch; x = torch.ones(8, device='cuda'); torch.cuda.synchronize(); "
                    "print('probe sum', float(x.sum()))")
            status, timed_out, seconds, out = run_process(
                [sanitizer, "--tool", "memcheck", sys.executable, "-c", code], dict(os.environ), timeout_s)
            usable = status == 0 and "probe sum 8.0" in out and "ERROR SUMMARY: 0 errors" in out
            info["sanitizer_usable"] = usable
            info["sanitizer_probe"] = (f"{'works' if usable else 'does not work'} ({seconds:.0f} s"
                                       f"{', timed out' if timed_out else ''}): "
                                       + " | ".join(out.strip().splitlines()[-3:]))
    info["commit"] = commit()
    info["matmul_tiles"] = matmul_tiles()
    return info


def commit() -> str:
    """The checkout's commit (with '+dirty' when it has changes), or DQT_COMMIT on copies without .git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("DQT_COMMIT", "unknown")


# --------------------------------------------------------------------------------------------
# The steps' processes


def matmul_tiles() -> list[str]:
    """'128x128x64, 8 warps, 4 stages' for each GPU matmul tile, in DQT_PIN_TILE's order (the env
    step reports them, so this process need not import the kernels)."""
    from dqt_triton.kernels.configs import gpu_matmul_configs

    return [f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.kwargs['BLOCK_K']}, {c.num_warps} warps, "
            f"{c.num_stages} stages" for c in gpu_matmul_configs()]


def pytest_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--tb=short", *args]


def step_runs(step: str, args, env_info: dict, allowed: float) -> list[Run]:
    """The processes of one step (none: a benchmark the CPU rehearsal cannot run)."""
    py, out = sys.executable, str(args.out)
    if step == "env":
        return [Run(step, "probe", [py, "-m", "bench.gpu", "--probe", "--probe-timeout-s",
                                    str(int(max(allowed - 15, 5)))])]
    if step == "warm":
        return [Run(step, "compile cache", [py, "-m", "bench.gpu_warm", "--jobs", str(args.jobs)]
                    + (["--smoke"] if args.smoke else []))]
    if step == "faulting":
        sanitizer = env_info.get("sanitizer") if env_info.get("sanitizer_usable") and args.sanitizer else None
        wrap = [sanitizer, "--tool", "memcheck", "--print-limit", str(args.print_limit), "--show-backtrace",
                "device"] if sanitizer else []
        blocking = {"CUDA_LAUNCH_BLOCKING": "1"}
        tiles = env_info.get("matmul_tiles") or matmul_tiles()
        # -v: a line per test as it ends, so a run killed at its time limit still says how far it got.
        pinned = sorted({0, len(tiles) - 1}) if args.smoke else range(len(tiles))
        runs = [Run(step, f"matmul tile {i}: {tiles[i]}", wrap + pytest_cmd("-v", FAULTING_TEST),
                    {**blocking, "DQT_PIN_TILE": f"matmul:{i}"}) for i in pinned]
        return runs + [Run(step, "autotuned", wrap + pytest_cmd("-v", FAULTING_TEST), blocking)]
    if step == "tests":
        files = sorted(str(p) for p in Path(KERNEL_TESTS).glob("test_*.py"))
        extra = ["-q", "--collect-only"] if args.smoke else ["-v"]
        return [Run(step, Path(f).name, pytest_cmd("-m", "interpreter or gpu", *extra, f),
                    {"CUDA_LAUNCH_BLOCKING": "1"}) for f in files]
    if args.smoke and step in ("kernels", "latency"):
        return []
    if step == "kernels":
        return [Run(step, "bench.gpu_kernels", [py, "-m", "bench.gpu_kernels", "--out", out])]
    if step == "latency":
        return [Run(step, "bench.latency", [py, "-m", "bench.latency", "--device", "cuda", "--max-repeats", "10",
                                            "--out", out])]
    if step == "sweep":
        return [Run(step, "bench.gpu_sweep", [py, "-m", "bench.gpu_sweep", "--budget-s",
                                              str(int(max(allowed - 20, 10))), "--jobs", str(args.jobs), "--out", out]
                    + (["--smoke", "--configs", "matmul:3", "conv:6"] if args.smoke else []),
                    {"CUDA_LAUNCH_BLOCKING": "1"})]
    raise ValueError(f"unknown step {step!r}; choose from {STEPS}")


def run_step(runs: list[Run], base_env: dict, deadline: float, jobs: int) -> None:
    """Runs a step's processes, `jobs` at a time, each killed at the step's `deadline`."""

    def one(run: Run) -> Run:
        left = deadline - time.monotonic()
        if left < 1.0:
            run.status = "not run (step time spent)"
            return run
        run.status, run.timed_out, run.seconds, run.output = run_process(run.cmd, {**base_env, **run.env}, left)
        pins = PIN_LINE.search(run.output)
        print(f"[bench.gpu] {run.step} | {run.label}: exit {run.status}{' (TIMED OUT)' if run.timed_out else ''}, "
              f"{run.seconds:.0f} s | {run.summary()}" + (f" | {pins.group(0)}" if pins else ""), flush=True)
        return run

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, runs))


def sanitizer_findings(output: str, limit: int = 80) -> list[str]:
    """compute-sanitizer's report lines (kernel, access, address, thread, summary), host frames left out."""
    keep = []
    for line in output.splitlines():
        if not line.startswith("========="):
            continue
        text = line[len("========="):].strip()
        if not text or text.startswith(("COMPUTE-SANITIZER", "Host Frame", "Saved host backtrace")):
            continue
        keep.append(text)
    return keep[:limit] + ([f"... {len(keep) - limit} more lines in the log"] if len(keep) > limit else [])


# --------------------------------------------------------------------------------------------
# The report


def fmt_status(run: Run) -> str:
    return str(run.status) if run.status is not None else "-"


def report_lines(meta: dict, env_info: dict, results: list[tuple[str, list[Run], str]]) -> list[str]:
    lines = [f"# GPU check{' (CPU rehearsal under TRITON_INTERPRET=1)' if meta['smoke'] else ''}, {meta['date']}", "",
             f"Device: {meta['device']}. Date: {meta['date']}. Commit: {env_info.get('commit', meta['commit'])}. "
             f"Budget: {meta['budget_s']:.0f} s, {meta['elapsed_s']:.0f} s used.", "",
             f"Command: `{meta['command']}`", "",
             f"Every step shares TRITON_CACHE_DIR={meta['cache_dir']}. Steps 2 and 3 run with CUDA_LAUNCH_BLOCKING=1. "
             "The benchmarks' own results files sit next to this one; every command's whole output is in "
             f"`{meta['log']}`. This report measures; it asserts nothing.", "", "## Versions", ""]
    if env_info:
        lines += ["| what | version |", "|---|---|"] + [f"| {k} | {str(v).replace('|', '/')} |"
                                                       for k, v in env_info.items() if k != "matmul_tiles"]
    else:
        lines += ["not probed (the env step did not report)"]
    lines += ["", "## Steps", "", "| step | command | exit | seconds | timed out | result |",
              "|---|---|---|---:|---|---|"]
    for step, runs, note in results:
        if not runs:
            lines.append(f"| {step} | - | {note} | 0 | no | |")
        for r in runs:
            lines.append(f"| {step} | `{r.shown()}` | {fmt_status(r)} | {r.seconds:.0f} | "
                         f"{'YES' if r.timed_out else 'no'} | {r.summary().replace('|', '/')} |")
    faulting = [r for step, runs, _ in results if step == "faulting" for r in runs]
    if faulting:
        lines += ["", "## Step 2: the faulting test, each tile pinned", "",
                  f"`{FAULTING_TEST}` (4 cases: uint8/int8 codes x floor/round; M=64, K=45, N=37, per-sample shifts). "
                  + ("Under compute-sanitizer memcheck." if "compute-sanitizer" in " ".join(faulting[0].cmd) else
                     "Not under compute-sanitizer: " + ("switched off (--no-sanitizer)." if meta["no_sanitizer"] else
                                                         str(env_info.get("sanitizer_probe",
                                                                          env_info.get("sanitizer", "not probed"))))),
                  "", "| run | exit | timed out | pytest | launches / with the pinned tile | sanitizer errors |",
                  "|---|---|---|---|---|---|"]
        for r in faulting:
            pins = PIN_LINE.search(r.output)
            errors = re.search(r"ERROR SUMMARY: (\d+) errors?", r.output)
            lines.append(f"| {r.label} | {fmt_status(r)} | {'YES' if r.timed_out else 'no'} | {r.summary()} | "
                         f"{pins.group(1) + ' / ' + pins.group(2) if pins else '-'} | "
                         f"{errors.group(1) if errors else '-'} |")
        lines += ["", "### Sanitizer findings", ""]
        found = [(r.label, sanitizer_findings(r.output)) for r in faulting]
        found = [(label, f) for label, f in found if f]
        for label, f in found:
            lines += [f"{label}:", "", "```", *f, "```", ""]
        if not found:
            lines.append("none reported")
    lines += ["", "## Output tails"]
    for step, runs, _ in results:
        for r in runs:
            tail = r.output.strip().splitlines()[-TAIL_LINES.get(step, DEFAULT_TAIL):]
            if tail:
                lines += ["", f"### {step}: {r.label}", "", "```", *tail, "```"]
    return lines


def write_report(path: Path, log: Path, meta: dict, env_info: dict, results: list) -> None:
    meta = {**meta, "elapsed_s": time.monotonic() - meta["start"], "log": log.name}
    path.write_text("\n".join(report_lines(meta, env_info, results)) + "\n")
    with open(log, "w") as f:
        for step, runs, _ in results:
            for r in runs:
                f.write(f"===== {step} | {r.label} | exit {fmt_status(r)} | {r.seconds:.1f} s"
                        f"{' | TIMED OUT' if r.timed_out else ''}\n$ {r.shown()}\n{r.output}\n")


def parse_probe(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    return {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of all steps together")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(DEFAULT_STEPS))
    parser.add_argument("--jobs", type=int, default=min(6, os.cpu_count() or 1),
                        help="processes at once within a step (pinned runs, test files, warm workers)")
    parser.add_argument("--no-sanitizer", dest="sanitizer", action="store_false",
                        help="run step 2 without compute-sanitizer even where it works")
    parser.add_argument("--print-limit", type=int, default=20, help="compute-sanitizer --print-limit")
    parser.add_argument("--smoke", action="store_true", help="CPU rehearsal under TRITON_INTERPRET=1")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="TRITON_CACHE_DIR shared by every step (default: $TRITON_CACHE_DIR or a fixed temp dir)")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe-timeout-s", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        info = probe(args.probe_timeout_s)
        print("PROBE " + json.dumps(info), flush=True)
        usable = "usable" if info.get("sanitizer_usable") else "not usable"
        print(f"probe: {info.get('gpu', 'no CUDA device')}, driver {info.get('driver', '?')}, torch {info['torch']}, "
              f"Triton {info['triton']}, compute-sanitizer {usable}", flush=True)
        return 0
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if args.smoke and not interpreting:
        raise SystemExit("bench.gpu --smoke is the CPU rehearsal: run it with TRITON_INTERPRET=1")

    start = time.monotonic()
    deadline = start + args.budget_s
    cache_dir = args.cache_dir or Path(os.environ.get("TRITON_CACHE_DIR")
                                       or Path(tempfile.gettempdir()) / "dqt-bench-gpu-triton-cache")
    cache_dir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    base_env = {**os.environ, "TRITON_CACHE_DIR": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    given = sys.argv[1:] if argv is None else argv
    meta = {"smoke": args.smoke, "no_sanitizer": not args.sanitizer, "date": date, "commit": commit(),
            "budget_s": args.budget_s, "start": start,
            "device": "not probed yet", "cache_dir": cache_dir,
            "command": ("TRITON_INTERPRET=1 " if interpreting else "") + " ".join(["python -m bench.gpu", *given])}
    report = args.out / f"gpu-{'smoke-' if args.smoke else ''}unprobed-{date[:10]}.md"  # until the env step names it
    log = report.with_suffix(".log")
    env_info: dict = {}
    results: list[tuple[str, list[Run], str]] = []
    steps = [s for s in STEPS if s in args.steps]  # always in the order above
    for i, step in enumerate(steps):
        left = deadline - time.monotonic()
        allowed = left * SHARES[step] / sum(SHARES[s] for s in steps[i:])
        runs = step_runs(step, args, env_info, allowed)
        note = ""
        if not runs:
            note = "not run (needs a GPU)"
        elif not args.smoke and step not in ("env",) and env_info and not env_info.get("cuda_available"):
            runs, note = [], "not run (no CUDA device seen by the env step)"
        elif allowed < MIN_STEP_S:
            runs, note = [], f"not run (budget spent: {allowed:.0f} s offered)"
        if runs:
            print(f"[bench.gpu] step {i} {step}: {len(runs)} process(es), up to {allowed:.0f} s "
                  f"({left:.0f} s of the budget left)", flush=True)
            # Never past the budget's end, whatever building the commands cost.
            run_step(runs, base_env, min(time.monotonic() + allowed, deadline), args.jobs)
        else:
            print(f"[bench.gpu] step {i} {step}: {note}", flush=True)
        results.append((step, runs, note))
        if step == "env" and runs:
            env_info = parse_probe(runs[0].output)
            device = env_info.get("gpu") or ("cpu-interpreter" if args.smoke else "unknown-device")
            meta["device"] = device
            name = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
            report = args.out / f"gpu-{'smoke-' if args.smoke else ''}{name}-{date[:10]}.md"
            log = report.with_suffix(".log")
        write_report(report, log, meta, env_info, results)  # after every step: a cut-short run keeps its record
    print(f"[bench.gpu] {time.monotonic() - start:.0f} s of {args.budget_s:.0f}; wrote {report} and {log}", flush=True)
    # pytest's 5 is a file none of whose tests carry the markers (test_aot.py).
    finished = all(r.status == 0 or (r.status == 5 and step == "tests") for step, runs, _ in results for r in runs)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main())
