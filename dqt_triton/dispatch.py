"""Backend selection: which implementation of the integer contract runs an op.

- ``reference``: the pure Numba loops (CPU tensors), the exact reference.
- ``cpu``: the CPU execution path, Numba shifts/epilogues around an exact float32 GEMM.
- ``triton``: the Triton kernels (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``).
- ``auto``: ``cpu`` for CPU tensors, ``triton`` for CUDA tensors.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

from .errors import BackendUnavailableError

BACKENDS = ("auto", "reference", "cpu", "triton")

_forced_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dqt_triton_backend", default=None
)


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend for every op called inside the block (an explicit ``backend=`` wins)."""
    token = _forced_backend.set(_check_name(name))
    try:
        yield
    finally:
        _forced_backend.reset(token)


def triton_interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@torch.compiler.assume_constant_result
def _forced_name() -> str:
    """The backend `use_backend` forces, or "auto". torch.compile cannot trace a ContextVar; it
    calls this once while tracing and keeps the answer, so compile inside the block you run in."""
    return _forced_backend.get() or "auto"


def resolve_backend(backend: str | None, device: torch.device, op: str) -> str:
    """The concrete backend for an op on tensors living on `device`."""
    name = _check_name(backend) if backend is not None else _forced_name()
    if name == "auto":
        name = "triton" if device.type == "cuda" else "cpu"
    if name in ("reference", "cpu") and device.type != "cpu":
        raise BackendUnavailableError(
            f"{op}: backend {name!r} runs on CPU tensors, got tensors on {device}; "
            "move them with .cpu() or use backend='triton'"
        )
    if name == "triton" and device.type != "cuda" and not triton_interpreter_enabled():
        raise BackendUnavailableError(
            f"{op}: backend 'triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
            "to run the kernels on CPU tensors through the Triton interpreter"
        )
    if device.type not in ("cpu", "cuda"):
        raise BackendUnavailableError(f"{op}: tensors on {device} are not supported")
    return name
