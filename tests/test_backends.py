"""Backend resolution and the use_backend context manager."""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq
from dqt_triton.dispatch import resolve_backend


def test_auto_picks_the_cpu_path_for_cpu_tensors():
    assert resolve_backend(None, torch.device("cpu"), "op") == "cpu"
    assert resolve_backend("auto", torch.device("cpu"), "op") == "cpu"


def test_auto_picks_triton_for_cuda_tensors():
    assert resolve_backend(None, torch.device("cuda"), "op") == "triton"


def test_use_backend_forces_and_restores():
    with dq.use_backend("reference"):
        assert resolve_backend(None, torch.device("cpu"), "op") == "reference"
        assert resolve_backend("cpu", torch.device("cpu"), "op") == "cpu"  # explicit argument wins
        with dq.use_backend("cpu"):
            assert resolve_backend(None, torch.device("cpu"), "op") == "cpu"
        assert resolve_backend(None, torch.device("cpu"), "op") == "reference"
    assert resolve_backend(None, torch.device("cpu"), "op") == "cpu"


def test_cpu_backends_refuse_cuda_tensors():
    with pytest.raises(dq.BackendUnavailableError, match="runs on CPU tensors"):
        resolve_backend("reference", torch.device("cuda"), "int_matmul")


def test_forced_backends_give_identical_results():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (9, 40), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (11, 40), generator=gen).to(torch.int8)
    outs = []
    for name in ("reference", "cpu"):
        with dq.use_backend(name):
            outs.append(dq.int_matmul(x, w, act_shift=torch.arange(9) % 8, weight_shift=3))
    assert torch.equal(outs[0], outs[1])
