"""Where the Triton backend runs in this test session, and moving results back for comparison."""

from __future__ import annotations

import os

import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
DEVICE = torch.device("cpu") if INTERPRETED or not torch.cuda.is_available() else torch.device("cuda")


def on_device(*tensors):
    """Copies of the test inputs on the Triton device (ints and None pass through)."""
    moved = tuple(t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in tensors)
    return moved[0] if len(moved) == 1 else moved


def kwargs_on_device(kwargs: dict) -> dict:
    return {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
