"""Ahead-of-time compilation of the Triton kernels for a named GPU, on any machine.

Triton compiles for a target it is not running on (`triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`): nothing runs, but whatever the GPU compiler refuses is
refused here too, and the cubin tells registers, spills and shared memory. `variants()` lists
what the launchers can launch: every autotune configuration of the GEMM and conv kernels with
every flag they pass (per-layer or per-sample shifts, uint8 or int8 activations, shift rule,
each epilogue with its output type, ReLU), and the element-wise and pooling kernels with their
operand types. `compile_variant` compiles one for sm_90 or sm_80 and reports what a GPU run
would depend on: int8 tensor-core MMA in the main loop (wgmma s8 on sm_90, mma.sync s8 on
sm_80), spilled bytes, registers, shared memory. For each matmul tile the report also counts the
PTX instructions of the K loop against a plain int8 GEMM with the same tile and launch
(`plain.plain_int8_matmul_kernel`): what the in-loop nested shifts cost.

A launch does not compile the kernel's generic form: Triton's JIT specializes every integer
argument equal to 1 into a constant and marks multiples of 16 (and 16-byte-aligned tensors) as
divisible by 16, which is what lets it vectorize loads and drop per-element address registers.
So each GEMM/conv variant is compiled as a typical launch specializes it (`EXAMPLE_LAUNCH`:
contiguous operands, a ResNet 3x3 stride-1 layer for conv); ``generic=True`` (``--generic``)
compiles the unspecialized form instead, the worst case of odd strides and sizes.

    python -m dqt_triton.kernels.aot [--arch 90 80] [--all] [--generic] [--match TEXT...]   # the report, as markdown
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Iterator, Optional

# Shared memory per block: H100 227 KB, A100 163 KB (opt-in maxima).
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}

# Integer arguments of a typical launch, from which the JIT's specialization is derived. Matmul:
# x [1000, 512] and w [256, 512] contiguous (pre-shifted: [8, 256, 512]), out [1000, 256], [8, N]
# width tables. Conv: a
# ResNet 3x3 stride-1 layer, batch 8 at 32x32, 64 -> 64 channels, NHWC input, [Cout, KH, KW, C]
# weights. Pointers come from torch's allocator, 16-byte aligned.
EXAMPLE_LAUNCH = {
    "int_matmul_kernel": dict(
        M=1000, N=256, K=512, M_BUCKET=1024, stride_xm=512, stride_xk=1, stride_wn=512, stride_wk=1,
        stride_om=256, stride_on=1, stride_bias=256, stride_multiplier=256, stride_rshift=256, stride_scale=256,
        stride_w_width=131072, stride_colsum=256, lo=0, hi=255),
    "plain_int8_matmul_kernel": dict(
        M=1000, N=256, K=512, stride_xm=512, stride_xk=1, stride_wn=512, stride_wk=1, stride_om=256, stride_on=1),
    "int_conv2d_kernel": dict(
        M=8192, M_BUCKET=4096, H=32, W=32, OH=32, OW=32, C_GROUP=64, COUT_GROUP=64, KH=3, KW=3,
        STRIDE_H=1, STRIDE_W=1, PAD_H=1, PAD_W=1, DIL_H=1, DIL_W=1,
        stride_xb=65536, stride_xh=2048, stride_xw=64, stride_xc=1, stride_wo=576, stride_wh=192, stride_ww=64,
        stride_wc=1, stride_om=64, stride_on=1, stride_bias=64, stride_multiplier=64, stride_rshift=64,
        stride_scale=64, stride_w_width=36864, stride_colsum=64, lo=0, hi=255),
}

# The epilogues the launchers pass, each with its output pointer type and the ReLU settings
# that reach it: requantize to uint8 (after ReLU) or int8, dequantize to float32, raw int32.
EPILOGUE_OUTPUTS = ((1, "*u8", True), (1, "*i8", False), (2, "*fp32", False), (0, "*i32", False))


@dataclass(frozen=True)
class Variant:
    kernel: str  # "int_matmul_kernel", "int_conv2d_kernel", "int_add_kernel", "int_mul_kernel", "int_pool2d_kernel",
    # "int_adaptive_avg_pool2d_kernel", "int_lut_kernel"
    pointer_types: tuple  # ((arg name, "*u8"), ...)
    constexprs: tuple  # ((name, value), ...)
    num_warps: int = 4
    num_stages: int = 3

    @property
    def label(self) -> str:
        flags = " ".join(f"{k}={v}" for k, v in self.constexprs)
        ptrs = " ".join(f"{k.removesuffix('_ptr')}:{v[1:]}" for k, v in self.pointer_types if k in ("x_ptr", "out_ptr", "a_ptr", "b_ptr"))
        return f"{self.kernel} [{flags}] {ptrs} warps={self.num_warps} stages={self.num_stages}"


@dataclass
class Report:
    variant: Variant
    arch: int
    error: Optional[str] = None
    registers: int = 0
    spill_bytes: int = 0  # stack frame of the compiled kernel: spilled registers
    shared: int = 0
    int8_mma: Optional[str] = None  # "wgmma s8", "mma.sync s8", or None (no int8 tensor-core MMA)
    kloop_instructions: Optional[int] = None  # PTX instructions of the loop that holds the MMA
    notes: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def _kernels():
    from . import elementwise, gemm, plain, pool

    return {"int_matmul_kernel": gemm.int_matmul_kernel, "int_conv2d_kernel": gemm.int_conv2d_kernel,
            "int_add_kernel": elementwise.int_add_kernel, "int_mul_kernel": elementwise.int_mul_kernel,
            "int_pool2d_kernel": pool.int_pool2d_kernel,
            "int_adaptive_avg_pool2d_kernel": pool.int_adaptive_avg_pool2d_kernel,
            "int_lut_kernel": elementwise.int_lut_kernel, "plain_int8_matmul_kernel": plain.plain_int8_matmul_kernel,
            "shift_activations_kernel": elementwise.shift_activations_kernel}


# Besides every tile with the heaviest flags, a few flag sets that between them give each
# flag each of its values and each epilogue output its own compile. The last flag is PRESHIFTED:
# operands shifted before the K loop (frozen programs, `ops.PreparedLayer`: weights per width,
# activations once per call) or the shifts in the K loop (ops called directly).
COVERING_FLAGS = (
    (False, False, EPILOGUE_OUTPUTS[3], False, False),  # per layer, int8 input, raw int32, floor
    (False, True, EPILOGUE_OUTPUTS[2], True, True),  # per layer, uint8 input, float32, round, pre-shifted
    (True, False, EPILOGUE_OUTPUTS[1], False, True),  # per sample, int8 input, requantize to int8, floor
    (False, False, EPILOGUE_OUTPUTS[0], True, False),  # per layer, int8 input, requantize to uint8 with ReLU, round
    (True, True, EPILOGUE_OUTPUTS[0], True, False),  # the heaviest flags with the shift in the K loop
)
# Per sample, uint8, requantize + ReLU, round, pre-shifted operands: a frozen dynamic model.
HEAVIEST_FLAGS = (True, True, EPILOGUE_OUTPUTS[0], True, True)


def _gemm_variants(kernel: str, tiles, full: bool) -> Iterator[Variant]:
    """Each tile with every flag combination (``full``), or a covering set: every tile with the
    heaviest flags, then COVERING_FLAGS spread over the tiles."""
    flags = list(itertools.product((False, True), (True, False), EPILOGUE_OUTPUTS, (True, False), (True, False)))

    def make(tile, bucketed, unsigned, epilogue_output, round_rule, w_shifted):
        bm, bn, bk, warps, stages = tile
        epilogue, out_type, relu = epilogue_output
        consts = {"BUCKETED": bucketed, "ROUND": round_rule, "X_UNSIGNED": unsigned, "EPILOGUE": epilogue,
                  "RELU": relu, "PRESHIFTED": w_shifted, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
        if kernel == "int_matmul_kernel":
            consts["GROUP_M"] = 8
        # Pre-shifted activations arrive as int8 (uint8 codes offset by -128) whatever the codes were.
        ptrs = {"x_ptr": "*u8" if unsigned and not w_shifted else "*i8", "w_ptr": "*i8", "out_ptr": out_type}
        ptrs.update({name: "*i32" for name in ("act_shift_ptr", "weight_shift_ptr", "sample_order_ptr",
                                                "bucket_start_ptr", "bias_ptr", "multiplier_ptr", "rshift_ptr",
                                                "w_colsum_ptr")})
        ptrs["scale_ptr"] = "*fp32"
        return Variant(kernel, tuple(sorted(ptrs.items())), tuple(consts.items()), warps, stages)

    if full:
        for tile in tiles:
            for combo in flags:
                yield make(tile, *combo)
        return
    for tile in tiles:
        yield make(tile, *HEAVIEST_FLAGS)
    for i, combo in enumerate(COVERING_FLAGS):
        yield make(tiles[(2 * i + 1) % len(tiles)], *combo)


def variants(full: bool = False) -> list[Variant]:
    """What the launchers can launch on a GPU (see the module docstring)."""
    from .configs import _GPU_CONV_TILES, _GPU_MATMUL_TILES

    out = list(_gemm_variants("int_matmul_kernel", _GPU_MATMUL_TILES, full))
    out += list(_gemm_variants("int_conv2d_kernel", _GPU_CONV_TILES, full))
    codes = ("*u8", "*i8")
    for kernel in ("int_add_kernel", "int_mul_kernel"):
        combos = list(itertools.product(codes, codes, codes)) if full else [("*u8", "*i8", "*u8"), ("*i8", "*u8", "*i8")]
        for a, b, o in combos:
            out.append(Variant(kernel, (("a_ptr", a), ("b_ptr", b), ("out_ptr", o)), (("BLOCK", 1024),)))
    for code, is_max in itertools.product(codes, (True, False)) if full else (("*u8", True), ("*i8", False)):
        out.append(Variant("int_pool2d_kernel", (("out_ptr", code), ("x_ptr", code)),
                           (("IS_MAX", is_max), ("BLOCK", 1024))))
    for code in codes if full else ("*i8",):
        out.append(Variant("int_adaptive_avg_pool2d_kernel", (("out_ptr", code), ("x_ptr", code)), (("BLOCK", 1024),)))
    for x_code, out_code in itertools.product(codes, codes) if full else (("*i8", "*u8"), ("*u8", "*i8")):
        out.append(Variant("int_lut_kernel", (("x_ptr", x_code), ("table_ptr", out_code), ("out_ptr", out_code)),
                           (("BLOCK", 1024),)))
    for x_code, round_rule in itertools.product(codes, (True, False)) if full else (("*u8", True), ("*i8", False)):
        out.append(Variant("shift_activations_kernel", (("act_shift_ptr", "*i32"), ("out_ptr", "*i8"), ("x_ptr", x_code)),
                           (("ROUND", round_rule), ("X_UNSIGNED", x_code == "*u8"), ("BLOCK", 1024))))
    return out


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def launch_specialization(variant: Variant, arg_names, generic: bool = False) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for `triton.compile`, specialized as the JIT specializes a
    launch with `EXAMPLE_LAUNCH`'s arguments (ints equal to 1 become constants, multiples of 16
    and aligned pointers get the divisibility hint), or not at all with ``generic``."""
    consts = dict(variant.constexprs)
    ptrs = dict(variant.pointer_types)
    example = {} if generic else EXAMPLE_LAUNCH.get(variant.kernel, {})
    attrs = {}
    for i, name in enumerate(arg_names):
        if name in consts:
            continue
        value = example.get(name)
        if name in ptrs and name.endswith("_ptr") and example:
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1:
            consts[name] = 1
        elif value is not None and value % 16 == 0:
            attrs[(i,)] = [["tt.divisibility", 16]]
    signature = {a: "constexpr" if a in consts else ptrs.get(a, "i32") for a in arg_names}
    return signature, consts, attrs


