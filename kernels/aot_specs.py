"""Recorded launches (`aot_cases.record`) bound into the specializations a GPU would compile.

`specializations` binds each recorded launch with Triton's own binder for the target
(`create_function_from_signature` and `JITFunction._pack_args`, the code `JITFunction.run`
runs), so the rules are Triton's: an int argument equal to 1 becomes a constant, ints divisible
by 16 and 16-byte-aligned tensors get the divisibility attribute, ints outside int32 are i64,
`do_not_specialize` arguments keep neither. For the autotuned GEMM and conv kernels each
config that survives the kernel's `early_config_prune` for that launch is a specialization
(the autotuner compiles every one to time it). Specializations are deduplicated by (kernel,
signature, constexprs, divisibility, options: warps, stages).

`covering_subset` picks a few of the resulting specializations that still hold every tile,
every flag value, odd and aligned arguments: what CI compiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from .aot_cases import GEMM_KERNELS, KERNEL_HOMES, Launch, kernel_objects

# The yardstick of the K-loop comparison (`plain.py`) is compiled too, never launched.
COMPILED_HOMES = {**KERNEL_HOMES, "plain_int8_matmul_kernel": "plain"}


def jit_function(kernel):
    """The JITFunction under an autotuner (or the kernel itself)."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):  # the autotuner wraps the jit function
        kernel = kernel.fn
    return kernel


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


def binder(kernel: str, arch: int):
    """Triton's argument binder for `kernel` on sm_`arch` (the one `JITFunction.run` builds)."""
    if (kernel, arch) not in _BINDERS:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        fn = jit_function(kernel_objects(COMPILED_HOMES)[kernel])
        backend = make_backend(GPUTarget("cuda", arch, 32))
        _BINDERS[kernel, arch] = (fn, backend, create_function_from_signature(fn.signature, fn.params, backend))
    return _BINDERS[kernel, arch]


def surviving_configs(launch: Launch) -> list:
    """The autotune configs a launch compiles: those `early_config_prune` keeps for it (all of
    them are compiled and timed when more than one is left), as `Autotuner.run` prunes; [None]
    for a kernel without autotuning."""
    from triton.runtime.autotuner import Autotuner

    tuner = kernel_objects()[launch.kernel]
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

    fn, backend, bind = binder(launch.kernel, arch)
    out = []
    for config in surviving_configs(launch) if launch.kernel in KERNEL_HOMES else [None]:
        kwargs = dict(launch.kwargs, **(config.all_kwargs() if config is not None else {}))
        # The options `JITFunction.run` adds before binding.
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
        bound_args, specialization, options = bind(*launch.args, **kwargs)
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
