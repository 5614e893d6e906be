"""Memory safety of the Triton kernels without a GPU: an address checker for the interpreter,
guard-banded inputs, and GPU tiles pinned alone or autotuned with a stand-in benchmark.

The interpreter copies through raw pointers, so an out-of-bounds lane reads host memory (or
segfaults) without a word. `checked_launches` wraps the interpreter's masked load and store:
every active lane of one access must address an element inside one tensor argument of the
launch (its span from the first to the last element its shape and strides reach). The first
access that does not is recorded and raised as `OutOfBounds`, naming the kernel, the program,
the tensor nearest to the address and how far outside it is. Set DQT_BOUNDS_CHECK=0 to switch
the checker off (the positive control in test_bounds.py must then fail).

Under the interpreter the autotuned kernels run one small tile (`configs.INTERPRETER_TILE`);
`pinned` runs one GPU tile instead, launched through the launcher's own grid, and
`autotuned_with_two_launches` runs the real `triton.autotune` over every GPU tile with its
benchmark replaced by two plain launches per config.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch


class OutOfBounds(AssertionError):
    """An interpreted kernel addressed memory outside every tensor argument of its launch."""


@dataclass(frozen=True)
class Span:
    """Bytes [start, end) that a tensor argument's elements occupy."""

    name: str
    start: int
    end: int


def tensor_span(name: str, t: torch.Tensor) -> Span:
    start = t.data_ptr()
    if t.numel() == 0:
        return Span(name, start, start)
    last = sum((n - 1) * s for n, s in zip(t.shape, t.stride()))
    return Span(name, start, start + (last + 1) * t.element_size())


@dataclass
class Checker:
    """What the checked launches saw: kernels launched, accesses checked, violations found."""

    enabled: bool = True
    launches: list = field(default_factory=list)
    accesses: int = 0
    violations: list = field(default_factory=list)
    _spans: list = field(default_factory=list)

    def check(self, kind: str, ptrs, mask) -> None:
        self.accesses += 1
        addresses = np.asarray(ptrs.data, dtype=np.uint64)
        active = addresses[np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)]
        if active.size == 0:
            return
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        lo, hi = int(active.min()), int(active.max()) + size
        if any(s.start <= lo and hi <= s.end for s in self._spans):
            return
        nearest = min(self._spans, key=lambda s: min(abs(lo - s.start), abs(hi - s.end)), default=None)
        from triton.runtime import interpreter

        where = (f"{nearest.name}: bytes [{lo - nearest.start}, {hi - nearest.start}) of "
                 f"[0, {nearest.end - nearest.start})") if nearest else "no tensor argument"
        message = (f"{self.launches[-1]} program {interpreter.interpreter_builder.grid_idx}: {kind} of "
                   f"{active.size} lanes outside its tensor ({where})")
        self.violations.append(message)
        raise OutOfBounds(message)


@contextlib.contextmanager
def checked_launches() -> Iterator[Checker]:
    """Checks every load and store of the interpreted kernels launched inside the block."""
    from triton.runtime import interpreter

    checker = Checker(enabled=os.environ.get("DQT_BOUNDS_CHECK", "1") != "0")
    if not checker.enabled:
        yield checker
        return
    builder = interpreter.interpreter_builder
    executor = interpreter.GridExecutor
    original_init = executor._init_args_hst
    original_load, original_store = builder.create_masked_load, builder.create_masked_store

    def init_args(self, args_dev, kwargs):
        args_hst, kwargs_hst = original_init(self, args_dev, kwargs)
        named = list(zip(self.arg_names, args_hst)) + list(kwargs_hst.items())
        checker._spans = [tensor_span(name, t) for name, t in named if isinstance(t, torch.Tensor)]
        checker.launches.append(self.fn.__name__)
        return args_hst, kwargs_hst

    def load(ptrs, mask, other, cache_policy, is_volatile):
        checker.check("load", ptrs, mask)
        return original_load(ptrs, mask, other, cache_policy, is_volatile)

    def store(ptrs, value, mask, cache_policy):
        checker.check("store", ptrs, mask)
        return original_store(ptrs, value, mask, cache_policy)

    executor._init_args_hst = init_args
    builder.create_masked_load, builder.create_masked_store = load, store
    try:
        yield checker
    finally:
        executor._init_args_hst = original_init
        del builder.create_masked_load, builder.create_masked_store  # back to the class's methods


GUARD = 64  # elements of sentinel on each side of a guard-banded tensor


def guarded(t: torch.Tensor, sentinel: int = 0x5A) -> torch.Tensor:
    """A copy of `t`, in the same memory format if it is dense (contiguous or channels_last),
    placed in the middle of a larger buffer whose margins hold `sentinel`: an access that strays
    into a margin is outside the tensor's span, and a write there shows in `guards_intact`."""
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    buffer = torch.full((t.numel() + 2 * GUARD,), sentinel, dtype=t.dtype)
    view = torch.as_strided(buffer, t.shape, t.stride() if dense else t.contiguous().stride(), GUARD)
    view.copy_(t)
    return view


def guards_intact(view: torch.Tensor, sentinel: int = 0x5A) -> bool:
    """True if neither margin of a `guarded` tensor was written."""
    buffer = torch.as_strided(view, (view.numel() + 2 * GUARD,), (1,), view.storage_offset() - GUARD)
    margins = torch.cat([buffer[:GUARD], buffer[-GUARD:]])
    return bool((margins == torch.tensor(sentinel, dtype=view.dtype)).all())


@contextlib.contextmanager
def pinned(kernel, config) -> Iterator[None]:
    """Autotuned `kernel` launches `config` alone (no pruning, no timing), through the
    launcher's own grid, as a GPU would once autotuning chose it."""
    saved = kernel.configs, kernel.cache
    kernel.configs, kernel.cache = [config], {}
    try:
        yield
    finally:
        kernel.configs, kernel.cache = saved


@contextlib.contextmanager
def autotuned_with_two_launches(kernel, configs) -> Iterator[list]:
    """The real `triton.autotune` of `kernel` over `configs` (pruning included), with each
    config's benchmark replaced by two launches. Timings are made up so that the config
    benchmarked last wins and runs a third time after all the others. Yields the list of
    configs benchmarked, in order."""
    benchmarked: list = []

    def two_launches(kernel_call, quantiles) -> list[float]:
        kernel_call()
        kernel_call()
        t = -float(len(benchmarked))
        return [t, t, t]

    def bench(*args, config, **meta):
        benchmarked.append(config)
        return type(kernel)._bench(kernel, *args, config=config, **meta)

    saved = kernel.configs, kernel.cache, kernel._do_bench, kernel.__dict__.pop("do_bench", None)
    kernel.configs, kernel.cache, kernel._do_bench, kernel._bench = list(configs), {}, two_launches, bench
    try:
        yield benchmarked
    finally:
        kernel.configs, kernel.cache, kernel._do_bench = saved[:3]
        del kernel._bench
        kernel.__dict__.pop("do_bench", None)
        if saved[3] is not None:
            kernel.__dict__["do_bench"] = saved[3]


def tile_label(config) -> str:
    k = config.kwargs
    return f"{k['BLOCK_M']}x{k['BLOCK_N']}x{k['BLOCK_K']}/{config.num_warps}/{config.num_stages}"
