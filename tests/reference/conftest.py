"""Every CPU-path test here runs on each way `reference.blas` computes integer products: the int8
route with oneDNN's int8 convolution, the int8 route with its convolutions on im2col and the
int8 GEMM, and the float32 route, whatever this machine's CPU would pick; a test fails if the
way it asked for did not run."""

from __future__ import annotations

import pytest

from dqt_triton.reference import blas

# (route, library convolution on the int8 route) -> the GEMM_CALLS counters that must not move.
WAYS = {
    ("int8", True): ("float32",),
    ("int8", False): ("float32", "int8 conv"),
    ("float32", False): ("int8", "int8 conv"),
}


@pytest.fixture(autouse=True, params=list(WAYS), ids=["int8", "int8-im2col", "float32"])
def gemm_route(request, monkeypatch):
    """Force one way for the test; afterwards, if the test ran any library call, none ran on a
    counter the way excludes (a silent fallback fails here)."""
    route, library_conv = request.param
    if library_conv and not blas.library_conv_enabled():
        pytest.skip("oneDNN's int8 convolution is not exact on this CPU (onednn_conv.conv_probe)")
    monkeypatch.setattr(blas, "_forced_route", route)
    monkeypatch.setattr(blas, "_library_conv", library_conv)
    before = dict(blas.GEMM_CALLS)
    yield route
    for counter in WAYS[request.param]:
        ran = blas.GEMM_CALLS[counter] - before[counter]
        assert ran == 0, f"asked for {request.node.callspec.id}, {ran} call(s) ran on {counter}"
