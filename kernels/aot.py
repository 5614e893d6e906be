"""Ahead-of-time compilation of the kernels as real launches specialize them, on any machine.

Triton compiles for a target it is not running on (`triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`): nothing runs, but whatever the GPU compiler refuses is
refused here too, and the PTX and cubin tell what a GPU run depends on.

What is compiled is what the launchers really launch, in three steps: `aot_cases.record` runs
the launch cases (`aot_cases.launch_cases`: the tests' and the benchmark's launches, odd and
aligned shapes with every flag) on CPU tensors and records each kernel launch without running
it; `aot_specs.specializations` binds each launch with Triton's own binder into what
`JITFunction.run` would compile (one per autotune config the pruner keeps), and
`aot_specs.covering_subset` picks a few that still hold every tile, every flag value, odd and
aligned arguments: what CI compiles; ``--launches`` compiles them all.

`compile_specialization` compiles one for sm_90 or sm_80 and checks (`problems`), reading the
PTX with `ptx`:

- int8 tensor-core MMA inside the GEMM/conv main loop: wgmma s8 on sm_90 for tiles it accepts
  (BLOCK_M a multiple of 64, warps a multiple of 4), mma.sync s8 otherwise;
- no `wgmma.mma_async` with its left operand (A) in registers (`ptx.register_a_wgmma`);
- every per-lane global access guarded (`ptx.global_accesses`). The kernels have a few scalar
  accesses on purpose, unmasked and in bounds by construction: `tl.load(weight_shift_ptr)`
  (per-layer shift) and the 9 entries of `bucket_start` read by `common.rows_of_tile` with
  per-sample shifts; the unguarded scalar loads are checked against that count
  (`expected_scalar_loads`). A per-lane access guarded the same in every thread (an unmasked
  tile in a pipelined loop) passes only where a size specialized to 1 lets LLVM fold a real
  mask into such a guard (`size_one_masks`);
- no spilled register (the cubin's stack frame, `cuobjdump --dump-resource-usage`), and
  shared memory within the target's limit.

    python -m dqt_triton.kernels.aot [--arch 90 80] [--launches] [--generic] [--kloop] [--json] [--jobs N]
                                     [--match TEXT...]   # the covering subset (CI) or the launch set, as markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Optional

# The pipeline's names, importable from here as before the split into these modules.
from .aot_cases import (  # noqa: F401
    BENCH_CONVS, BENCH_MATMULS, BOUNDS_CONVS, BOUNDS_MATMULS, FLAG_SETS, GEMM_KERNELS, GPU_TEST_CONVS,
    GPU_TEST_MATMULS, KERNEL_HOMES, ConvCase, Flags, Launch, MatmulCase, OpCase, TensorArg, kernel_objects,
    launch_cases, record, recording, run_gemm_case, run_op_case,
)
from .aot_specs import (  # noqa: F401
    COMPILED_HOMES, Specialization, _features, binder, covering_subset, deduplicated, generic, jit_function,
    specializations, surviving_configs,
)
from .ptx import GlobalAccess, global_accesses, int8_mma, kloop_instructions, register_a_wgmma  # noqa: F401

# Shared memory per block: H100 227 KB, A100 163 KB (opt-in maxima).
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# Unguarded scalar loads a kernel may issue (see the module docstring): bucket_start[0..8] with
# per-sample weight shifts (BUCKETED), the one per-layer weight shift otherwise.
BUCKET_ENTRIES = 9


def expected_scalar_loads(kernel: str, constexprs: dict) -> int:
    """How many unguarded scalar loads the kernel's source asks for (module docstring)."""
    if kernel in GEMM_KERNELS:
        return BUCKET_ENTRIES if constexprs.get("BUCKETED") else 1
    return 0


# ----------------------------------------------------------------------------- compiling


