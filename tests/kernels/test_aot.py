"""Every kernel specialization that real launches produce compiles clean for sm_90 and sm_80, on
this CPU machine (ahead of time).

The interpreter runs kernels the GPU compiler would refuse, and a launch compiles the
specialization its arguments give (odd or aligned sizes and strides, ints equal to 1, flags,
the tiles the autotuner keeps), not one example. `dqt_triton.kernels.aot` records the launches
of the ops, prepared layers and a frozen ResNet on CPU tensors without running anything, binds
each with Triton's own binder, and compiles the result: int8 tensor-core MMA in every GEMM/conv
main loop (wgmma s8 on sm_90, mma.sync s8 for 16-row tiles and on sm_80), no wgmma with its
left operand in registers, every per-lane global load and store guarded, no spilled register,
shared memory within the target's. CI compiles the covering subset (every tile, every flag
value, odd and aligned arguments); the `slow` test compiles every specialization of the launch
set (bench/results/aot-launches-*.md). The checks themselves are tested on PTX snippets and on
real PTX of small kernels built to fail them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dqt_triton.kernels import aot
from dqt_triton.kernels.configs import _GPU_CONV_TILES, _GPU_MATMUL_TILES

NO_CUDA_BACKEND = aot.has_cuda_backend()
needs_cuda_backend = pytest.mark.skipif(NO_CUDA_BACKEND is not None, reason=str(NO_CUDA_BACKEND))


def _compiler_env() -> dict:
    # Under TRITON_INTERPRET (set by conftest without a GPU) @triton.jit gives no compilable
    # function and the autotuner holds the interpreter's tile: compiling runs in a fresh process.
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _aot_rows(*args: str) -> tuple[list[dict], dict, int]:
    """(one row per specialization, totals per arch, exit status) of the AOT CLI in JSON."""
    proc = subprocess.run([sys.executable, "-m", "dqt_triton.kernels.aot", "--json", *args], env=_compiler_env(),
                          capture_output=True, text=True)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    totals = [r["totals"] for r in rows if "totals" in r]
    assert totals, f"no report from the AOT compile:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return [r for r in rows if "kernel" in r], totals[0], proc.returncode


def _in_fresh_process(code: str, tmp_path=None) -> object:
    """The JSON printed last by `code`, run by a fresh interpreter without TRITON_INTERPRET."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_compiler_env(), capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_clean_and_covering(rows: list[dict], totals: dict, archs=(90, 80)) -> None:
    failures = [f"sm_{r['arch']} {r['label']}: {p}" for r in rows for p in r["problems"]]
    assert not failures, f"{len(failures)} problems in {len(rows)} specializations:\n" + "\n".join(failures)
    for arch in archs:
        mine = [r for r in rows if r["arch"] == arch]
        assert len(mine) == totals[str(arch)]["specializations"] > 0
        assert {r["kernel"] for r in mine} == set(aot.KERNEL_HOMES)
        for kernel, tiles in (("int_matmul_kernel", _GPU_MATMUL_TILES), ("int_conv2d_kernel", _GPU_CONV_TILES)):
            gemm = [r for r in mine if r["kernel"] == kernel]
            assert {tuple(r["tile"]) for r in gemm} == set(tiles), kernel
            for flag in ("BUCKETED", "ROUND", "X_UNSIGNED", "RELU", "PRESHIFTED"):
                assert {r["flags"][flag] for r in gemm} == {False, True}, (kernel, flag)
            assert {(r["flags"]["EPILOGUE"], r["pointers"]["out_ptr"][0]) for r in gemm} >= {
                (0, "*i32"), (1, "*u8"), (1, "*i8"), (2, "*fp32")}, kernel
            depth = "K" if kernel == "int_matmul_kernel" else "C_GROUP"
            assert {r["ints"][depth] for r in gemm} >= {"D", "i32", "1"}, kernel  # aligned, odd, one
            assert {r["ints"]["M"] for r in gemm} >= {"D", "i32"}, kernel
            # The scalar loads the source asks for are all the unguarded ones there are.
            for r in gemm:
                assert r["unguarded_scalar_loads"] == (aot.BUCKET_ENTRIES if r["flags"]["BUCKETED"] else 1), r["label"]
        assert all(r["unguarded_per_lane"] == 0 and r["register_a_wgmma"] == 0 for r in mine)
        assert all(r["spill_bytes"] == 0 for r in mine)
        _assert_transformer_kernels_covered(mine)
    # wgmma really is what the 64- and 128-row tiles get on Hopper (the checks compare with the rule).
    assert any(r["int8_mma"] == "wgmma s8" for r in rows if r["arch"] == 90)
    assert all(r["int8_mma"] == "mma.sync s8" for r in rows if r["arch"] == 80 and r["kernel"] in aot.GEMM_KERNELS)


