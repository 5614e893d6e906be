"""Test session set-up: where the Triton kernels run, and skipping GPU-only tests without a GPU.

Without a CUDA device the Triton kernels run through the interpreter on CPU tensors, which
must be switched on before `dqt_triton.kernels` is imported. With a CUDA device the same
kernel tests run compiled on the GPU (unless TRITON_INTERPRET is already set).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (compiled Triton kernels)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
