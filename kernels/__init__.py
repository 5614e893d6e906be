"""Triton kernels implementing docs/numerics.md on the GPU (and under TRITON_INTERPRET=1)."""

AVAILABLE = False