def _assert_transformer_kernels_covered(rows: list[dict]) -> None:
    """The transformer kernels of one target: every flag value and output type compiled; int_bmm
    on mma.sync s8 (its 32-row tile keeps wgmma, whose left operand would come from registers,
    away); no unguarded scalar load (they read nothing but per-lane tiles)."""
    def of(kernel):
        return [r for r in rows if r["kernel"] == kernel]

    bmm = of("int_bmm_kernel")
    for flag in ("ROUND", "A_UNSIGNED", "B_UNSIGNED", "B_ON_N", "REQUANT"):
        assert {r["flags"][flag] for r in bmm} == {False, True}, flag
    assert {(r["flags"]["REQUANT"], r["pointers"]["out_ptr"][0]) for r in bmm} == {
        (False, "*i32"), (True, "*u8"), (True, "*i8")}
    assert {r["int8_mma"] for r in bmm} == {"mma.sync s8"}
    assert {r["ints"]["K"] for r in bmm} >= {"D", "i32", "1"} and {r["ints"]["M"] for r in bmm} >= {"D", "i32", "1"}
    assert {r["flags"]["CAUSAL"] for r in of("int_softmax_kernel")} == {False, True}
    layernorm = of("int_layernorm_kernel")
    assert {r["pointers"]["out_ptr"][0] for r in layernorm} == {"*u8", "*i8"}
    assert {r["ints"]["eps_units"] for r in layernorm} == {"i32", "i64"}
    assert {r["ints"]["C"] for r in layernorm} >= {"D", "i32", "1"}
    assert of("int_embedding_kernel")
    for kernel in ("int_bmm_kernel", "int_softmax_kernel", "int_layernorm_kernel", "int_embedding_kernel"):
        assert all(r["unguarded_scalar_loads"] == 0 for r in of(kernel)), kernel


@needs_cuda_backend
def test_covering_subset_of_the_launches_compiles_clean_for_sm90_and_sm80():
    """CI: the few specializations that hold every tile, flag value and argument class of the
    launch set, compiled for both targets, each free of every problem `aot.problems` knows."""
    rows, totals, status = _aot_rows("--jobs", "2")
    _assert_clean_and_covering(rows, totals)
    assert status == (1 if any(r["problems"] for r in rows) else 0)
    assert totals["90"]["launches"] > 500  # the whole launch set was recorded


@pytest.mark.slow
@needs_cuda_backend
def test_every_launched_specialization_compiles_clean_for_sm90_and_sm80():
    """Every distinct specialization of the launch set (the tests', the benchmark's, the bounds
    shapes with every flag set, a frozen ResNet-18), both targets."""
    rows, totals, status = _aot_rows("--launches", "--jobs", "2")
    _assert_clean_and_covering(rows, totals)
    assert totals["90"]["specializations"] > 300
    assert status == 0


# ----------------------------------------------------------------------------- the launch set


