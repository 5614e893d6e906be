"""Ahead-of-time compilation of the kernels as real launches specialize them, on any machine.

Triton compiles for a target it is not running on (`triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))`): nothing runs, but whatever the GPU compiler refuses is
refused here too, and the PTX and cubin tell what a GPU run depends on.

What is compiled is what the launchers really launch. `record` calls the public ops
(`int_matmul`, `int_conv2d`, prepared layers, a frozen ResNet, the element-wise, pooling and
lookup ops) with CPU tensors while every kernel's `run` is replaced by a recorder that keeps
the arguments and launches nothing (`shift_activations` is a launch too: recorded, not run).
`specializations` then binds each recorded launch with Triton's own binder for the target
(`create_function_from_signature` and `JITFunction._pack_args`, the code `JITFunction.run`
runs), so the rules are Triton's: an int argument equal to 1 becomes a constant, ints divisible
by 16 and 16-byte-aligned tensors get the divisibility attribute, ints outside int32 are i64,
`do_not_specialize` arguments keep neither. For the autotuned GEMM and conv kernels each
config that survives the kernel's `early_config_prune` for that launch is a specialization
(the autotuner compiles every one to time it). Specializations are deduplicated by (kernel,
signature, constexprs, divisibility, options: warps, stages).

`launch_cases` lists what is recorded: the launches of tests/kernels/test_gpu.py (its matmul
shapes, ResNet convs and the frozen ResNet-18), of bench/gpu_kernels.py, the odd shapes of
tests/kernels/test_bounds.py and an aligned matmul and conv, each with flag sets that give
every flag each value (per-sample or per-layer weight shifts, uint8 or int8 codes, floor or
round, each epilogue with [N] constants or [8, N] tables, pre-shifted weight tables as a frozen
program runs or weights shifted in the K loop as the ops called directly run), the fixed shapes
of tests/kernels/test_gemm.py, and the element-wise, pooling and lookup calls of the tests.
`covering_subset` picks a few of the resulting specializations that still hold every tile,
every flag value, odd and aligned arguments: what CI compiles; ``--launches`` compiles them all.

`compile_specialization` compiles one for sm_90 or sm_80 and checks (`problems`):

- int8 tensor-core MMA inside the GEMM/conv main loop: wgmma s8 on sm_90 for tiles it accepts
  (BLOCK_M a multiple of 64, warps a multiple of 4), mma.sync s8 otherwise;
- no `wgmma.mma_async` with its left operand (A) in registers (`register_a_wgmma`): with A in
  shared memory the operand after the accumulator's brace list is a descriptor (a 64-bit
  register), with A in registers it is a brace list of registers, the form that meets a ptxas
  hazard (triton#9433) and the one the kernels avoid by shifting activations before the loop;
- every per-lane global access guarded (`global_accesses`). A global access is an `ld.global`,
  `st.global`, `atom.global`, `red.global`, a `cp.async` from global memory, or an `ld`/`st`
  with a generic address. It is per-lane when its address depends on the thread index: the
  address registers are traced back through the PTX (an instruction that writes a register
  from %tid, %laneid, %warpid or an already per-lane register, or under a per-lane predicate,
  makes it per-lane; a fixed point over the whole kernel, so loop-carried values count). A
  per-lane access is guarded by a predicate (`@%p` / `@!%p`, not one only ever set to a
  constant) or, for `cp.async`, by a src-size register (masked lanes copy 0 bytes and
  zero-fill). Every tile access of the kernels is masked, so an unguarded per-lane access is a
  load or store no mask keeps in bounds. The rest are scalar, one address for every thread.
  The kernels have a few on purpose, unmasked and in bounds by construction:
  `tl.load(weight_shift_ptr)` (per-layer shift) and the 9 entries of `bucket_start` read by
  `common.rows_of_tile` with per-sample shifts; the unguarded scalar loads are checked against
  that count (`expected_scalar_loads`). A per-lane access whose guard is the same in every
  thread (`GlobalAccess.uniform_guard`) is what an unmasked tile in a pipelined loop gets (the
  pipeliner's "this K step exists"); it passes only where a size specialized to 1 lets LLVM
  fold a real mask into such a guard (`size_one_masks`);
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

# Shared memory per block: H100 227 KB, A100 163 KB (opt-in maxima).
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}

GEMM_KERNELS = ("int_matmul_kernel", "int_conv2d_kernel")
# Where each launched kernel lives (module of dqt_triton.kernels, attribute).
KERNEL_HOMES = {
    "int_matmul_kernel": "gemm", "int_conv2d_kernel": "gemm",
    "shift_activations_kernel": "elementwise", "int_add_kernel": "elementwise", "int_mul_kernel": "elementwise",
    "int_lut_kernel": "elementwise", "int_pool2d_kernel": "pool", "int_adaptive_avg_pool2d_kernel": "pool",
}
# Unguarded scalar loads a kernel may issue (see the module docstring): bucket_start[0..8] with
# per-sample weight shifts (BUCKETED), the one per-layer weight shift otherwise.
BUCKET_ENTRIES = 9


def expected_scalar_loads(kernel: str, constexprs: dict) -> int:
    """How many unguarded scalar loads the kernel's source asks for (module docstring)."""
    if kernel in GEMM_KERNELS:
        return BUCKET_ENTRIES if constexprs.get("BUCKETED") else 1
    return 0


