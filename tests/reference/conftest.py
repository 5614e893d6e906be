"""Every CPU-path test here runs on both GEMM routes of `reference.blas` (int8 and float32),
whatever this machine's CPU would pick, and fails if the route it asked for did not run."""

from __future__ import annotations

import pytest

from dqt_triton.reference import blas


@pytest.fixture(autouse=True, params=blas.CPU_GEMM_ROUTES)
def gemm_route(request, monkeypatch):
    """Force one route for the test; afterwards, if the test ran any library GEMM, it ran only
    on that route (a silent fallback to the other fails here)."""
    route = request.param
    other = next(r for r in blas.CPU_GEMM_ROUTES if r != route)
    monkeypatch.setattr(blas, "_forced_route", route)
    before = dict(blas.GEMM_CALLS)
    yield route
    ran = {r: blas.GEMM_CALLS[r] - before[r] for r in blas.CPU_GEMM_ROUTES}
    assert ran[other] == 0, f"asked for the {route} GEMM route, {ran[other]} GEMM call(s) ran on {other}"
