"""Every Triton kernel compiles for the GPUs we target, on this CPU machine (ahead of time).

The interpreter runs kernels the GPU compiler would refuse (module globals, dot shapes, wgmma
rules), so the suite also compiles what the launchers can launch for sm_90 (H100/H200) and
sm_80 (A100): every autotune tile with the heaviest flags, a covering set of the other flag
combinations, and the element-wise and pooling kernels (`dqt_triton.kernels.aot`). Each must
compile, keep its GEMM main loop on int8 tensor cores (wgmma s8 on sm_90, mma.sync s8 for
16-row tiles and on sm_80), fit the shared memory of the target and, compiled as a typical
launch specializes it (unit strides constant, sizes and aligned pointers divisible by 16), spill
no register. The unspecialized worst case is in `bench/results/aot-*-generic.md`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from dqt_triton.kernels import aot
from dqt_triton.kernels.configs import _GPU_MATMUL_TILES

NO_CUDA_BACKEND = aot.has_cuda_backend()


def _compile_all(arch: int) -> list[dict]:
    # A fresh process without TRITON_INTERPRET: under the interpreter @triton.jit gives no
    # compilable function.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "dqt_triton.kernels.aot", "--json", "--arch", str(arch)],
                          env=env, capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, f"no report from the AOT compile for sm_{arch}:\n{proc.stderr[-3000:]}"
    return rows


def _kloop_table(rows: list[dict]) -> str:
    return "\n".join(f"sm_{r['arch']} {r['kloop_tile']}: pre-shifted {r['ours']}, shift in the loop {r['in_loop']}, "
                     f"plain {r['plain']} PTX instructions" for r in rows)


@pytest.mark.skipif(NO_CUDA_BACKEND is not None, reason=str(NO_CUDA_BACKEND))
def test_every_kernel_variant_compiles_for_sm90_and_sm80_on_int8_tensor_cores():
    with ThreadPoolExecutor(max_workers=2) as pool:
        rows = [row for rows in pool.map(_compile_all, (90, 80)) for row in rows]
    reports = [r for r in rows if "kernel" in r]
    kloops = [r for r in rows if "kloop_tile" in r]
    expected = len(aot.variants()) * 2
    assert len(reports) == expected, f"{len(reports)} of {expected} variants reported"
    kinds = {r["kernel"] for r in reports}
    assert kinds == {"int_matmul_kernel", "int_conv2d_kernel", "int_add_kernel", "int_mul_kernel", "int_pool2d_kernel",
                     "int_adaptive_avg_pool2d_kernel", "int_lut_kernel", "shift_activations_kernel"}
    failures = [f"sm_{r['arch']} {r['label']}: {'; '.join(r['problems'])}" for r in reports if r["problems"]]
    assert not failures, "\n".join(failures)
    # wgmma really is what the big tiles get on Hopper (the check above compares with the rule).
    assert any(r["int8_mma"] == "wgmma s8" for r in reports if r["arch"] == 90)
    spills = [f"sm_{r['arch']} {r['label']}: {r['spill_bytes']} bytes" for r in reports if r["spill_bytes"]]
    assert not spills, f"{len(spills)} of {len(reports)} variants spill registers:\n" + "\n".join(spills)
    # The main loop against a plain int8 GEMM with the same tile: measured and printed, not a target here.
    assert len(kloops) == 2 * len(_GPU_MATMUL_TILES) and all(r["ours"] and r["in_loop"] and r["plain"]
                                                             for r in kloops), kloops
    print("K loop against a plain int8 GEMM:\n" + _kloop_table(kloops))


def test_kloop_instructions_counts_the_loop_that_issues_the_mma():
    ptx = """
    mov.u32 %r1, 0;
$L__BB0_1:                              // a loop without an MMA
    add.s32 %r1, %r1, 1;
    @%p1 bra $L__BB0_1;
$L__BB0_2:                              // =>This Inner Loop Header: Depth=1
    ld.global.b32 %r2, [%rd1];
    // a comment
    mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%r3, %r4, %r5, %r6}, {%r2}, {%r7}, {%r3, %r4, %r5, %r6};
$L__tmp1:
    add.s64 %rd1, %rd1, 64;
    @%p2 bra 	$L__BB0_2;
    ret;
"""
    assert aot.kloop_instructions(ptx) == 4  # ld, mma, add, bra
    assert aot.kloop_instructions(ptx.replace("mma.sync", "add.sync")) is None


def test_variants_compile_as_a_launch_specializes_them():
    """Ints equal to 1 become constants, multiples of 16 and the tensors get the divisibility
    hint (as Triton's JIT does for the example launch); `generic` compiles neither."""
    variant = next(v for v in aot.variants() if v.kernel == "int_conv2d_kernel")
    names = ["x_ptr", "M", "C_GROUP", "KH", "STRIDE_H", "stride_xc", "lo", "hi", "BLOCK_M"]
    signature, consts, attrs = aot.launch_specialization(variant, names)
    assert consts["STRIDE_H"] == consts["stride_xc"] == 1 and signature["STRIDE_H"] == "constexpr"
    assert signature["KH"] == "i32" and "KH" not in consts  # 3: neither 1 nor a multiple of 16
    hinted = {names[i] for (i,) in attrs}
    assert hinted == {"x_ptr", "M", "C_GROUP", "lo"}  # 8192, 64, 0; hi = 255 is not
    assert consts["BLOCK_M"] == dict(variant.constexprs)["BLOCK_M"]
    generic_signature, generic_consts, generic_attrs = aot.launch_specialization(variant, names, generic=True)
    assert generic_attrs == {} and generic_signature["stride_xc"] == "i32" and "stride_xc" not in generic_consts


def test_the_variant_list_covers_every_tile_and_every_flag_value():
    """What the suite compiles: each autotune tile, and each value of each flag somewhere."""
    from dqt_triton.kernels.configs import _GPU_CONV_TILES

    listed = aot.variants()
    for kernel, tiles in (("int_matmul_kernel", _GPU_MATMUL_TILES), ("int_conv2d_kernel", _GPU_CONV_TILES)):
        mine = [v for v in listed if v.kernel == kernel]
        seen_tiles = {(c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], v.num_warps, v.num_stages)
                      for v in mine for c in [dict(v.constexprs)]}
        assert seen_tiles == set(tiles)
        for flag in ("BUCKETED", "ROUND", "X_UNSIGNED", "RELU", "PRESHIFTED"):
            assert {dict(v.constexprs)[flag] for v in mine} == {False, True}, flag
        outputs = {(dict(v.constexprs)["EPILOGUE"], dict(v.pointer_types)["out_ptr"]) for v in mine}
        assert outputs == {(e, o) for e, o, _ in aot.EPILOGUE_OUTPUTS}
    full = aot.variants(full=True)
    assert len([v for v in full if v.kernel == "int_matmul_kernel"]) == len(_GPU_MATMUL_TILES) * 64


@pytest.mark.skipif(NO_CUDA_BACKEND is not None, reason=str(NO_CUDA_BACKEND))
def test_match_compiles_only_the_variants_it_names():
    """`--match` (a follow-up on one tile or kernel) compiles exactly the variants whose label
    holds every text, and leaves out the K-loop table."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "dqt_triton.kernels.aot", "--json", "--arch", "80", "--all",
                           "--match", "int_lut_kernel", "x:u8"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    wanted = sorted(v.label for v in aot.variants(full=True) if v.kernel == "int_lut_kernel" and "x:u8" in v.label)
    assert wanted and sorted(r["label"] for r in rows) == wanted
    assert all("kloop_tile" not in r for r in rows)