def test_launch_cases_hold_the_shapes_the_gpu_tests_and_the_benchmark_launch():
    """The copies in `aot` of the shapes of tests/kernels/test_gpu.py and bench/gpu_kernels.py are
    what those files launch (a changed shape there fails here); the bounds test imports its odd
    shapes from `aot`."""
    from bench import gpu_kernels
    from tests.kernels import test_gpu

    (grid,) = [m for m in test_gpu.test_large_matmul_is_exact.pytestmark if m.name == "parametrize"
               and m.args[0][0] == "M"]
    epilogue = {"requant": "requant_relu", "float": "float", "raw": "raw"}  # test_gpu's requant has relu=True
    assert aot.GPU_TEST_MATMULS == tuple((M, N, K, epilogue[kind]) for M, N, K, kind, _ in grid.args[1])
    assert aot.GPU_TEST_CONVS == tuple(test_gpu.RESNET_CONVS)
    assert aot.BENCH_MATMULS == tuple(shape[1:] for shape in gpu_kernels.MATMUL_SHAPES)
    assert aot.BENCH_CONVS == tuple(shape[1:] for shape in gpu_kernels.CONV_SHAPES)
    labels = [case.label for case in aot.launch_cases()]
    assert len(labels) == len(set(labels))  # each case once
    for flags in aot.FLAG_SETS:
        assert any(case.flags == flags for case in aot.launch_cases() if isinstance(case, aot.ConvCase))


@needs_cuda_backend
def test_launches_specialize_as_tritons_jit_does():
    """Recorded launches bound by Triton's binder: ints equal to 1 are constants, multiples of
    16 and the tensors are divisible, odd sizes are plain i32, offsets past int32 are i64,
    `do_not_specialize` ints stay plain; each config the pruner keeps is one specialization;
    `shift_activations` is recorded as a launch of its own; and a spec forced to spill is caught."""
    facts = _in_fresh_process("""
        import json
        from dataclasses import replace
        from dqt_triton.kernels import aot

        cases = [aot.MatmulCase("t", 1, 4096, 4096),
                 aot.MatmulCase("t", 17, 1000, 4100, flags=aot.Flags(per_sample=True, epilogue="raw")),
                 aot.OpCase("t", "add", ("i8", "u8", False, 2**40)), aot.OpCase("t", "mul", ("u8", "u8", True, 7)),
                 aot.OpCase("t", "lut", ("u8", "u8")), aot.MatmulCase("t", 256, 256, 256)]
        launches = aot.record(cases)
        out = {"launches": []}
        for la in launches:
            specs = aot.specializations(la, 90)
            out["launches"].append({"kernel": la.kernel, "case": la.case, "specs": [
                {"signature": dict(s.signature), "ints": s.int_classes(), "tile": s.tile,
                 "divisible": list(s.divisible), "flags": s.flags} for s in specs]})
        specs = aot.deduplicated(launches + launches, 90)
        out["deduplicated"] = [len(specs), len(aot.deduplicated(launches, 90))]
        out["all"] = sum(len(aot.specializations(la, 90)) for la in launches)
        out["shift_cases"] = [s.cases for s in specs if s.kernel == "shift_activations_kernel"]
        out["matched"] = [s.label for s in aot.selected(launches, 80, True, ["int_lut_kernel", "x:u8"])]
        big = max((s for s in specs if s.kernel == "int_matmul_kernel"), key=lambda s: s.tile[0] * s.tile[1])
        forced = replace(big, options=tuple((k, 32 if k == "maxnreg" else v) for k, v in big.options))
        report = aot.compile_specialization(forced, 80)
        out["forced_spill"] = [report.spill_bytes, aot.problems(report)]
        print(json.dumps(out))
    """)
    launches = facts["launches"]
    assert [la["kernel"] for la in launches] == ["shift_activations_kernel", "int_matmul_kernel",
                                                  "shift_activations_kernel", "int_matmul_kernel",
                                                  "int_add_kernel", "int_mul_kernel", "int_lut_kernel",
                                                  "shift_activations_kernel", "int_matmul_kernel"]
    shift = launches[0]["specs"][0]
    assert shift["signature"]["x_ptr"] == "*u8" and shift["signature"]["out_ptr"] == "*i8"
    assert shift["ints"] == {"numel": "D", "SAMPLE_ELEMS": "D"} and "x_ptr" in shift["divisible"]
    # M = 1: a constant; the pruner keeps the 16-row tiles only, and each is a specialization.
    batch1 = launches[1]["specs"]
    assert {tuple(s["tile"]) for s in batch1} == {t for t in _GPU_MATMUL_TILES if t[0] == 16} and len(batch1) > 1
    ints = batch1[0]["ints"]
    assert ints["M"] == ints["stride_xk"] == ints["stride_wk"] == ints["stride_on"] == "1"
    assert ints["N"] == ints["K"] == ints["stride_xm"] == ints["stride_bias"] == "D"  # 4096; [N] constants: 0
    assert batch1[0]["signature"]["M"] == "constexpr" and not batch1[0]["flags"]["BUCKETED"]
    # 17 x 1000 x 4100, per sample: odd sizes and row strides, bucketed.
    odd = launches[3]["specs"][0]
    assert odd["ints"]["M"] == odd["ints"]["N"] == odd["ints"]["K"] == odd["ints"]["stride_xm"] == "i32"
    assert odd["ints"]["M_BUCKET"] == "D" and odd["flags"]["BUCKETED"] and odd["flags"]["EPILOGUE"] == 0
    assert odd["signature"]["out_ptr"] == "*i32" and odd["signature"]["x_ptr"] == "*i8"
    # int_add's k3 = 2^40 is i64; int_mul's k2 = 1 stays a runtime int (do_not_specialize).
    add, mul = launches[4]["specs"][0], launches[5]["specs"][0]
    assert add["signature"]["k3"] == "i64" and add["signature"]["a_ptr"] == "*i8" and add["signature"]["b_ptr"] == "*u8"
    assert mul["signature"]["k2"] == "i32" and "k2" not in mul["divisible"] and mul["signature"]["out_ptr"] == "*u8"
    # 256 x 256 x 256 keeps every matmul tile.
    assert {tuple(s["tile"]) for s in launches[8]["specs"]} == set(_GPU_MATMUL_TILES)
    twice, once = facts["deduplicated"]
    assert twice == once < facts["all"]  # the same launches twice add nothing; equal launches are one
    assert [len(cases) for cases in facts["shift_cases"]] == [2, 1]  # 1x4096x4096 and 256^3: one shift spec
    assert facts["matched"] and all("int_lut_kernel" in m and "x:u8" in m for m in facts["matched"])
    spill, found = facts["forced_spill"]
    assert spill > 0 and any("spills" in p for p in found)  # 32 registers per thread cannot hold the tile


