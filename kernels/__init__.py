"""Triton kernels implementing docs/numerics.md on the GPU (and under TRITON_INTERPRET=1).

`AVAILABLE` tells `dqt_triton.ops` whether Triton imported; the ops are registered as
`torch.ops.dqt_triton.*` (see `library.py`). Set TRITON_INTERPRET=1 before importing this
package to run the kernels on CPU tensors.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    AVAILABLE = False
    IMPORT_ERROR: str | None = str(exc)
else:
    from .library import (
        int_adaptive_avg_pool2d, int_bmm, int_conv2d, int_elementwise, int_embedding, int_layernorm, int_lut,
        int_matmul, int_pool2d, int_softmax,
    )

    AVAILABLE = True
    IMPORT_ERROR = None

__all__ = ["AVAILABLE", "IMPORT_ERROR", "int_matmul", "int_conv2d", "int_elementwise", "int_pool2d",
           "int_adaptive_avg_pool2d", "int_lut", "int_bmm", "int_softmax", "int_layernorm", "int_embedding"]
