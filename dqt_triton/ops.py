"""Public integer ops of the DQT contract (docs/numerics.md) and their dispatch.

Every op validates its inputs, normalises them into one plan (`Epilogue`, per-row shift
tensors), and hands that plan to the backend chosen by `dqt_triton.dispatch`. No kernel code
lives here: the Numba kernels are in `dqt_triton.reference`, the Triton ones in
`dqt_triton.kernels`. The ops live in sibling modules, re-exported here:

- `ops_gemm`: `int_matmul`, `int_conv2d`, and prepared layers (`prepare_layer`, `run_prepared`,
  `PreparedLayer`);
- `ops_elementwise`: `int_add`, `int_mul`, `int_lut`;
- `ops_pool`: `int_max_pool2d`, `int_avg_pool2d`, `int_adaptive_avg_pool2d`;
- `ops_transformer`: `int_bmm` (two activations), `int_softmax`, `int_layernorm`, `int_embedding`,
  and the forms an integer program calls with constants it has checked once (`run_softmax`,
  `run_layernorm`; `check_softmax_table`, `check_layernorm_constants`);
- `ops_common`: the checks they share, the `Epilogue` plan and the epilogue keywords of the
  layer ops (`EpilogueOptions`).
"""

from __future__ import annotations

from .ops_common import CODE_DTYPES, Epilogue, EpilogueOptions, IntPair, ShiftArg
from .ops_elementwise import int_add, int_lut, int_mul
from .ops_gemm import PreparedLayer, int_conv2d, int_matmul, prepare_layer, run_prepared
from .ops_pool import int_adaptive_avg_pool2d, int_avg_pool2d, int_max_pool2d
from .ops_transformer import (
    check_layernorm_constants,
    check_softmax_table,
    int_bmm,
    int_embedding,
    int_layernorm,
    int_softmax,
    run_layernorm,
    run_softmax,
)
from .reference.common import WIDTH_TABLE_ROWS

__all__ = [
    "CODE_DTYPES",
    "WIDTH_TABLE_ROWS",
    "Epilogue",
    "EpilogueOptions",
    "IntPair",
    "PreparedLayer",
    "ShiftArg",
    "check_layernorm_constants",
    "check_softmax_table",
    "int_adaptive_avg_pool2d",
    "int_add",
    "int_avg_pool2d",
    "int_bmm",
    "int_embedding",
    "int_layernorm",
    "int_softmax",
    "int_conv2d",
    "int_lut",
    "int_matmul",
    "int_max_pool2d",
    "int_mul",
    "prepare_layer",
    "run_layernorm",
    "run_prepared",
    "run_softmax",
]