def _kernel_objects(homes: Optional[dict] = None) -> dict:
    """name -> the launched object (an Autotuner for the GEMM and conv kernels, else a JITFunction)."""
    import importlib

    return {name: getattr(importlib.import_module(f"dqt_triton.kernels.{home}"), name)
            for name, home in (KERNEL_HOMES if homes is None else homes).items()}


# The yardstick of the K-loop comparison is compiled too, never launched.
COMPILED_HOMES = {**KERNEL_HOMES, "plain_int8_matmul_kernel": "plain"}


def _jit_function(kernel):
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):  # the autotuner wraps the jit function
        kernel = kernel.fn
    return kernel


# ----------------------------------------------------------------------------- recording launches


@dataclass(frozen=True)
class TensorArg:
    """What Triton's binder reads of a tensor argument (dtype and address), kept instead of the
    tensor so a recorded launch does not hold its memory."""

    dtype: object
    address: int
    shape: tuple
    strides: tuple

    def data_ptr(self) -> int:
        return self.address


@dataclass
class Launch:
    """One kernel launch as the launcher made it: positional arguments and keywords."""

    kernel: str
    args: tuple
    kwargs: dict
    case: str


def _as_recorded(value):
    import torch

    if isinstance(value, torch.Tensor):
        return TensorArg(value.dtype, value.data_ptr(), tuple(value.shape), tuple(value.stride()))
    return value


@contextlib.contextmanager
def recording() -> Iterator[tuple[list, list]]:
    """Record kernel launches instead of running them: yields (launches, case), where `case[0]`
    names the launch case in progress. Patches the `run` of every kernel object (an instance
    attribute, removed afterwards) and lets the ops send CPU tensors to the Triton backend."""
    from dqt_triton import dispatch
    from dqt_triton.kernels.common import interpreting

    if interpreting():
        raise RuntimeError("recording launches needs the compiled kernels: unset TRITON_INTERPRET before importing "
                           "dqt_triton (the interpreter's kernels and tiles are not the GPU's)")
    launches: list = []
    case = [""]
    objects = _kernel_objects()

    def recorder(name: str) -> Callable:
        def run(*args, grid, warmup, **kwargs):
            launches.append(Launch(name, tuple(_as_recorded(a) for a in args),
                                   {k: _as_recorded(v) for k, v in kwargs.items()}, case[0]))
        return run

    saved = dispatch.triton_interpreter_enabled
    for name, obj in objects.items():
        obj.run = recorder(name)
    dispatch.triton_interpreter_enabled = lambda: True  # CPU tensors may reach the Triton launchers
    try:
        yield launches, case
    finally:
        dispatch.triton_interpreter_enabled = saved
        for obj in objects.values():
            del obj.run


# ----------------------------------------------------------------------------- launch cases

# (per-sample weight shifts, uint8 codes, round rule, epilogue, [8, N] tables, pre-shifted weights):
# eight sets in which every flag takes each value and each epilogue appears twice (the bounds
# test runs them too).
FLAG_SETS = (
    (True, True, True, "requant_relu", True, True),  # a frozen dynamic model
    (False, False, False, "raw", False, False),
    (True, False, True, "float", False, True),
    (False, True, False, "requant", True, False),
    (True, True, False, "raw", True, False),
    (False, False, True, "requant_relu", False, True),
    (True, False, False, "requant", False, False),
    (False, True, True, "float", True, True),
)


@dataclass(frozen=True)
class MatmulCase:
    """One `int_matmul` call (or a prepared layer's `run_prepared`) on x [M, K] and w [N, K]."""

    source: str
    M: int
    N: int
    K: int
    per_sample: bool = False
    unsigned: bool = True
    round_rule: bool = False
    epilogue: str = "requant_relu"
    tables: bool = False
    prepared: bool = False
    x_strides: Optional[tuple] = None  # x read in place through these strides (a view of a larger buffer)
    w_strides: Optional[tuple] = None
    out_dtype: str = ""  # "u8" / "i8": a requantized output type other than the default (uint8 with ReLU, else int8)

    @property
    def label(self) -> str:
        return f"{self.source}: matmul {self.M}x{self.N}x{self.K} {_flags_label(self)}"


@dataclass(frozen=True)
class ConvCase:
    """One `int_conv2d` call (or prepared layer) on x [B, C, H, W] and w [Cout, C/g, k, k]."""

    source: str
    B: int
    C: int
    H: int
    W: int
    Cout: int
    k: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    nchw: bool = False  # NCHW input (else channels_last)
    per_sample: bool = True
    unsigned: bool = True
    round_rule: bool = False
    epilogue: str = "requant_relu"
    tables: bool = False
    prepared: bool = False

    @property
    def label(self) -> str:
        geometry = f"{self.B}x{self.C}x{self.H}x{self.W}->{self.Cout} k{self.k} s{self.stride} p{self.padding}"
        geometry += f" d{self.dilation}" * (self.dilation > 1) + f" g{self.groups}" * (self.groups > 1)
        return f"{self.source}: conv {geometry}{' nchw' * self.nchw} {_flags_label(self)}"


