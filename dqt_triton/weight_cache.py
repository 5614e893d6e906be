"""Shifted weight tables of the CPU path, kept between calls for weights that do not change.

The CPU path multiplies int8 or float32 copies of the shifted weights, by its GEMM route
(`reference.blas.weight_table`).
Building them costs a pass over the weights per call, as much as the GEMM itself at batch 1, so
frozen programs ask for them to be cached (``cache_weight=True`` in `dqt_triton.ops`). An entry is
keyed by the weight tensor's identity, and it is used only while that tensor is alive and its
storage pointer, shape, strides and version counter are unchanged, so in-place torch updates
(optimizer steps, ``load_state_dict``, ``copy_``) invalidate it. Writes that torch cannot see (through
``.data``, or into a numpy array sharing the memory) are not detected: do not ask for caching on
such tensors, or call `clear()` after them. The byte bound counts a table's codes and sums, not
the oneDNN packings of its convolutions (`reference.onednn_conv.packed`, about one more copy of
the codes per input class, at most `PACKED_SHAPES`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable

import torch

from .reference import WeightTable

DEFAULT_MAX_BYTES = int(os.environ.get("DQT_WEIGHT_CACHE_MB", "1024")) << 20

_lock = threading.RLock()  # a weakref callback may run while the lock is held
_entries: "OrderedDict[tuple, tuple]" = OrderedDict()  # key -> (weakref, signature, table, nbytes)
_state = {"bytes": 0, "max_bytes": DEFAULT_MAX_BYTES, "hits": 0, "misses": 0}


def _signature(w: torch.Tensor) -> tuple:
    return (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w._version)


def _drop(key: tuple) -> None:
    entry = _entries.pop(key, None)
    if entry is not None:
        _state["bytes"] -= entry[3]


def lookup(w: torch.Tensor, shift: int, round_rule: int, build: Callable[[], WeightTable]) -> WeightTable:
    """The table of `w` at `shift`, built with `build()` on a miss and kept (LRU, bounded bytes)."""
    key = (id(w), shift, round_rule)
    signature = _signature(w)
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is w and entry[1] == signature:
            _entries.move_to_end(key)
            _state["hits"] += 1
            return entry[2]
        _drop(key)
        _state["misses"] += 1
    table = build()
    nbytes = table.values.nbytes + table.channel_sums.nbytes
    if nbytes > _state["max_bytes"]:
        return table
    with _lock:
        ref = weakref.ref(w, lambda _, key=key: _forget(key))
        _entries[key] = (ref, signature, table, nbytes)
        _state["bytes"] += nbytes
        while _state["bytes"] > _state["max_bytes"]:
            _drop(next(iter(_entries)))
    return table


def _forget(key: tuple) -> None:
    with _lock:
        entry = _entries.get(key)
        if entry is not None and entry[0]() is None:
            _drop(key)


def clear() -> None:
    """Drop every cached table."""
    with _lock:
        _entries.clear()
        _state["bytes"] = 0


def set_max_bytes(max_bytes: int) -> None:
    """Bound the cache (default 1 GiB, or ``DQT_WEIGHT_CACHE_MB``); 0 disables caching."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    with _lock:
        _state["max_bytes"] = int(max_bytes)
        while _state["bytes"] > _state["max_bytes"]:
            _drop(next(iter(_entries)))


def stats() -> dict:
    """Entries, bytes held, byte bound, hits and misses since import."""
    with _lock:
        return {"entries": len(_entries), **_state}
