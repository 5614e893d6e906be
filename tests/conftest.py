"""Test session set-up: where the Triton kernels run, skipping GPU-only tests without a GPU, and
pinning one GPU tile for a whole session.

Without a CUDA device the Triton kernels run through the interpreter on CPU tensors, which
must be switched on before `dqt_triton.kernels` is imported. With a CUDA device the same
kernel tests run compiled on the GPU (unless TRITON_INTERPRET is already set).

DQT_PIN_TILE=matmul:I (or conv:I) pins the autotuned GEMM (or convolution) kernel to GPU tile I
of `gpu_matmul_configs()` (`gpu_conv_configs()`) for the session: the autotuner then launches
that tile alone, through the launcher's own grid, with no pruning and no benchmarking
(`python -m bench.gpu` runs a faulting test once per tile this way). The session header names
the tile, and the terminal summary counts the kernel's launches by the tile they ran with.
"""

from __future__ import annotations

import collections
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

PIN_ENV = "DQT_PIN_TILE"
# kind -> (name of the autotuned kernel in dqt_triton.kernels.gemm, name of its GPU tile list in configs)
PIN_KINDS = {"matmul": ("int_matmul_kernel", "gpu_matmul_configs"), "conv": ("int_conv2d_kernel", "gpu_conv_configs")}


def tile_text(config) -> str:
    """'BLOCK_M=16 BLOCK_N=64 BLOCK_K=64 num_warps=4 num_stages=4': a tile as the reports name it."""
    blocks = " ".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{blocks} num_warps={config.num_warps} num_stages={config.num_stages}"


class PinnedTile:
    """One GPU tile pinned on an autotuned kernel, counting the kernel's launches by the tile
    each ran with (the autotuner's `best_config` after the launch)."""

    def __init__(self, value: str):
        kind, sep, index = value.partition(":")
        if kind not in PIN_KINDS or not sep or not index.isdigit():
            raise pytest.UsageError(f"{PIN_ENV}={value!r}: expected 'matmul:I' or 'conv:I', I an index into "
                                    "gpu_matmul_configs() or gpu_conv_configs()")
        from dqt_triton.kernels import configs, gemm

        kernel_name, tiles_name = PIN_KINDS[kind]
        tiles = getattr(configs, tiles_name)()
        if int(index) >= len(tiles):
            raise pytest.UsageError(f"{PIN_ENV}={value!r}: {tiles_name}() has {len(tiles)} tiles, "
                                    f"indices 0..{len(tiles) - 1}")
        self.value, self.kernel_name, self.config = value, kernel_name, tiles[int(index)]
        self.kernel = getattr(gemm, kernel_name)
        self.launches: collections.Counter[str] = collections.Counter()
        # One config: Autotuner.run skips pruning and timing and launches it through the grid.
        self.kernel.configs = [self.config]
        self.kernel.cache = {}
        launch = self.kernel.run

        def counted(*args, **kwargs):
            result = launch(*args, **kwargs)
            self.launches[tile_text(self.kernel.best_config)] += 1
            return result

        self.kernel.run = counted  # the instance attribute shadows Autotuner.run for kernel[grid](...)

    def header(self) -> str:
        return f"{PIN_ENV}={self.value}: {self.kernel_name} pinned to {tile_text(self.config)}"

    def summary(self) -> str:
        """One line a driver can parse: how many launches ran, and how many with the pinned tile."""
        total = sum(self.launches.values())
        pinned = self.launches[tile_text(self.config)]
        others = "; ".join(f"{n} with {tile}" for tile, n in self.launches.items() if tile != tile_text(self.config))
        return (f"{PIN_ENV}={self.value}: {self.kernel_name} launched {total} times, {pinned} with the pinned tile "
                f"{tile_text(self.config)}" + (f"; OTHER TILES: {others}" if others else ""))


_pinned: PinnedTile | None = None


def pytest_configure(config):
    global _pinned
    value = os.environ.get(PIN_ENV, "")
    if value:
        _pinned = PinnedTile(value)


def pytest_report_header(config):
    return _pinned.header() if _pinned else None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _pinned:
        terminalreporter.write_line(_pinned.summary())


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (compiled Triton kernels)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