def _spec(kernel="int_matmul_kernel", tile=(16, 64, 64, 4, 4), flags=None, ints=None, out="*i32"):
    """A synthetic specialization (no compiler needed)."""
    flags = {"BUCKETED": False, "EPILOGUE": 0, **(flags or {})}
    consts = dict(flags, BLOCK_M=tile[0], BLOCK_N=tile[1], BLOCK_K=tile[2])
    ints = ints or {"M": "D", "K": "D"}
    signature = [("x_ptr", "*i8"), ("out_ptr", out)]
    signature += [(k, "constexpr" if v == "1" else "i32") for k, v in ints.items()]
    signature += [(k, "constexpr") for k in consts]
    constexprs = tuple((k, 1) for k, v in ints.items() if v == "1") + tuple(consts.items())
    divisible = ("x_ptr", "out_ptr") + tuple(k for k, v in ints.items() if v == "D")
    options = (("num_warps", tile[3]), ("num_stages", tile[4]))
    return aot.Specialization(kernel, tuple(signature), constexprs, divisible, options, tuple(consts))


def test_covering_subset_holds_every_tile_flag_value_and_argument_class():
    specs = [_spec(), _spec(flags={"BUCKETED": True}), _spec(tile=(64, 64, 64, 4, 3)),
             _spec(ints={"M": "1", "K": "i32"}), _spec(flags={"EPILOGUE": 1}, out="*u8"), _spec(out="*u8"),
             _spec(flags={"BUCKETED": True}, tile=(64, 64, 64, 4, 3))]
    chosen = aot.covering_subset(specs)
    assert set().union(*map(aot._features, chosen)) == set().union(*map(aot._features, specs))
    assert len(chosen) < len(specs)
    assert {s.tile for s in chosen} == {s.tile for s in specs}
    assert {s.flags["BUCKETED"] for s in chosen} == {False, True}
    assert any(s.int_classes()["M"] == "1" for s in chosen) and any(s.int_classes()["K"] == "i32" for s in chosen)
    assert aot.covering_subset([]) == []


