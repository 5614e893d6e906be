"""The benchmark scripts run end to end (tiny shapes) and record what they measured."""

from __future__ import annotations

import json

import pytest

from bench import gpu_kernels


@pytest.mark.interpreter
def test_gpu_kernel_bench_smoke_run_writes_results(tmp_path, monkeypatch):
    """Under the interpreter in CI, compiled on a GPU machine."""
    monkeypatch.setattr(gpu_kernels, "SMOKE_MATMUL", [("smoke 32x48x64", 32, 48, 64)])
    monkeypatch.setattr(gpu_kernels, "SMOKE_CONV", [("smoke 3x3", 1, 8, 5, 16, 3, 1)])
    gpu_kernels.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads(next(tmp_path.glob("gpu_kernels-smoke-*.json")).read_text())
    impls = {(r["problem"], r["impl"]) for r in result["rows"]}
    assert ("smoke 32x48x64", "unfused: torch shift + _int_mm + torch requant") in impls
    assert ("smoke 3x3", "im2col + torch._int_mm (no epilogue)") in impls
    assert all(r["ms"] > 0 for r in result["rows"])
    unfused = [r for r in result["rows"] if r["impl"].startswith("unfused")]
    assert unfused and all(r["unfused_equals_ours"] for r in unfused)
    assert result["machine"]["commit"] and result["command"].startswith("python -m bench.gpu_kernels --smoke")
    assert any("mixed-shift time" in line for line in result["targets"])