def compile_variant(variant: Variant, arch: int, generic: bool = False) -> Report:
    """Compile for sm_`arch` (90 or 80), specialized as launched (`launch_specialization`),
    and read the cubin's resource usage."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    report = Report(variant, arch)
    from triton.runtime.jit import JITFunction

    fn = _kernels()[variant.kernel]
    while not isinstance(fn, JITFunction):  # the autotuner wraps the jit function
        fn = fn.fn
    signature, consts, attrs = launch_specialization(variant, fn.arg_names, generic)
    try:
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    except Exception as exc:  # the compiler's refusal is the finding
        report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else ''}"
        return report
    report.shared = int(compiled.metadata.shared)
    ptx = compiled.asm["ptx"]
    if re.search(r"wgmma\.mma_async[\w.]*\.s32\.s8\.s8", ptx):
        report.int8_mma = "wgmma s8"
    elif re.search(r"mma\.sync[\w.]*\.s32\.s8\.s8", ptx):
        report.int8_mma = "mma.sync s8"
    report.kloop_instructions = kloop_instructions(ptx)
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


_MMA = re.compile(r"\b(wgmma\.mma_async|mma\.sync)")


def kloop_instructions(ptx: str) -> Optional[int]:
    """PTX instructions in the innermost loop that issues an MMA (from its label to the branch
    back to it), or None without one. Labels, directives and braces are not instructions."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = ((re.match(r"(\$[\w.]+):", line), i) for i, line in enumerate(lines))
    label_at = {m.group(1): i for m, i in labels if m}
    best = None
    for i, line in enumerate(lines):
        target = re.search(r"\bbra(?:\.uni)?\s+(\$[\w.]+);", line)
        start = label_at.get(target.group(1)) if target else None
        if start is None or start >= i or not any(_MMA.search(body) for body in lines[start:i]):
            continue
        count = sum(1 for body in lines[start + 1:i + 1]
                    if body and not body.startswith(("$", ".", "//", "{", "}")))
        best = count if best is None else min(best, count)
    return best