def test_problems_name_each_check_that_fails():
    """`problems` on hand-made reports: each failing check is named; a per-lane access guarded
    the same in every thread passes only where a size is the constant 1."""
    clean = aot.Report(_spec(), 90, int8_mma="mma.sync s8", kloop_instructions=40, unguarded_scalar_loads=1)
    assert aot.problems(clean) == []
    broken = [
        (dict(spill_bytes=8), "spills 8 bytes"),
        (dict(int8_mma=None), "uses no int8 tensor-core MMA, expected mma.sync s8"),
        (dict(kloop_instructions=None), "no MMA inside a loop"),
        (dict(register_a_wgmma=2), "2 wgmma with A from registers"),
        (dict(unguarded_per_lane=["12: ld.global.b8 ..."]), "1 unguarded per-lane global accesses"),
        (dict(unguarded_scalar_loads=2), "2 unguarded scalar loads, the source has 1"),
        (dict(uniform_guards=3), "3 per-lane global accesses guarded the same in every thread"),
        (dict(shared=300 * 1024), "needs 307200 bytes of shared memory"),
    ]
    for change, message in broken:
        found = aot.problems(aot.Report(**{**clean.__dict__, **change}))
        assert len(found) == 1 and found[0].startswith(message), (change, found)
    batch1 = aot.Report(**{**clean.__dict__, "spec": _spec(ints={"M": "1", "K": "D"}), "uniform_guards": 3})
    assert aot.problems(batch1) == []
    assert aot.problems(aot.Report(_spec(), 90, error="PTXASError: ...")) == ["does not compile: PTXASError: ..."]
    wgmma = aot.Report(_spec(tile=(64, 64, 64, 8, 4)), 90, int8_mma="mma.sync s8", kloop_instructions=40,
                       unguarded_scalar_loads=1)
    assert aot.problems(wgmma) == ["uses mma.sync s8, expected wgmma s8"]


# ----------------------------------------------------------------------------- the PTX checks

WGMMA_SHARED_A = ("wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%r1,%r2,%r3,%r4,%r5,%r6,%r7,%r8}, "
                  "%rd33, %rd34, 0;")
WGMMA_REGISTER_A = ("wgmma.mma_async.sync.aligned.m64n64k32.s32.s8.s8 {%r1,%r2,%r3,%r4,%r5,%r6,%r7,%r8}, "
                    "{%r9,%r10,%r11,%r12}, %rd33, 0;")


def test_register_a_wgmma_tells_the_two_operand_forms_apart():
    """With A in shared memory the operand after the accumulator is a descriptor (as the real
    PTX of a kernel that feeds `tl.dot` a tile as loaded); from registers it is a brace list (a
    tile shifted in registers first). Forms copied from Triton 3.9 sm_90 PTX."""
    assert aot.register_a_wgmma(WGMMA_SHARED_A) == []
    assert aot.register_a_wgmma(f"\t{WGMMA_REGISTER_A} // a comment") == [f"{WGMMA_REGISTER_A} // a comment"]
    assert len(aot.register_a_wgmma("\n".join(["\t" + WGMMA_SHARED_A, "\t" + WGMMA_REGISTER_A]))) == 1
    assert aot.register_a_wgmma("\twgmma.fence.sync.aligned;\n\twgmma.commit_group.sync.aligned;") == []