@dataclass(frozen=True)
class OpCase:
    """Element-wise, pooling, lookup or model calls, described by `run_op_case`."""

    source: str
    op: str
    params: tuple = ()

    @property
    def label(self) -> str:
        return f"{self.source}: {self.op} {' '.join(map(str, self.params))}".strip()


def _flags_label(case) -> str:
    out = getattr(case, "out_dtype", "")
    return " ".join([("per-sample" if case.per_sample else "per-layer"), ("u8" if case.unsigned else "i8"),
                     ("round" if case.round_rule else "floor"), case.epilogue + (f" to {out}" if out else "")]
                    + ["tables"] * case.tables + ["prepared"] * case.prepared)


def _with_flags(case, flags):
    per_sample, unsigned, round_rule, epilogue, tables, prepared = flags
    return replace(case, per_sample=per_sample, unsigned=unsigned, round_rule=round_rule, epilogue=epilogue,
                   tables=tables, prepared=prepared)


# tests/kernels/test_gpu.py: (M, N, K, epilogue); per layer and per sample each.
GPU_TEST_MATMULS = ((1, 4096, 4096, "requant_relu"), (16, 4096, 4096, "float"), (17, 1000, 4100, "raw"),
                    (768, 3072, 768, "requant_relu"), (4096, 4096, 4096, "requant_relu"), (8192, 8192, 8192, "raw"))
# tests/kernels/test_gpu.py RESNET_CONVS: (B, Cin, H, Cout, k, stride, groups)
GPU_TEST_CONVS = ((8, 3, 224, 64, 7, 2, 1), (8, 64, 56, 64, 3, 1, 1), (8, 256, 56, 64, 1, 1, 1),
                  (8, 128, 56, 128, 3, 2, 1), (8, 256, 14, 256, 3, 1, 1), (8, 512, 7, 2048, 1, 1, 1),
                  (16, 64, 32, 64, 3, 1, 1), (8, 96, 28, 96, 3, 1, 96))
# bench/gpu_kernels.py MATMUL_SHAPES (M, N, K) and CONV_SHAPES (B, Cin, H, Cout, k, stride).
BENCH_MATMULS = ((4096, 4096, 4096), (8192, 8192, 8192), (256, 1000, 2048), (4096, 3072, 768), (4096, 768, 3072),
                 (1, 4096, 4096), (4, 4096, 4096), (16, 4096, 4096), (16, 11008, 4096))
BENCH_CONVS = ((256, 3, 224, 64, 7, 2), (256, 64, 56, 64, 3, 1), (256, 128, 28, 128, 3, 1),
               (256, 256, 14, 256, 3, 1), (256, 512, 7, 512, 3, 1), (256, 128, 56, 128, 3, 2),
               (256, 256, 56, 64, 1, 1), (256, 1024, 14, 256, 1, 1), (256, 64, 32, 64, 3, 1),
               (256, 128, 16, 128, 3, 1), (256, 256, 8, 256, 3, 1), (256, 512, 4, 512, 3, 1))
# The odd shapes tests/kernels/test_bounds.py runs (it imports them from here): matmuls (M, K, N)
# and convs (B, C, H, W, Cout, kernel, stride, padding, dilation, groups, NCHW input).
BOUNDS_MATMULS = ((64, 45, 37), (1, 13, 23), (17, 13, 23), (150, 40, 70), (33, 300, 130))
BOUNDS_CONVS = ((2, 16, 9, 9, 24, 3, 2, 1, 1, 1, False), (3, 24, 7, 6, 24, 3, 1, 1, 1, 24, False),
                (1, 3, 11, 9, 16, 7, 2, 3, 1, 1, True), (2, 64, 5, 5, 40, 1, 1, 0, 1, 1, False),
                (2, 12, 9, 9, 18, 3, 1, 2, 2, 3, True))


