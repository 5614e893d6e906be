"""Autotuning configurations for the integer GEMM kernels.

On Hopper, int8 `tl.dot` maps to wgmma only with BLOCK_M % 64 == 0, BLOCK_K >= 32 and
num_warps % 4 == 0. The tiles start from int8 tiles tuned elsewhere for H100 (mid M 128x128,
small M 64x64x256) and were then cut to what compiles without spilling on sm_90 and sm_80 in
every specialization the real launches produce (`python -m dqt_triton.kernels.aot --launches`,
bench/results/aot-launches-2026-12-01.md: the tests' and the benchmark's shapes, odd ones among
them, with every flag). An odd K, row stride or N makes every load of a tile one byte (or one int32) with its own 64-bit address and predicate, and the requantizing epilogue widens the
accumulator to int64; the old table spilled there although it compiled clean for one aligned
example launch:

- matmul 128x128x64 (8 warps) spilled 216-744 bytes per thread on sm_90 and 104-2784 on sm_80,
  64x128x128 464-3464, 64x64x256 208-3408 and 16x128x128 (4 warps) up to 4784 (ptxas fell
  back to 32 registers). Cut down, 128x128x32 still spilled (64-392), and so did 128x64x64 and
  64x128x64 with 8 warps (up to 384) or 16 warps (128 registers each, 112-568), 64x64x128
  (320), 64x256x32 (440), 256x64x32 (16, sm_90), 32x128x64 (96, sm_80) and 64x64x64 with 4
  warps (576). The table now holds 128x64x32 and 64x128x32 (8 warps), 128x32x32 (4 warps) and
  two 16-row tiles for batch 1..16, where mma.sync beats padding M to 64: 16x128x64 (8 warps)
  and 16x64x64 (8 warps: with 4 it spilled 8 bytes on sm_80 with per-sample shifts, uint8 codes,
  the raw epilogue and an odd K). 64x64x64 with 8 warps is spill-free too but would give the
  shape that faulted on the H100 (64x45x37) a second tile and bring its autotuner benchmark back.
- conv 128x128x64 spilled 8-120 bytes and gave its place to 64x128x32 (128x64x32 spilled up to
  136 bytes on the dilated grouped NCHW bounds shape); 64x64x64 and 64x64x32 spilled up to 408
  and 352 bytes with 4 warps and run 8.

None of the new tiles has been timed on a GPU yet. Larger tiles need kernel changes, not table
changes: e.g. row strides padded to 16 bytes by the launchers, so that odd shapes get vector
loads too. Tests and bench scripts pin tiles by index (DQT_PIN_TILE, `bench.gpu_sweep --configs`):
the 16-row tiles stay at matmul:3 and conv:6. Before timing, `prune_tiles` drops the tiles
wider than the problem. Under the interpreter autotuning would time every config, so there is
exactly one small one; `gpu_*_configs` give the GPU tiles anywhere, for the tests that pin them.
"""

from __future__ import annotations

import triton

from .common import interpreting

INTERPRETER_TILE = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
_GPU_MATMUL_TILES = (
    (128, 64, 32, 8, 4),
    (64, 128, 32, 8, 4),
    (128, 32, 32, 4, 4),
    (16, 64, 64, 8, 4),
    (16, 128, 64, 8, 4),
)

_GPU_CONV_TILES = (
    (64, 128, 32, 8, 4),
    (128, 64, 64, 8, 4),
    (64, 128, 64, 8, 4),
    (64, 64, 64, 8, 4),
    (128, 128, 32, 8, 4),
    (64, 64, 32, 8, 3),
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
