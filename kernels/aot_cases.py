"""The launches the AOT compile (`dqt_triton.kernels.aot`) works from: launch cases, recorded.

`record` calls the public ops (`int_matmul`, `int_conv2d`, prepared layers, a frozen ResNet,
the element-wise, pooling and lookup ops) with CPU tensors while every kernel's `run` is
replaced by a recorder that keeps the arguments and launches nothing (`shift_activations` is a
launch too: recorded, not run).

`launch_cases` lists what is recorded: the launches of tests/kernels/test_gpu.py (its matmul
shapes, ResNet convs and the frozen ResNet-18), of bench/gpu_kernels.py, the odd shapes of
tests/kernels/test_bounds.py and an aligned matmul and conv, each with flag sets that give
every flag each value (per-sample or per-layer weight shifts, uint8 or int8 codes, floor or
round, each epilogue with [N] constants or [8, N] tables, pre-shifted weight tables as a frozen
program runs or weights shifted in the K loop as the ops called directly run), the fixed shapes
of tests/kernels/test_gemm.py, the element-wise, pooling and lookup calls of the tests, and the
transformer ops (`int_bmm`, `int_softmax`, `int_layernorm`, `int_embedding`) on the odd and
aligned shapes that tests/kernels/test_bounds.py also runs, with every flag value.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Callable, Iterator, NamedTuple, Optional

GEMM_KERNELS = ("int_matmul_kernel", "int_conv2d_kernel")
# Where each launched kernel lives (module of dqt_triton.kernels, attribute).
KERNEL_HOMES = {
    "int_matmul_kernel": "gemm", "int_conv2d_kernel": "gemm",
    "shift_activations_kernel": "elementwise", "int_add_kernel": "elementwise", "int_mul_kernel": "elementwise",
    "int_lut_kernel": "elementwise", "int_pool2d_kernel": "pool", "int_adaptive_avg_pool2d_kernel": "pool",
    "int_bmm_kernel": "transformer", "int_softmax_kernel": "transformer", "int_layernorm_kernel": "transformer",
    "int_embedding_kernel": "transformer",
}


def kernel_objects(homes: Optional[dict] = None) -> dict:
    """name -> the launched object (an Autotuner for the GEMM and conv kernels, else a JITFunction)."""
    import importlib

    return {name: getattr(importlib.import_module(f"dqt_triton.kernels.{home}"), name)
            for name, home in (KERNEL_HOMES if homes is None else homes).items()}


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
    objects = kernel_objects()

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


class Flags(NamedTuple):
    """How a GEMM or conv case calls its op: per-sample (else per-layer) weight shifts, uint8
    (else int8) codes, the round (else floor) shift rule, the epilogue ("raw", "requant",
    "requant_relu", "float"), [8, N] width tables (else [N] constants), and a prepared layer
    (pre-shifted weight tables, as a frozen program runs) rather than the op called directly."""

    per_sample: bool = False
    unsigned: bool = True
    round_rule: bool = False
    epilogue: str = "requant_relu"
    tables: bool = False
    prepared: bool = False

    def label(self, out_dtype: str = "") -> str:
        return " ".join([("per-sample" if self.per_sample else "per-layer"), ("u8" if self.unsigned else "i8"),
                         ("round" if self.round_rule else "floor"),
                         self.epilogue + (f" to {out_dtype}" if out_dtype else "")]
                        + ["tables"] * self.tables + ["prepared"] * self.prepared)


# Eight flag sets in which every flag takes each value and each epilogue appears twice (the bounds
# test runs them too).
FLAG_SETS = (
    Flags(True, True, True, "requant_relu", True, True),  # a frozen dynamic model
    Flags(False, False, False, "raw", False, False),
    Flags(True, False, True, "float", False, True),
    Flags(False, True, False, "requant", True, False),
    Flags(True, True, False, "raw", True, False),
    Flags(False, False, True, "requant_relu", False, True),
    Flags(True, False, False, "requant", False, False),
    Flags(False, True, True, "float", True, True),
)


class _Flagged:
    """What the GEMM and conv cases share: their `flags`, changed with `with_flags`."""

    flags: Flags

    def with_flags(self, flags: Optional[Flags] = None, **changes):
        """This case with `flags` (default: its own) and then the named flags changed."""
        return replace(self, flags=(self.flags if flags is None else flags)._replace(**changes))


@dataclass(frozen=True)
class MatmulCase(_Flagged):
    """One `int_matmul` call (or a prepared layer's `run_prepared`) on x [M, K] and w [N, K]."""

    source: str
    M: int
    N: int
    K: int
    flags: Flags = Flags()
    x_strides: Optional[tuple] = None  # x read in place through these strides (a view of a larger buffer)
    w_strides: Optional[tuple] = None
    out_dtype: str = ""  # "u8" / "i8": a requantized output type other than the default (uint8 with ReLU, else int8)

    @property
    def label(self) -> str:
        return f"{self.source}: matmul {self.M}x{self.N}x{self.K} {self.flags.label(self.out_dtype)}"


@dataclass(frozen=True)
class ConvCase(_Flagged):
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
    flags: Flags = Flags()

    @property
    def label(self) -> str:
        geometry = f"{self.B}x{self.C}x{self.H}x{self.W}->{self.Cout} k{self.k} s{self.stride} p{self.padding}"
        geometry += f" d{self.dilation}" * (self.dilation > 1) + f" g{self.groups}" * (self.groups > 1)
        return f"{self.source}: conv {geometry}{' nchw' * self.nchw} {self.flags.label()}"


@dataclass(frozen=True)
class OpCase:
    """Element-wise, pooling, lookup or model calls, described by `run_op_case`."""

    source: str
    op: str
    params: tuple = ()

    @property
    def label(self) -> str:
        return f"{self.source}: {self.op} {' '.join(map(str, self.params))}".strip()


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
# The transformer ops' shapes, odd and aligned (test_bounds runs them too), with every flag value
# among them. int_bmm: (a code, b code, G, M, K, N, b tokens on N, round rule, output: "i32" raw
# or "u8"/"i8" requantized); softmax: (code, G, M, N, causal); LayerNorm: (code, R, C, output,
# torch's eps 0.01, else 0: eps_units past int32 at C = 768, 0 gives zero-variance rows r = 0);
# embedding: (id code, L, V, D).
TRANSFORMER_BMMS = (("u8", "u8", 2, 37, 70, 67, True, False, "i32"), ("i8", "i8", 2, 37, 70, 67, False, True, "i8"),
                    ("u8", "i8", 2, 128, 64, 128, True, True, "u8"), ("i8", "u8", 3, 128, 256, 64, False, False, "i32"),
                    ("u8", "u8", 4, 1, 13, 200, False, True, "u8"), ("i8", "u8", 1, 5, 1, 1, True, False, "i8"))
TRANSFORMER_SOFTMAXES = (("i8", 2, 5, 300, False), ("u8", 2, 5, 300, True), ("i8", 4, 128, 128, True),
                         ("u8", 1, 1, 2000, False), ("u8", 3, 1, 1, False))
TRANSFORMER_LAYERNORMS = (("i8", 3, 300, "i8", False), ("u8", 4, 768, "u8", True), ("i8", 2, 16384, "u8", False),
                          ("u8", 1, 7, "i8", True), ("i8", 5, 1, "i8", False))
TRANSFORMER_EMBEDDINGS = (("u8", 21, 40, 6), ("i8", 16, 100, 768), ("u8", 3, 2, 1))




def _gpu_test_cases() -> list:
    cases = []
    for M, N, K, epilogue in GPU_TEST_MATMULS:
        for per_sample in (False, True):
            cases.append(MatmulCase("test_gpu", M, N, K, flags=Flags(per_sample=per_sample, epilogue=epilogue)))
    for B, C, H, Cout, k, stride, groups in GPU_TEST_CONVS:
        cases.append(ConvCase("test_gpu", B, C, H, H, Cout, k, stride=stride, padding=k // 2, groups=groups,
                              flags=Flags(per_sample=True)))
    cases.append(MatmulCase("test_gpu", 64, 128, 256, flags=Flags(epilogue="requant")))  # the bit-width recompile test
    cases += [OpCase("test_gpu", "frozen_resnet18_cifar", (mode,)) for mode in ("uniform4", "dynamic")]
    return cases


def _bench_cases() -> list:
    """bench/gpu_kernels.py: requantize + ReLU to uint8, per layer, per sample and raw int32
    through the ops, per layer and per sample through a prepared layer."""
    cases = []
    for M, N, K in BENCH_MATMULS:
        base = MatmulCase("bench", M, N, K)
        cases += [base, base.with_flags(per_sample=True), base.with_flags(epilogue="raw"),
                  base.with_flags(prepared=True), base.with_flags(per_sample=True, prepared=True)]
    for B, C, H, Cout, k, stride in BENCH_CONVS:
        base = ConvCase("bench", B, C, H, H, Cout, k, stride=stride, padding=k // 2)
        cases += [base, base.with_flags(per_sample=True), base.with_flags(prepared=True),
                  base.with_flags(per_sample=True, prepared=True)]
    return cases


def _flag_sweep_cases() -> list:
    """The odd shapes of the bounds test and an aligned matmul and conv, each with every flag set."""
    shapes = [MatmulCase("bounds", M, N, K) for M, K, N in BOUNDS_MATMULS]
    shapes += [ConvCase("bounds", B, C, H, W, Cout, k, stride, pad, dil, groups, nchw)
               for B, C, H, W, Cout, k, stride, pad, dil, groups, nchw in BOUNDS_CONVS]
    shapes += [MatmulCase("aligned", 512, 256, 512), ConvCase("aligned", 8, 64, 32, 32, 64, 3, padding=1)]
    return [shape.with_flags(flags) for shape in shapes for flags in FLAG_SETS]


def _other_test_cases() -> list:
    """Fixed shapes of tests/kernels/test_gemm.py and the element-wise, pooling and lookup
    calls of the tests and the frozen models (test_bounds' GPU-block test, test_elementwise_pool)."""
    raw, i8_requant = Flags(per_sample=True, epilogue="raw"), Flags(unsigned=False, epilogue="requant")
    cases = [MatmulCase("test_gemm", 64, 37, 45, flags=raw),
             MatmulCase("test_gemm", 2048, 32, 1, flags=raw),
             MatmulCase("test_gemm", 150, 20, 40, flags=Flags(per_sample=True)),
             MatmulCase("test_gemm", 37, 9, 70, flags=raw, x_strides=(1, 37), w_strides=(280, 2)),
             MatmulCase("test_gemm", 2048, 32, 1, flags=Flags(epilogue="raw", round_rule=True)),
             MatmulCase("test_gemm", 5, 2, 1, flags=i8_requant),
             MatmulCase("test_gemm", 5, 2, 1, flags=i8_requant, out_dtype="u8"),
             MatmulCase("test_gemm", 150, 70, 40, flags=Flags(per_sample=True, unsigned=False, tables=True)),
             MatmulCase("test_gemm", 6, 5, 33, flags=raw._replace(round_rule=True, prepared=True)),
             ConvCase("test_gemm", 2, 40, 6, 6, 48, 3, padding=1, flags=Flags(per_sample=True)),
             ConvCase("test_gemm", 1, 3, 11, 9, 16, 7, stride=2, padding=3, nchw=True, flags=Flags(epilogue="float"))]
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


def _transformer_cases() -> list:
    """The transformer ops on the shapes of `TRANSFORMER_*` (tests/kernels/test_bounds.py)."""
    cases = [OpCase("transformer", "bmm", params) for params in TRANSFORMER_BMMS]
    cases += [OpCase("transformer", "softmax", params) for params in TRANSFORMER_SOFTMAXES]
    cases += [OpCase("transformer", "layernorm", params) for params in TRANSFORMER_LAYERNORMS]
    return cases + [OpCase("transformer", "embedding", params) for params in TRANSFORMER_EMBEDDINGS]


def launch_cases() -> list:
    """Every launch case (see the module docstring), in a fixed order."""
    return _gpu_test_cases() + _bench_cases() + _flag_sweep_cases() + _other_test_cases() + _transformer_cases()


def _epilogue_kwargs(n: int, flags: Flags) -> dict:
    import torch

    rows = (8, n) if flags.tables else (n,)
    kwargs = {"bias": torch.zeros(rows, dtype=torch.int32)}
    if flags.epilogue.startswith("requant"):
        kwargs.update(multiplier=torch.full(rows, 1 << 30), shift=torch.full((n,), 40),
                      relu=flags.epilogue == "requant_relu")
    elif flags.epilogue == "float":
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

    flags = case.flags
    x_dtype = torch.uint8 if flags.unsigned else torch.int8
    rule = "round" if flags.round_rule else "floor"
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
    act_shift, weight_shift = _shift_args(samples, flags.per_sample)
    kwargs = _epilogue_kwargs(n, flags)
    if getattr(case, "out_dtype", ""):
        kwargs["out_dtype"] = {"u8": torch.uint8, "i8": torch.int8}[case.out_dtype]
    if flags.prepared:
        # One layer serves every call with its weights, as in the benchmark and a frozen program
        # (its pre-shifted table is built at the first call); the cases of one layer are neighbours.
        layers = {} if layers is None else layers
        key = replace(case.with_flags(per_sample=False), source="")
        if key not in layers:
            layers.clear()
            layers[key] = dq.ops.prepare_layer(w, x_dtype=x_dtype, conv=conv, shift_rule=rule, **kwargs)
        shifts = [s.to(torch.int32) if isinstance(s, torch.Tensor) else s for s in (act_shift, weight_shift)]
        dq.ops.run_prepared(layers[key], x, *shifts, backend="triton")
    elif conv is None:
        dq.int_matmul(x, w, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule, backend="triton",
                      **kwargs)
    else:
        dq.int_conv2d(x, w, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule, backend="triton",
                      **conv, **kwargs)


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
    elif case.op in ("bmm", "softmax", "layernorm", "embedding"):
        run_transformer_case(case, lambda code, shape: torch.zeros(shape, dtype=dtypes[code]), "triton")
    else:
        raise ValueError(f"unknown op case {case.op!r}")


def run_transformer_case(case: OpCase, codes: Callable, backend: str):
    """The transformer op of an OpCase on the inputs `codes(code, shape)` gives ("u8"/"i8"), with
    per-token shifts 0..7 and fixed constants; returns its result (tests/kernels/test_bounds.py
    calls it with random codes on both backends)."""
    import torch

    import dqt_triton as dq
    from dqt_triton import numerics

    dtypes = {"u8": torch.uint8, "i8": torch.int8}
    if case.op == "bmm":
        a_code, b_code, G, M, K, N, on_n, round_rule, out = case.params
        kwargs = {} if out == "i32" else {"multiplier": 1_234_567, "shift": 24, "out_dtype": dtypes[out]}
        b_shift = torch.arange(G * (N if on_n else K)).reshape(G, -1) % 8
        return dq.int_bmm(codes(a_code, (G, M, K)), codes(b_code, (G, K, N)),
                          a_shift=torch.arange(G * M).reshape(G, M) % 8, b_shift=b_shift,
                          b_token_axis=-1 if on_n else -2, shift_rule="round" if round_rule else "floor",
                          backend=backend, **kwargs)
    if case.op == "softmax":
        code, G, M, N, causal = case.params
        return dq.int_softmax(codes(code, (G, M, N)), numerics.softmax_table(0.05), causal=causal, backend=backend)
    if case.op == "layernorm":
        code, R, C, out, with_eps = case.params
        c = numerics.layernorm_constants(torch.linspace(-2.0, 3.0, C), torch.linspace(1.0, -1.0, C), C, 0.05, 0.03,
                                         1e-2 if with_eps else 0.0)
        return dq.int_layernorm(codes(code, (R, C)), c.mult, c.offset, shift=c.shift, eps_units=c.eps_units,
                                out_dtype=dtypes[out], backend=backend)
    code, L, V, D = case.params
    ids = torch.arange(L, dtype=torch.int64).mul_(7).remainder_(V).to(dtypes[code])
    return dq.int_embedding(ids, codes("i8", (V, D)), backend=backend)


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