ACCESS_PTX = """
    ld.param.b64 	%rd1, [k_param_0];
    ld.param.b64 	%rd2, [k_param_1];
    ld.param.b32 	%r1, [k_param_2];
    mov.u32 	%r2, %tid.x;
    and.b32 	%r3, %r2, 127;
    setp.lt.s32 	%p1, %r3, %r1;
    setp.gt.s32 	%p4, %r1, 0;
    mul.wide.s32 	%rd3, %r3, 4;
    add.s64 	%rd4, %rd1, %rd3;
    // begin inline asm
    mov.u32 %r10, 0x0;
    @%p1 ld.global.b32 { %r10 }, [ %rd4 + 0 ];
    // end inline asm
    ld.global.b32 { %r11 }, [ %rd2 + 0 ];
    ld.global.v2.b32 { %r12, %r13 }, [ %rd4 + 0 ];
    @%p4 ld.global.b32 { %r14 }, [ %rd4 + 4 ];
    @%p4 ld.global.b32 { %r15 }, [ %rd2 + 4 ];
    mov.b64 	%rd5, %rd4;
$L__BB0_1:
    add.s64 	%rd6, %rd5, 64;
    mov.b64 	%rd5, %rd6;
    selp.b32 	%r20, 16, 0, %p1;
    selp.b32 	%r22, 16, 0, %p4;
    cp.async.cg.shared.global [ %r21 + 0 ], [ %rd5 + 0 ], 0x10, %r20;
    cp.async.cg.shared.global [ %r21 + 16 ], [ %rd5 + 16 ], 0x10, %r22;
    cp.async.cg.shared.global [ %r21 + 32 ], [ %rd5 + 32 ], 0x10;
    @%p2 bra 	$L__BB0_1;
    mov.pred 	%p3, -1;
    @%p3 st.global.b32 [ %rd4 + 0 ], { %r10 };
    { .reg .pred %p9; @%p1 st.global.v4.b32 [ %rd4 + 0 ], { %r10, %r11, %r12, %r13 }; }
    st.global.b8 [ %rd6 + 0 ], { %r11 };
    ld.b32 %r30, [ %rd4 + 0 ];
"""


def test_global_accesses_find_every_unguarded_per_lane_access():
    """Per lane: the address depends on %tid (through a loop-carried register too). Guarded: a
    predicate that is not a constant, or a cp.async src-size register; a guard the same in every
    thread (the pipeliner's "this K step exists") is guarded but counted apart. A scalar load
    from a parameter's address is told apart from the tile loads; a generic-address load counts."""
    accesses = aot.global_accesses(ACCESS_PTX)

    def at(fragment: str) -> aot.GlobalAccess:
        (found,) = [a for a in accesses if fragment in a.text]
        return found

    def short(a: aot.GlobalAccess) -> str:
        return a.text.split("[")[0] + a.text.split("[")[-1]

    assert len(accesses) == 12
    assert at("{ %r10 }, [ %rd4 + 0 ]").per_lane and at("{ %r10 }, [ %rd4 + 0 ]").guarded
    scalar = at("{ %r11 }, [ %rd2 + 0 ]")
    assert not scalar.per_lane and not scalar.guarded and scalar.is_load
    assert at("{ %r15 }").guarded and not at("{ %r15 }").per_lane  # a predicated scalar load
    assert {short(a) for a in accesses if a.per_lane and not a.guarded} == {
        "ld.global.v2.b32 { %r12, %r13 },  %rd4 + 0 ]",  # unmasked
        "cp.async.cg.shared.global  %rd5 + 32 ], 0x10",  # no src-size
        "@%p3 st.global.b32  %rd4 + 0 ], { %r10 }",  # a constant predicate
        "st.global.b8  %rd6 + 0 ], { %r11 }",  # per lane through the loop
        "ld.b32 %r30,  %rd4 + 0 ]",  # generic address
    }
    assert {short(a) for a in accesses if a.uniform_guard} == {
        "@%p4 ld.global.b32 { %r14 },  %rd4 + 4 ]", "cp.async.cg.shared.global  %rd5 + 16 ], 0x10, %r22"}
    assert at("+ 0 ], 0x10, %r20").guarded and not at("+ 0 ], 0x10, %r20").uniform_guard  # a per-lane src-size
    assert at("st.global.v4.b32").guarded  # inside a scope block


