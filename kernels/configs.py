"""Autotuning configurations for the integer GEMM kernels.

On Hopper, int8 `tl.dot` maps to wgmma only with BLOCK_M % 64 == 0, BLOCK_K >= 32 and
num_warps % 4 == 0. The tiles start from int8 tiles tuned elsewhere for H100 (mid M 128x128,
small M 64x64x256) and were then chosen so that none spills on sm_90 or sm_80 as a typical
launch specializes it (`python -m dqt_triton.kernels.aot`, bench/results/aot-*.md): every
128-row or 128-column tile runs 8 warps (with 4 warps, 128x128x64 spilled 344-720 bytes per
thread), and 128x128x128 is gone (8 bytes on sm_80 even with 8 warps). A 16-row tile is kept for
batch 1..16, where mma.sync beats padding M to 64. Under the interpreter autotuning would time
every config, so there is exactly one small one.
"""

from __future__ import annotations

import triton

from .common import interpreting

INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_GPU_MATMUL_TILES = (
    (128, 128, 64, 8, 4),
    (64, 128, 128, 8, 5),
    (64, 64, 256, 8, 4),
    (16, 64, 64, 4, 4),
    (16, 128, 128, 4, 5),
)

_GPU_CONV_TILES = (
    (128, 128, 64, 8, 4),
    (128, 64, 64, 8, 4),
    (64, 128, 64, 8, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 8, 4),
    (64, 64, 32, 4, 3),
    (16, 64, 64, 4, 3),
)


def _configs(tiles) -> list[triton.Config]:
    if interpreting():
        return [triton.Config(dict(INTERPRETER_TILE), num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in tiles
    ]


def matmul_configs() -> list[triton.Config]:
    """Configurations `int_matmul` autotunes over (keyed on the M bucket, N, K and epilogue)."""
    return _configs(_GPU_MATMUL_TILES)


def conv_configs() -> list[triton.Config]:
    """Configurations `int_conv2d` autotunes over (keyed on the layer geometry)."""
    return _configs(_GPU_CONV_TILES)


def m_bucket(m: int) -> int:
    """Autotune key for the row count: powers of two up to 4096, so each batch-size regime
    gets its own tuned tile without retuning for every M."""
    bucket = 16
    while bucket < m and bucket < 4096:
        bucket *= 2
    return bucket