def _gpu_test_cases() -> list:
    cases = []
    for M, N, K, epilogue in GPU_TEST_MATMULS:
        for per_sample in (False, True):
            cases.append(MatmulCase("test_gpu", M, N, K, per_sample=per_sample, epilogue=epilogue))
    for B, C, H, Cout, k, stride, groups in GPU_TEST_CONVS:
        cases.append(ConvCase("test_gpu", B, C, H, H, Cout, k, stride=stride, padding=k // 2, groups=groups))
    cases.append(MatmulCase("test_gpu", 64, 128, 256, epilogue="requant"))  # the bit-width recompile test
    cases += [OpCase("test_gpu", "frozen_resnet18_cifar", (mode,)) for mode in ("uniform4", "dynamic")]
    return cases


def _bench_cases() -> list:
    """bench/gpu_kernels.py: requantize + ReLU to uint8, per layer, per sample and raw int32
    through the ops, per layer and per sample through a prepared layer."""
    cases = []
    for M, N, K in BENCH_MATMULS:
        base = MatmulCase("bench", M, N, K)
        cases += [base, replace(base, per_sample=True), replace(base, epilogue="raw"), replace(base, prepared=True),
                  replace(base, per_sample=True, prepared=True)]
    for B, C, H, Cout, k, stride in BENCH_CONVS:
        base = ConvCase("bench", B, C, H, H, Cout, k, stride=stride, padding=k // 2, per_sample=False)
        cases += [base, replace(base, per_sample=True), replace(base, prepared=True),
                  replace(base, per_sample=True, prepared=True)]
    return cases


def _flag_sweep_cases() -> list:
    """The odd shapes of the bounds test and an aligned matmul and conv, each with every flag set."""
    shapes = [MatmulCase("bounds", M, N, K) for M, K, N in BOUNDS_MATMULS]
    shapes += [ConvCase("bounds", B, C, H, W, Cout, k, stride, pad, dil, groups, nchw)
               for B, C, H, W, Cout, k, stride, pad, dil, groups, nchw in BOUNDS_CONVS]
    shapes += [MatmulCase("aligned", 512, 256, 512), ConvCase("aligned", 8, 64, 32, 32, 64, 3, padding=1)]
    return [_with_flags(shape, flags) for shape in shapes for flags in FLAG_SETS]


def _other_test_cases() -> list:
    """Fixed shapes of tests/kernels/test_gemm.py and the element-wise, pooling and lookup
    calls of the tests and the frozen models (test_bounds' GPU-block test, test_elementwise_pool)."""
    cases = [MatmulCase("test_gemm", 64, 37, 45, per_sample=True, epilogue="raw"),
             MatmulCase("test_gemm", 2048, 32, 1, per_sample=True, epilogue="raw"),
             MatmulCase("test_gemm", 150, 20, 40, per_sample=True),
             MatmulCase("test_gemm", 37, 9, 70, per_sample=True, epilogue="raw", x_strides=(1, 37), w_strides=(280, 2)),
             MatmulCase("test_gemm", 2048, 32, 1, epilogue="raw", round_rule=True),
             MatmulCase("test_gemm", 5, 2, 1, unsigned=False, epilogue="requant"),
             MatmulCase("test_gemm", 5, 2, 1, unsigned=False, epilogue="requant", out_dtype="u8"),
             MatmulCase("test_gemm", 150, 70, 40, per_sample=True, unsigned=False, tables=True),
             MatmulCase("test_gemm", 6, 5, 33, per_sample=True, round_rule=True, epilogue="raw", prepared=True),
             ConvCase("test_gemm", 2, 40, 6, 6, 48, 3, padding=1),
             ConvCase("test_gemm", 1, 3, 11, 9, 16, 7, stride=2, padding=3, nchw=True, per_sample=False,
                      epilogue="float")]
    # tests/kernels/test_bounds.py's GPU-block test (a, b: uint8 [3, 7, 11, 13] channels_last; s: int8
    # [2, 5, 9, 7] NCHW), and what test_elementwise_pool adds on its random shapes: int8 operands,
    # offsets past int32, ReLU, other layouts and sizes (an odd element count).
    a, s, odd = ("channels_last", (3, 7, 11, 13)), ("nchw", (2, 5, 9, 7)), ("nchw", (3, 7, 11, 13))
    ops = [("add", ("u8", "u8", False, 100)), ("add", ("i8", "u8", False, 2**40)), ("add", ("u8", "i8", True, 0)),
           ("mul", ("u8", "u8", True, 7)), ("mul", ("i8", "i8", False, 2**40)),
           ("max_pool", ("u8", *a, 3, 2, 1, False)), ("max_pool", ("i8", *s, 3, 2, 0, True)),
           ("avg_pool", ("i8", *s, 2, 1, 1, False)), ("avg_pool", ("i8", *odd, 2, 1, 1, False)),
           ("avg_pool", ("u8", *a, 3, 2, 1, False)),
           ("adaptive_avg_pool", ("u8", *a, 3, 5)), ("adaptive_avg_pool", ("i8", *s, 1, 1)),
           ("lut", ("i8", "i8")), ("lut", ("u8", "u8")), ("lut", ("u8", "i8"))]
    return cases + [OpCase("test_elementwise", op, params) for op, params in ops]


def launch_cases() -> list:
    """Every launch case (see the module docstring), in a fixed order."""
    return _gpu_test_cases() + _bench_cases() + _flag_sweep_cases() + _other_test_cases()


def _epilogue_kwargs(n: int, epilogue: str, tables: bool) -> dict:
    import torch

    rows = (8, n) if tables else (n,)
    kwargs = {"bias": torch.zeros(rows, dtype=torch.int32)}
    if epilogue.startswith("requant"):
        kwargs.update(multiplier=torch.full(rows, 1 << 30), shift=torch.full((n,), 40), relu=epilogue == "requant_relu")
    elif epilogue == "float":
        kwargs["out_scale"] = torch.full(rows, 1e-6)
    return kwargs


def _shift_args(samples: int, per_sample: bool):
    import torch

    if per_sample:
        return torch.zeros(samples, dtype=torch.int64), torch.arange(samples, dtype=torch.int64) % 8
    return 1, 2


def _in_place(t, strides: Optional[tuple]):
    """t, or a copy of it read through `strides` out of a larger buffer (a view, as the tests pass)."""
    import torch

    if strides is None:
        return t
    span = sum((n - 1) * s for n, s in zip(t.shape, strides)) + 1
    return torch.as_strided(torch.zeros(span, dtype=t.dtype), t.shape, strides)


def run_gemm_case(case, layers: Optional[dict] = None) -> None:
    """Call the op (or prepared layer) of a MatmulCase or ConvCase with CPU tensors of zeros;
    `layers` keeps the prepared layers between calls."""
    import torch

    import dqt_triton as dq

    x_dtype = torch.uint8 if case.unsigned else torch.int8
    rule = "round" if case.round_rule else "floor"
    if isinstance(case, MatmulCase):
        x = _in_place(torch.zeros((case.M, case.K), dtype=x_dtype), case.x_strides)
        w = _in_place(torch.zeros((case.N, case.K), dtype=torch.int8), case.w_strides)
        conv, n, samples = None, case.N, case.M
    else:
        x = torch.zeros((case.B, case.C, case.H, case.W), dtype=x_dtype)
        if not case.nchw:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.zeros((case.Cout, case.C // case.groups, case.k, case.k), dtype=torch.int8)
        conv = {"stride": case.stride, "padding": case.padding, "dilation": case.dilation, "groups": case.groups}
        n, samples = case.Cout, case.B
    ka, kw = _shift_args(samples, case.per_sample)
    kwargs = _epilogue_kwargs(n, case.epilogue, case.tables)
    if getattr(case, "out_dtype", ""):
        kwargs["out_dtype"] = {"u8": torch.uint8, "i8": torch.int8}[case.out_dtype]
    if case.prepared:
        # One layer serves every call with its weights, as in the benchmark and a frozen program
        # (its pre-shifted table is built at the first call); the cases of one layer are neighbours.
        layers = {} if layers is None else layers
        key = replace(case, source="", per_sample=False)
        if key not in layers:
            layers.clear()
            layers[key] = dq.ops.prepare_layer(w, x_dtype=x_dtype, conv=conv, shift_rule=rule, **kwargs)
        shifts = [s.to(torch.int32) if isinstance(s, torch.Tensor) else s for s in (ka, kw)]
        dq.ops.run_prepared(layers[key], x, *shifts, backend="triton")
    elif conv is None:
        dq.int_matmul(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="triton", **kwargs)
    else:
        dq.int_conv2d(x, w, act_shift=ka, weight_shift=kw, shift_rule=rule, backend="triton", **conv, **kwargs)


def run_op_case(case: OpCase) -> None:
    """The element-wise, pooling and lookup calls, and a frozen ResNet-18 (the program
    tests/kernels/test_gpu.py runs: ResNet-18 CIFAR, width 8, batch 6 at 16x16)."""
    import torch

    import dqt_triton as dq

    dtypes = {"u8": torch.uint8, "i8": torch.int8}

    def codes(code: str, layout: str = "channels_last", shape: tuple = (3, 7, 11, 13)) -> torch.Tensor:
        x = torch.zeros(shape, dtype=dtypes[code])
        return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x

    if case.op == "frozen_resnet18_cifar":
        from dqt_triton import models

        (mode,) = case.params
        model = dq.DQTModel.from_float(models.resnet18_cifar(10, 3, 8), (3, 16, 16), candidate_bits=(2, 4, 6, 8),
                                       dynamic=mode == "dynamic")
        if mode == "uniform4":
            model.set_bits(4)
        frozen = model.eval().freeze()
        with dq.use_backend("triton"):
            frozen(torch.zeros((6, 3, 16, 16), dtype=torch.uint8))
    elif case.op == "add":
        a_code, b_code, relu, offset = case.params
        dq.int_add(codes(a_code), codes(b_code), k1=3, k2=-2, k3=offset, shift=2, relu=relu, backend="triton")
    elif case.op == "mul":
        a_code, b_code, relu, offset = case.params
        dq.int_mul(codes(a_code), codes(b_code), k1=5, k2=1, k3=-1, k4=offset, shift=9, relu=relu, backend="triton")
    elif case.op in ("max_pool", "avg_pool"):
        code, layout, shape, kernel, stride, padding, ceil_mode = case.params
        x = codes(code, layout, shape)
        if case.op == "max_pool":
            dq.int_max_pool2d(x, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode, backend="triton")
        else:
            dq.int_avg_pool2d(x, kernel, stride=stride, padding=padding, backend="triton")
    elif case.op == "adaptive_avg_pool":
        code, layout, shape, oh, ow = case.params
        dq.int_adaptive_avg_pool2d(codes(code, layout, shape), (oh, ow), backend="triton")
    elif case.op == "lut":
        code, table_code = case.params
        dq.int_lut(codes(code, "nchw", (2, 5, 9, 7)), torch.zeros(256, dtype=dtypes[table_code]), backend="triton")
    else:
        raise ValueError(f"unknown op case {case.op!r}")


def record(cases=None) -> list[Launch]:
    """The launches the cases make (all of `launch_cases()` by default), nothing run."""
    cases = launch_cases() if cases is None else cases
    layers: dict = {}
    with recording() as (launches, current):
        for case in cases:
            current[0] = case.label
            before = len(launches)
            if isinstance(case, OpCase):
                run_op_case(case)
            else:
                run_gemm_case(case, layers)
            if len(launches) == before:
                raise RuntimeError(f"launch case {case.label} launched no kernel")
    return launches


# ----------------------------------------------------------------------------- specializations


@dataclass(frozen=True)
class Specialization:
    """A kernel as one launch specializes it for one target: what `triton.compile` gets."""

    kernel: str
    signature: tuple  # ((arg name, "*i8" | "i32" | "i64" | "constexpr" ...), ...) in argument order
    constexprs: tuple  # ((arg name, value), ...): declared constexprs and ints equal to 1
    divisible: tuple  # names of the arguments with the divisibility-by-16 attribute
    options: tuple  # ((option, value), ...) as the launch passes them (num_warps, num_stages, ...)
    declared_constexprs: tuple = field(default=(), compare=False)  # the kernel's constexpr parameters
    cases: tuple = field(default=(), compare=False)  # the launch cases that give it

    @property
    def num_warps(self) -> int:
        return dict(self.options)["num_warps"]

    @property
    def num_stages(self) -> int:
        return dict(self.options)["num_stages"]

    @property
    def consts(self) -> dict:
        return dict(self.constexprs)

    @property
    def tile(self) -> Optional[tuple]:
        """(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) of a GEMM/conv specialization."""
        if self.kernel not in GEMM_KERNELS:
            return None
        c = self.consts
        return c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"], self.num_warps, self.num_stages

    def declared(self, name: str) -> bool:
        """True for the kernel's own constexpr parameters (flags, tiles), not ints equal to 1."""
        return name in self.declared_constexprs

    @property
    def flags(self) -> dict:
        """The kernel's constexpr parameters as launched (flags and tile)."""
        return {k: v for k, v in self.constexprs if self.declared(k)}

    def int_classes(self) -> dict:
        """Each int argument: "1" (a constant), "D" (divisible by 16), "i32"/"i64" (neither)."""
        out = {}
        for name, kind in self.signature:
            if kind in ("i32", "i64"):
                out[name] = "D" if name in self.divisible else kind
            elif kind == "constexpr" and not self.declared(name):
                out[name] = "1"
        return out

    @property
    def label(self) -> str:
        flag_text = " ".join(f"{k}={v}" for k, v in self.constexprs if self.declared(k))
        ptrs = " ".join(f"{k.removesuffix('_ptr')}:{v[1:]}{'' if k in self.divisible else '(unaligned)'}"
                        for k, v in self.signature if k in ("x_ptr", "out_ptr", "a_ptr", "b_ptr", "table_ptr"))
        classes = self.int_classes()
        odd = " ".join(k for k, v in classes.items() if v in ("i32", "i64"))
        ones = " ".join(k for k, v in classes.items() if v == "1")
        wide = " ".join(k for k, v in self.signature if v == "i64")
        text = f"{self.kernel} [{flag_text}] {ptrs} warps={self.num_warps} stages={self.num_stages}"
        text += f"; odd: {odd or '-'}; one: {ones or '-'}"
        return text + (f"; i64: {wide}" if wide else "")


_BINDERS: dict = {}


def _binder(kernel: str, arch: int):
    """Triton's argument binder for `kernel` on sm_`arch` (the one `JITFunction.run` builds)."""
    if (kernel, arch) not in _BINDERS:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        fn = _jit_function(_kernel_objects(COMPILED_HOMES)[kernel])
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _BINDERS[kernel, arch] = (fn, backend, create_function_from_signature(fn.signature, fn.params, backend))
    return _BINDERS[kernel, arch]


def surviving_configs(launch: Launch) -> list:
    """The autotune configs a launch compiles: those `early_config_prune` keeps for it (all of
    them are compiled and timed when more than one is left), as `Autotuner.run` prunes; [None]
    for a kernel without autotuning."""
    from triton.runtime.autotuner import Autotuner

    tuner = _kernel_objects()[launch.kernel]
    if not isinstance(tuner, Autotuner):
        return [None]
    if len(tuner.configs) <= 1:
        return list(tuner.configs)
    tuner.nargs = dict(zip(tuner.arg_names, launch.args))
    try:
        return list(tuner.prune_configs(dict(launch.kwargs)))
    finally:
        tuner.nargs = None


def specializations(launch: Launch, arch: int) -> list[Specialization]:
    """What `JITFunction.run` would compile for this launch on sm_`arch`, one per surviving config."""
    from triton import knobs

    fn, backend, binder = _binder(launch.kernel, arch)
    out = []
    for config in surviving_configs(launch) if launch.kernel in KERNEL_HOMES else [None]:
        kwargs = dict(launch.kwargs, **(config.all_kwargs() if config is not None else {}))
        # The options `JITFunction.run` adds before binding.
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        bound_args, specialization, options = binder(*launch.args, **kwargs)
        parsed, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
        names = fn.arg_names
        out.append(Specialization(
            launch.kernel, tuple(signature.items()),
            tuple((names[path[0]], value) for path, value in sorted(constexprs.items())),
            tuple(names[path[0]] for path, attr in sorted(attrs.items()) if ["tt.divisibility", 16] in attr),
            (("num_warps", parsed.num_warps), ("num_stages", parsed.num_stages), ("num_ctas", parsed.num_ctas),
             ("maxnreg", parsed.maxnreg), ("debug", parsed.debug)),
            tuple(p.name for p in fn.params if p.is_constexpr), (launch.case,)))
    return out


def deduplicated(launches: list[Launch], arch: int) -> list[Specialization]:
    """The distinct specializations of the launches for sm_`arch`, in first-seen order, each with
    every launch case that gives it."""
    seen: dict = {}
    for launch in launches:
        for spec in specializations(launch, arch):
            if spec in seen:
                first = seen[spec]
                if launch.case not in first.cases:
                    seen[spec] = replace(first, cases=first.cases + (launch.case,))
            else:
                seen[spec] = spec
    return list(seen.values())


def generic(spec: Specialization) -> Specialization:
    """The same kernel and flags compiled with no launch specialization: no divisibility, every
    int argument a runtime int (the worst case of odd strides and sizes)."""
    declared = spec.flags
    signature = tuple((k, "i32" if v == "constexpr" and k not in declared else v) for k, v in spec.signature)
    return replace(spec, signature=signature, constexprs=tuple(declared.items()), divisible=())


# ----------------------------------------------------------------------------- the CI subset


def _features(spec: Specialization) -> set:
    """What a specialization exercises: its tile, each flag value and output type, and the
    class of each int and pointer argument (1, divisible, odd, i64; aligned or not)."""
    found = {("kernel", spec.kernel)}
    if spec.tile is not None:
        found.add(("tile", spec.kernel, spec.tile))
    for name, value in spec.constexprs:
        if spec.declared(name) and not name.startswith("BLOCK"):
            found.add(("flag", spec.kernel, name, value))
    for name, kind in spec.signature:
        if kind.startswith("*"):
            found.add(("pointer", spec.kernel, name, kind, name in spec.divisible))
    for name, kind in spec.int_classes().items():
        found.add(("int", spec.kernel, name, kind))
    return found


def covering_subset(specs: list[Specialization]) -> list[Specialization]:
    """A few specializations that between them hold every feature of `specs` (`_features`):
    every tile of each kernel, every flag value and output type, every argument as a constant,
    divisible, odd or wide int and every pointer type. Greedy set cover: the next is the one
    that adds the most features not yet held (ties: the earlier one)."""
    wanted = [_features(s) for s in specs]
    missing = set().union(*wanted) if wanted else set()
    chosen = []
    while missing:
        best = max(range(len(specs)), key=lambda i: (len(wanted[i] & missing), -i))
        chosen.append(specs[best])
        missing -= wanted[best]
    return chosen


# ----------------------------------------------------------------------------- PTX checks


@dataclass(frozen=True)
class GlobalAccess:
    """One global-memory instruction of the PTX."""

    line: int
    text: str
    per_lane: bool  # its address depends on the thread index
    guarded: bool  # under a predicate that is not a constant, or a cp.async with a src-size register
    is_load: bool
    uniform_guard: bool = False  # per lane, but its guard is the same in every thread (see `global_accesses`)


_STATEMENT = re.compile(r"^(?:@(!?)(%[\w.]+)\s+)?([a-z][\w.:]*)\s*(.*)$")
_REGISTER = re.compile(r"%[a-zA-Z_][\w]*(?:\.[xyz])?")
_LANE_SOURCES = ("%tid.x", "%tid.y", "%tid.z", "%laneid", "%warpid")
_GLOBAL_OPS = re.compile(r"^(?:ld|st|atom|red)(?:\.[\w:]+)*\.global\b|^cp\.async\.(?!bulk)[\w.:]*\.global\b")
_STATE_SPACES = (".global", ".shared", ".param", ".local", ".const")
_NO_DESTINATION = ("st.", "cp.async", "bar.", "bra", "ret", "red.", "prefetch", "fence", "wgmma.fence",
                   "wgmma.commit", "wgmma.wait", "cp.async.commit", "cp.async.wait", "membar", "trap", "exit",
                   "mbarrier.init", "mbarrier.arrive", "mbarrier.try_wait")


def _is_global_access(opcode: str) -> bool:
    """A global-memory instruction, or a generic-address one (no state space: it may be global)."""
    if _GLOBAL_OPS.match(opcode):
        return True
    return opcode.startswith(("ld.", "st.", "atom.", "red.")) and not any(space in opcode for space in _STATE_SPACES)


def _statements(ptx: str) -> list[tuple[int, str]]:
    """(line number, statement) of every PTX instruction: comments stripped, several
    statements on a line split, scope braces, labels and directives dropped (no instruction
    starts with a brace; operand lists do)."""
    out = []
    for number, line in enumerate(ptx.splitlines(), 1):
        for part in line.split("//", 1)[0].split(";"):
            part = re.sub(r"^[{}\s]+", "", part)
            if part and not part.startswith((".", "$")) and not part.endswith(":"):
                out.append((number, part))
    return out


def _split_operands(rest: str) -> list[str]:
    """Operands at the top level (commas inside braces and brackets do not split)."""
    operands, depth, current = [], 0, ""
    for ch in rest:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            operands.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        operands.append(current.strip())
    return operands


def _per_lane_registers(statements: list[tuple[int, str]]) -> set:
    """Registers whose value may differ between the threads of a block: written from %tid,
    %laneid or %warpid, from a per-lane register, or under a per-lane predicate (a
    flow-insensitive fixed point over every instruction, so loop-carried values are covered)."""
    writes = []  # (destinations, sources)
    for _, text in statements:
        m = _STATEMENT.match(text)
        if not m:
            continue
        _, guard, opcode, rest = m.groups()
        operands = _split_operands(rest)
        if opcode.startswith(_NO_DESTINATION) or not operands:
            continue
        if opcode.startswith("wgmma.mma_async"):
            destinations = set(_REGISTER.findall(operands[0]))
            sources = set(_REGISTER.findall(rest))
        else:
            destinations = set(_REGISTER.findall(operands[0]))
            sources = set(_REGISTER.findall(",".join(operands[1:])))
        if guard:
            sources.add(guard)
        if destinations:
            writes.append((destinations, sources))
    lane = set(_LANE_SOURCES)
    changed = True
    while changed:
        changed = False
        for destinations, sources in writes:
            if sources & lane and not destinations <= lane:
                lane |= destinations
                changed = True
    return lane


def _constant_true_predicates(statements: list[tuple[int, str]]) -> set:
    """Predicates only ever set to true (`mov.pred %p, -1` or 1): no guard at all."""
    constant, other = set(), set()
    for _, text in statements:
        m = _STATEMENT.match(text)
        if not m:
            continue
        _, guard, opcode, rest = m.groups()
        operands = _split_operands(rest)
        if not operands:
            continue
        for reg in _REGISTER.findall(operands[0]):
            if reg.startswith("%p"):
                if opcode == "mov.pred" and not guard and len(operands) == 2 and operands[1] in ("-1", "1"):
                    constant.add(reg)
                else:
                    other.add(reg)
    return constant - other


def global_accesses(ptx: str) -> list[GlobalAccess]:
    """Every global load, store, atomic and async copy of the PTX, classified (module docstring).

    `uniform_guard` marks a per-lane access whose guard does not depend on the thread: the
    pipeliner's "this K step exists" alone guards an unmasked tile that way, but so does a mask
    LLVM has proved lane-independent (with M = 1, `rows < 1` on a 16-row tile's second half
    is `pid_m * 16 < 0`); `problems` tells the two apart (`size_one_masks`)."""
    statements = _statements(ptx)
    lane = _per_lane_registers(statements)
    always = _constant_true_predicates(statements)
    found = []
    for number, text in statements:
        m = _STATEMENT.match(text)
        if not m or not _is_global_access(m.group(3)):
            continue
        _, guard, opcode, rest = m.groups()
        operands = _split_operands(rest)
        addresses = [op for op in operands if op.startswith("[")]
        predicate = guard if guard and guard not in always else None
        if opcode.startswith("cp.async"):
            address = addresses[1] if len(addresses) > 1 else ""
            src_size = operands[3] if len(operands) >= 4 and _REGISTER.fullmatch(operands[3]) else None
        else:
            address = addresses[0] if addresses else ""
            src_size = None
        per_lane = bool(set(_REGISTER.findall(address)) & lane)
        guarded = predicate is not None or src_size is not None
        lane_guarded = predicate in lane or src_size in lane
        found.append(GlobalAccess(number, text, per_lane, guarded, opcode.startswith(("ld.", "cp.async")),
                                  per_lane and guarded and not lane_guarded))
    return found


_WGMMA = re.compile(r"\bwgmma\.mma_async[\w.]*\s+(.*)")


def register_a_wgmma(ptx: str) -> list[str]:
    """The `wgmma.mma_async` instructions whose A operand is a brace list of registers (A from
    registers); with A from shared memory it is a descriptor register. See the module docstring."""
    found = []
    for line in ptx.splitlines():
        m = _WGMMA.search(line.split("//", 1)[0])
        if m is None:
            continue
        operands = _split_operands(m.group(1).rstrip().rstrip(";"))
        if len(operands) < 3:
            raise ValueError(f"cannot read the operands of: {line.strip()}")
        if operands[1].startswith("{"):
            found.append(line.strip())
    return found


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

    fn, backend, _ = _binder(spec.kernel, arch)
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
    if re.search(r"wgmma\.mma_async[\w.]*\.s32\.s8\.s8", ptx):
        report.int8_mma = "wgmma s8"
    elif re.search(r"mma\.sync[\w.]*\.s32\.s8\.s8", ptx):
        report.int8_mma = "mma.sync s8"
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

    matmul = _jit_function(_kernel_objects()["int_matmul_kernel"])
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


KLOOP_CASE = MatmulCase("kloop", 512, 256, 512, per_sample=True)


def kloop_comparison(arch: int) -> list[tuple[Report, Report, Report]]:
    """(pre-shifted weights, weights shifted in the loop, plain int8 GEMM) for every matmul tile
    on an aligned launch (`KLOOP_CASE`: per-sample shifts, uint8, requantize + ReLU)."""
    cases = [replace(KLOOP_CASE, prepared=prepared) for prepared in (True, False)]
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
