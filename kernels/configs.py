"""Autotuning configurations for the integer GEMM kernels.

On Hopper, int8 `tl.dot` maps to wgmma only with BLOCK_M % 64 == 0, BLOCK_K >= 32 and
num_warps % 4 == 0. The tiles start from int8 tiles tuned elsewhere for H100 (mid M 128x128,
small M 64x64x256) and were then chosen so that none spills on sm_90 or sm_80 as a typical
launch specializes it (`python -m dqt_triton.kernels.aot`, bench/results/aot-*.md): every
128-row or 128-column tile runs 8 warps (with 4 warps, 128x128x64 spilled 344-720 bytes per
thread), and 128x128x128 is gone (8 bytes on sm_80 even with 8 warps). A 16-row tile is kept for
batch 1..16, where mma.sync beats padding M to 64. Before timing, `prune_tiles` drops the tiles
wider than the problem. Under the interpreter autotuning would time every config, so there is
exactly one small one; `gpu_*_configs` give the GPU tiles anywhere, for the tests that pin them.
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


def _gpu_configs(tiles) -> list[triton.Config]:
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
        for bm, bn, bk, warps, stages in tiles
    ]


def gpu_matmul_configs() -> list[triton.Config]:
    """Every GPU tile of `int_matmul`, on any machine (the bounds and autotuner tests run them
    under the interpreter)."""
    return _gpu_configs(_GPU_MATMUL_TILES)


def gpu_conv_configs() -> list[triton.Config]:
    """Every GPU tile of `int_conv2d`, on any machine."""
    return _gpu_configs(_GPU_CONV_TILES)


def _interpreter_configs() -> list[triton.Config]:
    return [triton.Config(dict(INTERPRETER_TILE), num_warps=4, num_stages=1)]


def matmul_configs() -> list[triton.Config]:
    """Configurations `int_matmul` autotunes over: the GPU tiles, or one small tile under the
    interpreter (which would otherwise time every tile)."""
    return _interpreter_configs() if interpreting() else gpu_matmul_configs()


def conv_configs() -> list[triton.Config]:
    """Configurations `int_conv2d` autotunes over (as `matmul_configs`)."""
    return _interpreter_configs() if interpreting() else gpu_conv_configs()


def _covering(size: int) -> int:
    """The smallest power of two (at least 1) that holds `size`."""
    return 1 << max(int(size) - 1, 0).bit_length()


def prune_tiles(configs: list[triton.Config], rows: int, cols: int, depth: int) -> list[triton.Config]:
    """The configs whose tile is no wider than the problem needs: BLOCK_M, BLOCK_N and BLOCK_K
    each at most the power of two covering rows, cols and depth (a K step's reduction length),
    or the smallest such block on offer. A tile wider than that only loads masked lanes; on small
    odd shapes it also gets the heaviest specializations. If no config fits all three, the
    smallest tiles are kept."""
    smallest = {name: min(c.kwargs[name] for c in configs) for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
    need = {"BLOCK_M": rows, "BLOCK_N": cols, "BLOCK_K": depth}
    kept = [c for c in configs
            if all(c.kwargs[name] <= max(smallest[name], _covering(need[name])) for name in need)]
    if kept:
        return kept
    area = min(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] for c in configs)
    return [c for c in configs if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"] == area]


def prune_matmul_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """`prune_configs_by` hook of `int_matmul_kernel`: `prune_tiles` on (M, N, K)."""
    return prune_tiles(configs, named_args["M"], named_args["N"], named_args["K"])


def prune_conv_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """`prune_configs_by` hook of `int_conv2d_kernel`: `prune_tiles` on (output pixels, output
    channels of a group, input channels of a group), the K loop stepping over channels."""
    return prune_tiles(configs, named_args["M"], named_args["COUT_GROUP"], named_args["C_GROUP"])


def m_bucket(m: int) -> int:
    """Autotune key for the row count: powers of two up to 4096, so each batch-size regime
    gets its own tuned tile without retuning for every M."""
    bucket = 16
    while bucket < m and bucket < 4096:
        bucket *= 2
    return bucket