CONTROL_KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def control_kernel(x_ptr, w_ptr, out_ptr, shift_ptr, n, K, MODE: tl.constexpr):
    """A pipelined int8 K loop. MODE 0: masked tiles, A as loaded, one scalar load; 1: x loaded
    unmasked; 2: x shifted in registers before the dot; 3: the store unmasked."""
    rm = tl.arange(0, 64)
    rn = tl.arange(0, 64)
    rk = tl.arange(0, 32)
    rows = rm[:, None] < n
    k = tl.load(shift_ptr)
    acc = tl.zeros((64, 64), dtype=tl.int32)
    for k0 in range(0, K, 32):
        x_ptrs = x_ptr + rm[:, None] * K + (k0 + rk)[None, :]
        if MODE == 1:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=rows & ((k0 + rk)[None, :] < K), other=0)
        w = tl.load(w_ptr + (k0 + rk)[:, None] * 64 + rn[None, :], mask=(k0 + rk)[:, None] < K, other=0)
        if MODE == 2:
            x = (x.to(tl.int32) >> k).to(tl.int8)
        acc = tl.dot(x, w, acc, out_dtype=tl.int32)
    acc += k
    if MODE == 3:
        tl.store(out_ptr + rm[:, None] * 64 + rn[None, :], acc)
    else:
        tl.store(out_ptr + rm[:, None] * 64 + rn[None, :], acc, mask=rows)
'''


@needs_cuda_backend
def test_checks_catch_real_ptx_built_to_fail_them(tmp_path):
    """Positive controls on real sm_90 PTX, with odd and with 16-aligned sizes: an unmasked tile
    load or store is an unguarded per-lane access (or, for async copies in the pipelined loop,
    guarded only by the pipeliner's thread-independent "this K step exists", counted apart), a
    tile shifted in registers feeds wgmma from registers, and the clean kernel has none of these,
    its one scalar load seen as scalar."""
    (tmp_path / "control.py").write_text(CONTROL_KERNELS)
    found = _in_fresh_process("""
        import json
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from control import control_kernel
        from dqt_triton.kernels import aot

        signature = {"x_ptr": "*i8", "w_ptr": "*i8", "out_ptr": "*i32", "shift_ptr": "*i32", "n": "i32", "K": "i32",
                     "MODE": "constexpr"}
        aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 5)}
        out = []
        for mode in range(4):
            for attrs in ({}, aligned):
                source = ASTSource(control_kernel, signature, {(6,): mode}, attrs)
                options = {"num_warps": 4, "num_stages": 3}
                ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
                accesses = aot.global_accesses(ptx)
                out.append({"mode": mode, "aligned": bool(attrs), "register_a": len(aot.register_a_wgmma(ptx)),
                            "wgmma": "wgmma.mma_async" in ptx, "async": "cp.async.cg" in ptx,
                            "unguarded_per_lane": sum(a.per_lane and not a.guarded for a in accesses),
                            "unguarded_scalar": sum(not a.per_lane and not a.guarded for a in accesses),
                            "guarded": sum(a.guarded for a in accesses),
                            "uniform_guards": sum(a.uniform_guard for a in accesses)})
        print(json.dumps(out))
    """, tmp_path)
    assert len(found) == 8 and all(f["wgmma"] and f["unguarded_scalar"] == 1 and f["guarded"] > 0 for f in found)
    assert {f["async"] for f in found} == {False, True}  # per-byte loads (odd) and async copies (aligned)
    for f in found:
        mode = f["mode"]
        assert (f["register_a"] > 0) == (mode == 2), f
        if mode == 1 and f["aligned"]:  # async copies only the pipeliner's uniform "K step exists" guards
            assert f["unguarded_per_lane"] == 0 and f["uniform_guards"] > 0, f
        else:
            assert (f["unguarded_per_lane"] > 0) == (mode in (1, 3)) and f["uniform_guards"] == 0, f


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