@dataclass
class Report:
    spec: Specialization
    arch: int
    error: Optional[str] = None
    registers: int = 0
    spill_bytes: int = 0  # stack frame of the compiled kernel: spilled registers
    shared: int = 0
    int8_mma: Optional[str] = None  # "wgmma s8", "mma.sync s8", or None (no int8 tensor-core MMA)
    kloop_instructions: Optional[int] = None  # PTX instructions of the loop that holds the MMA
    register_a_wgmma: int = 0
    unguarded_per_lane: list = field(default_factory=list)  # PTX lines of unguarded per-lane accesses
    unguarded_scalar_loads: int = 0
    guarded_accesses: int = 0
    uniform_guards: int = 0  # per-lane accesses under a thread-independent guard (counted, not failed)

    @property
    def ok(self) -> bool:
        return self.error is None


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compiled_kernel(spec: Specialization, arch: int):
    """`triton.compile` of the specialization for sm_`arch` (90 or 80), as `JITFunction.run`
    compiles it for the launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, backend, _ = binder(spec.kernel, arch)
    names = fn.arg_names
    consts = spec.consts
    constexprs = {(names.index(k),): v for k, v in consts.items()}
    attrs = {(i,): [["tt.divisibility", 16]] if name in spec.divisible else []
             for i, name in enumerate(names) if name not in consts}
    options = backend.parse_options(dict(spec.options))
    return triton.compile(ASTSource(fn, dict(spec.signature), constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options.__dict__)


def compile_specialization(spec: Specialization, arch: int) -> Report:
    """Compile for sm_`arch` as the launch specialized it; check the PTX and read the cubin's
    resource usage."""
    report = Report(spec, arch)
    try:
        compiled = compiled_kernel(spec, arch)
    except Exception as exc:  # the compiler's refusal is the finding
        report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return report
    report.shared = int(compiled.metadata.shared)
    ptx = compiled.asm["ptx"]
    report.int8_mma = int8_mma(ptx)
    report.kloop_instructions = kloop_instructions(ptx)
    report.register_a_wgmma = len(register_a_wgmma(ptx))
    accesses = global_accesses(ptx)
    report.unguarded_per_lane = [f"{a.line}: {a.text}" for a in accesses if a.per_lane and not a.guarded]
    report.unguarded_scalar_loads = sum(1 for a in accesses if not a.per_lane and not a.guarded and a.is_load)
    report.guarded_accesses = sum(1 for a in accesses if a.guarded)
    report.uniform_guards = sum(1 for a in accesses if a.uniform_guard)
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                               text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    match = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    if match is None:
        report.error = f"cannot read the resource usage of the cubin: {usage.strip()[:200]}"
        return report
    report.registers, report.spill_bytes = int(match.group(1)), int(match.group(2))
    return report


def expected_mma(spec: Specialization, arch: int) -> Optional[str]:
    """The int8 tensor-core instruction a GEMM/conv specialization must use: wgmma on sm_90 for
    tiles it accepts (BLOCK_M a multiple of 64, warps a multiple of 4), mma.sync otherwise."""
    if spec.kernel not in GEMM_KERNELS:
        return None
    if arch >= 90 and spec.consts["BLOCK_M"] % 64 == 0 and spec.num_warps % 4 == 0:
        return "wgmma s8"
    return "mma.sync s8"


def single_k_step(spec: Specialization) -> bool:
    """True when the reduction is known at compile time to take one K step (K, or the conv's
    channels and window, specialized to 1): the compiler rightly folds the main loop away."""
    consts = spec.consts
    if spec.kernel == "int_matmul_kernel":
        return consts.get("K") == 1
    return all(consts.get(name) == 1 for name in ("C_GROUP", "KH", "KW"))


def size_one_masks(spec: Specialization) -> bool:
    """True when a size is the constant 1 (M, N, K, or a conv group's channels): a mask against
    it (`rows < 1` on a 16-row tile) can hold or fail alike in every thread, and LLVM rightly
    folds it into a thread-independent predicate (`GlobalAccess.uniform_guard`)."""
    classes = spec.int_classes()
    return any(classes.get(name) == "1" for name in ("M", "N", "K", "C_GROUP", "COUT_GROUP"))


def problems(report: Report) -> list[str]:
    """Why this specialization is unfit for a GPU (empty when it compiles as it should): no int8
    MMA in a main loop, a register-A wgmma, an unguarded per-lane access (or one guarded the
    same in every thread without a size of 1 to explain it), more unguarded scalar loads than
    the source asks for, spills, too much shared memory."""
    if not report.ok:
        return [f"does not compile: {report.error}"]
    found = []
    spec = report.spec
    if report.shared > SHARED_LIMIT[report.arch]:
        found.append(f"needs {report.shared} bytes of shared memory (limit {SHARED_LIMIT[report.arch]})")
    want = expected_mma(spec, report.arch)
    if want is not None and report.int8_mma != want:
        found.append(f"uses {report.int8_mma or 'no int8 tensor-core MMA'}, expected {want}")
    if want is not None and report.kloop_instructions is None and not single_k_step(spec):
        found.append("no MMA inside a loop")
    if report.register_a_wgmma:
        found.append(f"{report.register_a_wgmma} wgmma with A from registers")
    if report.unguarded_per_lane:
        found.append(f"{len(report.unguarded_per_lane)} unguarded per-lane global accesses, e.g. "
                     f"{report.unguarded_per_lane[0]}")
    if report.uniform_guards and not size_one_masks(spec):
        found.append(f"{report.uniform_guards} per-lane global accesses guarded the same in every thread "
                     "(an unmasked tile in a pipelined loop?)")
    allowed = expected_scalar_loads(spec.kernel, spec.consts)
    if report.unguarded_scalar_loads > allowed:
        found.append(f"{report.unguarded_scalar_loads} unguarded scalar loads, the source has {allowed}")
    if report.spill_bytes:
        found.append(f"spills {report.spill_bytes} bytes")
    return found


def report_row(report: Report) -> dict:
    """The JSON form of a report (one line per specialization in ``--json``)."""
    spec = report.spec
    return {"arch": report.arch, "kernel": spec.kernel, "label": spec.label, "tile": spec.tile,
            "flags": {k: v for k, v in spec.flags.items() if not k.startswith("BLOCK")},
            "ints": spec.int_classes(), "pointers": {k: [v, k in spec.divisible] for k, v in spec.signature
                                                     if v.startswith("*")},
            "cases": list(spec.cases), "int8_mma": report.int8_mma, "registers": report.registers,
            "spill_bytes": report.spill_bytes, "shared": report.shared, "kloop_instructions": report.kloop_instructions,
            "register_a_wgmma": report.register_a_wgmma, "unguarded_per_lane": len(report.unguarded_per_lane),
            "unguarded_scalar_loads": report.unguarded_scalar_loads, "guarded_accesses": report.guarded_accesses,
            "uniform_guards": report.uniform_guards, "problems": problems(report)}


def _compile_row(task: tuple) -> dict:
    """`report_row` of one (specialization, arch) task: the unit a worker process runs."""
    spec, arch = task
    return report_row(compile_specialization(spec, arch))


# ----------------------------------------------------------------------------- K loop yardstick


def plain_gemm_specialization(spec: Specialization, launch: Launch, arch: int) -> Specialization:
    """The yardstick (`plain.plain_int8_matmul_kernel`) launched like an int_matmul launch (its x,
    w, an int32 out, the same sizes and strides) with the tile of `spec`."""
    import torch

    matmul = jit_function(kernel_objects()["int_matmul_kernel"])
    named = dict(zip(matmul.arg_names, launch.args))
    out = named["out_ptr"]
    args = [named["x_ptr"], named["w_ptr"], TensorArg(torch.int32, out.address, out.shape, out.strides)]
    args += [named[k] for k in ("M", "N", "K", "stride_xm", "stride_xk", "stride_wn", "stride_wk", "stride_om",
                                "stride_on")]
    consts = spec.consts
    kwargs = {k: consts[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
    kwargs.update(num_warps=spec.num_warps, num_stages=spec.num_stages)
    plain = Launch("plain_int8_matmul_kernel", tuple(args), kwargs, "K-loop yardstick")
    (found,) = specializations(plain, arch)
    return found


KLOOP_CASE = MatmulCase("kloop", 512, 256, 512, flags=Flags(per_sample=True))


def kloop_comparison(arch: int) -> list[tuple[Report, Report, Report]]:
    """(pre-shifted weights, weights shifted in the loop, plain int8 GEMM) for every matmul tile
    on an aligned launch (`KLOOP_CASE`: per-sample shifts, uint8, requantize + ReLU)."""
    cases = [KLOOP_CASE.with_flags(prepared=prepared) for prepared in (True, False)]
    shifted, in_loop = (la for la in record(cases) if la.kernel == "int_matmul_kernel")
    return [(compile_specialization(ours, arch), compile_specialization(loop, arch),
             compile_specialization(plain_gemm_specialization(ours, shifted, arch), arch))
            for ours, loop in zip(specializations(shifted, arch), specializations(in_loop, arch))]


# ----------------------------------------------------------------------------- CLI


def has_cuda_backend() -> Optional[str]:
    """None when this Triton can compile for CUDA, else the reason it cannot."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception as exc:
        return f"this Triton has no CUDA backend: {exc}"
    if not os.path.exists(_tool("cuobjdump")):
        return f"this Triton ships no cuobjdump ({_tool('cuobjdump')})"
    return None


def selected(launches: list[Launch], arch: int, full: bool, match: list[str],
             unspecialized: bool = False) -> list[Specialization]:
    """The specializations to compile for sm_`arch`: every one of the launches (``full``) or
    their covering subset, filtered by `match` (texts that must all be in the label), and with
    ``unspecialized`` their distinct `generic` forms."""
    specs = deduplicated(launches, arch)
    if not full:
        specs = covering_subset(specs)
    specs = [s for s in specs if all(text in s.label for text in match)]
    if unspecialized:
        merged: dict = {}
        for spec in map(generic, specs):
            merged[spec] = replace(spec, cases=merged[spec].cases + spec.cases) if spec in merged else spec
        specs = list(merged.values())
    return specs


@contextlib.contextmanager
def _mapper(jobs: int) -> Iterator[Callable]:
    """`map` over `jobs` worker processes (spawned: each imports Triton afresh), or in this one."""
    if jobs <= 1:
        yield map
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.map


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=[90, 80])
    parser.add_argument("--launches", action="store_true",
                        help="every specialization of the launch set (default: the covering subset CI compiles)")
    parser.add_argument("--generic", action="store_true",
                        help="compile each without the launch's specialization (odd strides and sizes)")
    parser.add_argument("--kloop", action="store_true",
                        help="also the K loop of each matmul tile against a plain int8 GEMM")
    parser.add_argument("--json", action="store_true", help="one JSON object per specialization instead of markdown")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--match", nargs="+", default=[], metavar="TEXT",
                        help="only the specializations whose label contains every TEXT (e.g. int_conv2d_kernel "
                             "'BLOCK_M=128 BLOCK_N=64 BLOCK_K=64]')")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    reason = has_cuda_backend()
    if reason:
        print(reason)
        return 2
    import triton

    launches = record()
    tasks = [(spec, arch) for arch in args.arch for spec in selected(launches, arch, args.launches, args.match,
                                                                       args.generic)]
    totals = {arch: {"launches": len(launches), "specializations": 0, "with problems": 0, "spilling": 0,
                     "unguarded per-lane accesses": 0, "register-A wgmma": 0} for arch in args.arch}
    if not args.json:
        form = "every specialization of the launch set" if args.launches else "the covering subset of the launch set"
        print(f"# AOT compile report (Triton {triton.__version__}): {form}"
              f"{', compiled generic (unspecialized)' if args.generic else ''}\n")
        print("| arch | specialization | int8 MMA | registers | spill bytes | shared | register-A wgmma | "
              "unguarded per-lane | unguarded scalar loads | problems |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    with _mapper(args.jobs) as mapped:
        for row in mapped(_compile_row, tasks):
            count = totals[row["arch"]]
            count["specializations"] += 1
            count["with problems"] += bool(row["problems"])
            count["spilling"] += bool(row["spill_bytes"])
            count["unguarded per-lane accesses"] += row["unguarded_per_lane"]
            count["register-A wgmma"] += row["register_a_wgmma"]
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"| sm_{row['arch']} | {row['label']} | {row['int8_mma'] or '-'} | {row['registers']} | "
                      f"{row['spill_bytes']} | {row['shared']} | {row['register_a_wgmma']} | "
                      f"{row['unguarded_per_lane']} | {row['unguarded_scalar_loads']} | "
                      f"{'; '.join(row['problems']) or 'ok'} |", flush=True)
    if args.json:
        print(json.dumps({"totals": {str(a): c for a, c in totals.items()}}), flush=True)
    else:
        print()
        for arch, count in totals.items():
            print(f"- sm_{arch}: " + ", ".join(f"{v} {k}" for k, v in count.items()))
    if args.kloop:
        _print_kloop(args.arch, args.json)
    return 1 if any(c["with problems"] for c in totals.values()) else 0


def _print_kloop(archs: list[int], as_json: bool) -> None:
    if not as_json:
        print("\nK loop against a plain int8 GEMM with the same tile and launch (PTX instructions per "
              "iteration; per-sample shifts, uint8, requantize + ReLU, aligned 512x256x512):\n")
        print("| arch | tile | pre-shifted weights | shifted in the loop | plain int8 GEMM | pre-shifted / plain |")
        print("|---|---|---:|---:|---:|---:|")
    for arch in archs:
        for ours, loop, plain in kloop_comparison(arch):
            tile = "x".join(map(str, ours.spec.tile[:3])) + f" warps={ours.spec.num_warps}"
            if as_json:
                print(json.dumps({"arch": arch, "kloop_tile": tile, "ours": ours.kloop_instructions,
                                  "in_loop": loop.kloop_instructions, "plain": plain.kloop_instructions}), flush=True)
            elif ours.kloop_instructions and plain.kloop_instructions:
                print(f"| sm_{arch} | {tile} | {ours.kloop_instructions} | {loop.kloop_instructions} | "
                      f"{plain.kloop_instructions} | {ours.kloop_instructions / plain.kloop_instructions:.1f}x |",
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