def plain_gemm_variant(variant: Variant) -> Variant:
    """The yardstick (`plain.plain_int8_matmul_kernel`) with the tile and launch of a matmul variant."""
    consts = dict(variant.constexprs)
    keep = {k: consts[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")}
    ptrs = (("out_ptr", "*i32"), ("w_ptr", "*i8"), ("x_ptr", "*i8"))
    return Variant("plain_int8_matmul_kernel", ptrs, tuple(keep.items()), variant.num_warps, variant.num_stages)


def expected_mma(variant: Variant, arch: int) -> Optional[str]:
    """The int8 tensor-core instruction a GEMM/conv variant must use: wgmma on sm_90 for tiles
    it accepts (BLOCK_M a multiple of 64, warps a multiple of 4), mma.sync otherwise."""
    if variant.kernel not in ("int_matmul_kernel", "int_conv2d_kernel"):
        return None
    block_m = dict(variant.constexprs)["BLOCK_M"]
    if arch >= 90 and block_m % 64 == 0 and variant.num_warps % 4 == 0:
        return "wgmma s8"
    return "mma.sync s8"


def problems(report: Report) -> list[str]:
    """What makes this variant unfit for a GPU at all (empty when it compiles as it should).
    Spills are reported apart (`Report.spill_bytes`): they cost speed, not correctness."""
    if not report.ok:
        return [f"does not compile: {report.error}"]
    found = []
    if report.shared > SHARED_LIMIT[report.arch]:
        found.append(f"needs {report.shared} bytes of shared memory (limit {SHARED_LIMIT[report.arch]})")
    want = expected_mma(report.variant, report.arch)
    if want is not None and report.int8_mma != want:
        found.append(f"main loop uses {report.int8_mma or 'no int8 tensor-core MMA'}, expected {want}")
    return found


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90, 80], choices=[90, 80])
    parser.add_argument("--all", action="store_true", help="every tile with every flag combination")
    parser.add_argument("--json", action="store_true", help="one JSON object per variant instead of markdown")
    parser.add_argument("--generic", action="store_true",
                        help="compile without the launch's specialization (odd strides and sizes)")
    parser.add_argument("--match", nargs="+", default=[], metavar="TEXT",
                        help="only the variants whose label contains every TEXT (e.g. int_conv2d_kernel "
                             "'BLOCK_M=128 BLOCK_N=64 BLOCK_K=64]'); skips the K-loop table")
    args = parser.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)
    reason = has_cuda_backend()
    if reason:
        print(reason)
        return 2
    import triton

    bad = spilled = 0
    if not args.json:
        form = "generic (unspecialized)" if args.generic else "specialized as a typical launch (EXAMPLE_LAUNCH)"
        print(f"# AOT compile report (Triton {triton.__version__}), {form}\n")
        print("| arch | variant | int8 MMA | registers | spill bytes | shared | problems |")
        print("|---|---|---|---:|---:|---:|---|")
    for arch in args.arch:
        for v in variants(full=args.all):
            if not all(text in v.label for text in args.match):
                continue
            r = compile_variant(v, arch, args.generic)
            found = problems(r)
            bad += bool(found)
            spilled += bool(r.spill_bytes)
            if args.json:
                print(json.dumps({"arch": arch, "kernel": v.kernel, "label": v.label, "int8_mma": r.int8_mma,
                                  "registers": r.registers, "spill_bytes": r.spill_bytes, "shared": r.shared,
                                  "kloop_instructions": r.kloop_instructions, "problems": found}), flush=True)
            else:
                print(f"| sm_{arch} | {v.label} | {r.int8_mma or '-'} | {r.registers} | {r.spill_bytes} | "
                      f"{r.shared} | {'; '.join(found) or 'ok'} |", flush=True)
    if not args.json:
        print(f"\n{bad} variant(s) with problems; {spilled} spill registers")
    if args.match:
        return 1 if bad else 0
    if not args.json:
        print("\nK loop against a plain int8 GEMM with the same tile (PTX instructions per iteration, heaviest "
              "flags; pre-shifted operands as frozen programs run, and the shifts in the loop as the ops "
              "called directly run):\n")
        print("| arch | tile | pre-shifted operands | shifts in the loop | plain int8 GEMM | pre-shifted / plain |")
        print("|---|---|---:|---:|---:|---:|")
    for arch in args.arch:
        for ours, in_loop, plain in kloop_comparison(arch, args.generic):
            tile = "x".join(str(dict(ours.variant.constexprs)[k]) for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
            tile += f" warps={ours.variant.num_warps}"
            if args.json:
                print(json.dumps({"arch": arch, "kloop_tile": tile, "ours": ours.kloop_instructions,
                                  "in_loop": in_loop.kloop_instructions, "plain": plain.kloop_instructions}),
                      flush=True)
            elif ours.kloop_instructions and plain.kloop_instructions:
                print(f"| sm_{arch} | {tile} | {ours.kloop_instructions} | {in_loop.kloop_instructions} | "
                      f"{plain.kloop_instructions} | {ours.kloop_instructions / plain.kloop_instructions:.1f}x |",
                      flush=True)
    return 1 if bad else 0


def kloop_comparison(arch: int, generic: bool = False) -> list[tuple[Report, Report, Report]]:
    """(pre-shifted, shift in the loop, plain) for every matmul tile with the heaviest flags
    (the compile cache makes the first free after the main report)."""
    heaviest = [v for v in variants() if v.kernel == "int_matmul_kernel"]
    from .configs import _GPU_MATMUL_TILES

    heaviest = heaviest[:len(_GPU_MATMUL_TILES)]  # `variants` lists each tile with the heaviest flags first

    def in_loop(v: Variant) -> Variant:
        return Variant(v.kernel, v.pointer_types, tuple((k, False if k == "PRESHIFTED" else value)
                                                        for k, value in v.constexprs), v.num_warps, v.num_stages)

    return [(compile_variant(v, arch, generic), compile_variant(in_loop(v), arch, generic),
             compile_variant(plain_gemm_variant(v), arch, generic)) for v in heaviest]


if __name__ == "__main__":
    sys.exit(main())
