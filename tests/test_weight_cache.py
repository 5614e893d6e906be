"""The CPU path's cache of shifted weight tables: same results, invalidated by in-place updates,
bounded, released with the weight."""

import gc

import pytest
import torch

import dqt_triton as dq
from dqt_triton import weight_cache


@pytest.fixture(autouse=True)
def fresh_cache():
    weight_cache.clear()
    weight_cache.set_max_bytes(weight_cache.DEFAULT_MAX_BYTES)
    yield
    weight_cache.clear()
    weight_cache.set_max_bytes(weight_cache.DEFAULT_MAX_BYTES)


def _operands(seed=0, M=5, K=40, N=7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (M, K), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (N, K), generator=gen).to(torch.int8)
    return x, w


def test_cached_calls_equal_the_reference_and_hit():
    x, w = _operands()
    expected = dq.int_matmul(x, w, act_shift=1, weight_shift=3, backend="reference")
    for _ in range(3):
        out = dq.int_matmul(x, w, act_shift=1, weight_shift=3, backend="cpu", cache_weight=True)
        assert torch.equal(out, expected)
    stats = weight_cache.stats()
    assert (stats["entries"], stats["misses"] >= 1, stats["hits"] >= 2) == (1, True, True)


def test_in_place_update_invalidates_the_entry():
    x, w = _operands()
    dq.int_matmul(x, w, weight_shift=2, backend="cpu", cache_weight=True)
    w.copy_(torch.flip(w, dims=[1]))
    out = dq.int_matmul(x, w, weight_shift=2, backend="cpu", cache_weight=True)
    assert torch.equal(out, dq.int_matmul(x, w, weight_shift=2, backend="reference"))


def test_conv_cache_per_shift_and_mixed_per_sample_shifts():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (4, 6, 7, 7), generator=gen).to(torch.uint8)
    w = torch.randint(-128, 128, (5, 6, 3, 3), generator=gen).to(torch.int8)
    kw = torch.tensor([0, 3, 3, 6])
    for _ in range(2):
        out = dq.int_conv2d(x, w, padding=1, weight_shift=kw, act_shift=kw, backend="cpu", cache_weight=True)
        assert torch.equal(out, dq.int_conv2d(x, w, padding=1, weight_shift=kw, act_shift=kw, backend="reference"))
    assert weight_cache.stats()["entries"] == 3  # shifts 0, 3 and 6


def test_entries_go_with_their_weight_and_respect_the_bound():
    x, w = _operands()
    dq.int_matmul(x, w, backend="cpu", cache_weight=True)
    assert weight_cache.stats()["entries"] == 1
    one_table = weight_cache.stats()["bytes"]  # int8 or float32 codes plus int64 sums, by the GEMM route
    assert one_table in (7 * 40 * 4 + 7 * 8, 7 * 40 + 7 * 8)
    del w
    gc.collect()
    assert weight_cache.stats()["entries"] == 0
    weight_cache.set_max_bytes(one_table)
    keep = [_operands(seed)[1] for seed in range(3)]
    for w in keep:
        dq.int_matmul(x, w, backend="cpu", cache_weight=True)
    assert weight_cache.stats()["entries"] == 1 and weight_cache.stats()["bytes"] <= one_table
    weight_cache.set_max_bytes(0)
    assert weight_cache.stats()["entries"] == 0
    dq.int_matmul(x, keep[0], backend="cpu", cache_weight=True)
    assert weight_cache.stats()["entries"] == 0


def test_no_caching_unless_asked_and_bad_bound():
    x, w = _operands()
    dq.int_matmul(x, w, backend="cpu")
    assert weight_cache.stats()["entries"] == 0
    with pytest.raises(ValueError, match="max_bytes"):
        weight_cache.set_max_bytes(-1)
