"""Every GPU tile stays inside its tensors and equals the Numba reference bit for bit.

Under the interpreter each load and store is checked (`bounds.checked_launches`): every active
lane must address an element of one tensor argument of the launch. Inputs sit inside
guard-banded buffers. Each GPU tile of `kernels/configs.py` is pinned alone and launched
through the launcher's own grid on odd shapes (the tiles a GPU runs, which the interpreter
otherwise never runs); the element-wise, pooling and lookup kernels run at the GPU's block
size. A positive control injects a one-sample overrun of the weight-shift buckets and demands
that the checker catch it in every tile.

The transformer kernels (`int_bmm`, softmax, LayerNorm, embedding) run the shapes `aot` compiles,
at the GPU's row and element blocks, with a positive control of their own.

CI runs every tile on two of the shapes, one flag set each (both rotated, so every shape meets
two or three tiles and every flag set appears); the `slow` grid runs every tile on every shape
with eight flag sets, which between them give every flag each value with every tile.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import dqt_triton as dq
from dqt_triton.kernels import aot, common, gemm, transformer
from dqt_triton.kernels.aot_cases import run_transformer_case
from dqt_triton.kernels.configs import gpu_conv_configs, gpu_matmul_configs
from tests.kernels.bounds import (
    autotuned_with_two_launches, checked_launches, guarded, guards_intact, pinned, tile_label,
)
from tests.kernels.device import INTERPRETED
from tests.strategies import codes

pytestmark = [pytest.mark.interpreter,
              pytest.mark.skipif(not INTERPRETED, reason="the address checker wraps the Triton interpreter")]

# The odd shapes and flag sets live in `aot`, which compiles what these launches specialize into.
MATMUL_SHAPES = list(aot.BOUNDS_MATMULS)  # (M, K, N)
# name: (B, C, H, W, Cout, kernel, stride, padding, dilation, groups, NCHW input)
CONV_CASES = dict(zip(("stride2", "depthwise", "stem7x7", "pointwise", "dilated_grouped_nchw"), aot.BOUNDS_CONVS))
# (per-sample weight shifts, uint8 codes, round rule, epilogue, [8, N] tables, pre-shifted weights):
# eight sets in which every flag takes each value and each epilogue appears twice.
FLAG_SETS = list(aot.FLAG_SETS)
MATMUL_TILES = gpu_matmul_configs()
CONV_TILES = gpu_conv_configs()


def _epilogue(n: int, epilogue: str, tables: bool, gen: torch.Generator) -> dict:
    rows = (8, n) if tables else (n,)
    kwargs = {"bias": torch.randint(-(2**20), 2**20, rows, generator=gen, dtype=torch.int32)}
    if epilogue.startswith("requant"):
        kwargs.update(multiplier=torch.randint(2**30, 2**31 - 1, rows, generator=gen),
                      shift=torch.randint(36, 44, (n,), generator=gen), relu=epilogue == "requant_relu")
    elif epilogue == "float":
        kwargs["out_scale"] = torch.rand(rows, generator=gen) * 1e-4
    return kwargs


def _shifts(samples: int, per_sample: bool, gen: torch.Generator):
    act_shift = torch.randint(0, 8, (samples,), generator=gen)
    return act_shift, (torch.randint(0, 8, (samples,), generator=gen) if per_sample else 3)


def _run_triton(x, w, act_shift, weight_shift, rule, kwargs, preshifted, conv=None):
    """The Triton result: the op called directly (weights shifted in the K loop) or a prepared
    layer (pre-shifted weight tables, as frozen programs run)."""
    if preshifted:
        layer = dq.ops.prepare_layer(w, x_dtype=x.dtype, conv=conv, shift_rule=rule, **kwargs)
        return dq.ops.run_prepared(layer, x, act_shift, weight_shift, backend="triton")
    op = dq.int_conv2d if conv is not None else dq.int_matmul
    return op(x, w, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule, backend="triton",
              **(conv or {}), **kwargs)


def _check(x, w, act_shift, weight_shift, rule, kwargs, preshifted, conv=None):
    op = dq.int_conv2d if conv is not None else dq.int_matmul
    want = op(x, w, act_shift=act_shift, weight_shift=weight_shift, shift_rule=rule, backend="reference",
              **(conv or {}), **kwargs)
    x_g, w_g = guarded(x), guarded(w)
    with checked_launches() as checker:
        got = _run_triton(x_g, w_g, act_shift, weight_shift, rule, kwargs, preshifted, conv)
    assert not checker.violations, checker.violations[0]
    assert checker.launches and checker.accesses > 0
    assert guards_intact(w_g) and guards_intact(x_g)
    assert got.dtype == want.dtype and torch.equal(got, want)


def matmul_case(shape, flags, seed):
    M, K, N = shape
    per_sample, unsigned, round_rule, epilogue, tables, preshifted = flags
    gen = torch.Generator().manual_seed(seed)
    x = codes(gen, (M, K), torch.uint8 if unsigned else torch.int8, extreme=True)
    w = codes(gen, (N, K), torch.int8, extreme=True)
    act_shift, weight_shift = _shifts(M, per_sample, gen)
    return x, w, act_shift, weight_shift, "round" if round_rule else "floor", _epilogue(N, epilogue, tables, gen), \
        preshifted


def conv_case(name, flags, seed):
    B, C, H, W, Cout, k, stride, pad, dil, groups, nchw = CONV_CASES[name]
    per_sample, unsigned, round_rule, epilogue, tables, preshifted = flags
    gen = torch.Generator().manual_seed(seed)
    x = codes(gen, (B, C, H, W), torch.uint8 if unsigned else torch.int8, extreme=True)
    if not nchw:
        x = x.contiguous(memory_format=torch.channels_last)
    w = codes(gen, (Cout, C // groups, k, k), torch.int8, extreme=True)
    act_shift, weight_shift = _shifts(B, per_sample, gen)
    conv = {"stride": stride, "padding": pad, "dilation": dil, "groups": groups}
    return x, w, act_shift, weight_shift, "round" if round_rule else "floor", \
        _epilogue(Cout, epilogue, tables, gen), preshifted, conv


def _grid(tiles, cases, slow: bool):
    """(tile, case, flag set) triples: every tile on every case with every flag set (slow), or
    each tile on two cases two apart (so every case meets two or three tiles) with one flag set,
    rotated."""
    if slow:
        pairs = list(itertools.product(range(len(tiles)), cases))
    else:
        pairs = [(tile, cases[(tile + step) % len(cases)]) for tile in range(len(tiles)) for step in (0, 2)]
    out = []
    for i, (tile, case) in enumerate(pairs):
        sets = range(len(FLAG_SETS)) if slow else [i % len(FLAG_SETS)]
        out += [pytest.param(tile, case, f, id=f"{tile_label(tiles[tile])}-{case}-flags{f}",
                             marks=[pytest.mark.slow] if slow else []) for f in sets]
    return out


def _matmul_grid(slow):
    return _grid(MATMUL_TILES, ["x".join(map(str, s)) for s in MATMUL_SHAPES], slow)


@pytest.mark.parametrize(("tile", "shape", "flags"), _matmul_grid(False) + _matmul_grid(True))
def test_every_matmul_tile_stays_in_bounds_and_exact(tile, shape, flags):
    M, K, N = map(int, shape.split("x"))
    x, w, ka, kw, rule, kwargs, preshifted = matmul_case((M, K, N), FLAG_SETS[flags], seed=tile * 100 + flags)
    with pinned(gemm.int_matmul_kernel, MATMUL_TILES[tile]):
        _check(x, w, ka, kw, rule, kwargs, preshifted)


def _conv_grid(slow):
    return _grid(CONV_TILES, list(CONV_CASES), slow)


@pytest.mark.parametrize(("tile", "case", "flags"), _conv_grid(False) + _conv_grid(True))
def test_every_conv_tile_stays_in_bounds_and_exact(tile, case, flags):
    x, w, ka, kw, rule, kwargs, preshifted, conv = conv_case(case, FLAG_SETS[flags], seed=tile * 100 + flags)
    with pinned(gemm.int_conv2d_kernel, CONV_TILES[tile]):
        _check(x, w, ka, kw, rule, kwargs, preshifted, conv)


# ----------------------------------------------------------------------------- positive control


def _overrunning_buckets(monkeypatch):
    """weight_shift_buckets whose last bucket claims one sample more than there are. The sample
    order is guard-banded with zeros, so even unchecked the overrun reads memory we own."""
    real = gemm.weight_shift_buckets

    def overrun(weight_shift, samples):
        bucketed, order, bucket_start = real(weight_shift, samples)
        bucket_start = bucket_start.clone()
        bucket_start[-1] += 1
        return bucketed, guarded(order, sentinel=0), bucket_start

    monkeypatch.setattr(gemm, "weight_shift_buckets", overrun)


@pytest.mark.parametrize("tile", range(len(MATMUL_TILES)), ids=[tile_label(c) for c in MATMUL_TILES])
def test_checker_catches_an_injected_overrun_in_every_matmul_tile(tile, monkeypatch):
    """Positive control: run with DQT_BOUNDS_CHECK=0 and these tests fail (the overrun goes unseen)."""
    _overrunning_buckets(monkeypatch)
    x, w, ka, kw, rule, kwargs, preshifted = matmul_case((17, 13, 23), FLAG_SETS[0], seed=tile)
    with pinned(gemm.int_matmul_kernel, MATMUL_TILES[tile]), checked_launches() as checker:
        with pytest.raises(Exception, match="OutOfBounds"):
            _run_triton(x, w, ka, kw, rule, kwargs, preshifted)
    assert checker.violations and "sample_order_ptr" in checker.violations[0], checker.violations


@pytest.mark.parametrize("tile", range(len(CONV_TILES)), ids=[tile_label(c) for c in CONV_TILES])
def test_checker_catches_an_injected_overrun_in_every_conv_tile(tile, monkeypatch):
    _overrunning_buckets(monkeypatch)
    x, w, ka, kw, rule, kwargs, preshifted, conv = conv_case("stride2", FLAG_SETS[0], seed=tile)
    with pinned(gemm.int_conv2d_kernel, CONV_TILES[tile]), checked_launches() as checker:
        with pytest.raises(Exception, match="OutOfBounds"):
            _run_triton(x, w, ka, kw, rule, kwargs, preshifted, conv)
    assert checker.violations and "sample_order_ptr" in checker.violations[0], checker.violations


# ----------------------------------------------------------------------------- the autotuner path


@pytest.mark.parametrize(("shape", "flags"), [((64, 45, 37), 0), ((64, 45, 37), 1), ((150, 40, 70), 2),
                                              ((300, 256, 160), 3)])
def test_autotuner_benchmarks_every_kept_matmul_tile_in_bounds(shape, flags):
    """The real autotuner over every GPU tile: each kept tile launched twice as its benchmark,
    one after another in one process (as on the H100 that faulted in the autotuner's benchmark
    of M=64, K=45, N=37), then the winner a third time; all in bounds, the result exact."""
    x, w, ka, kw, rule, kwargs, preshifted = matmul_case(shape, FLAG_SETS[flags], seed=flags)
    kept = gemm.int_matmul_kernel.early_config_prune(MATMUL_TILES, {"M": shape[0], "K": shape[1], "N": shape[2]})
    with autotuned_with_two_launches(gemm.int_matmul_kernel, MATMUL_TILES) as benchmarked:
        _check(x, w, ka, kw, rule, kwargs, preshifted)
        chosen = list(gemm.int_matmul_kernel.cache.values())
    assert benchmarked == (kept if len(kept) > 1 else [])
    assert chosen == [kept[-1]]
    if shape[0] >= 256:
        assert len(kept) == len(MATMUL_TILES)  # a large problem keeps (and benchmarks) every tile


@pytest.mark.parametrize(("case", "flags"), [("stride2", 0), ("pointwise", 5), ("stem7x7", 2)])
def test_autotuner_benchmarks_every_kept_conv_tile_in_bounds(case, flags):
    x, w, ka, kw, rule, kwargs, preshifted, conv = conv_case(case, FLAG_SETS[flags], seed=flags)
    with autotuned_with_two_launches(gemm.int_conv2d_kernel, CONV_TILES) as benchmarked:
        _check(x, w, ka, kw, rule, kwargs, preshifted, conv)
    assert len(benchmarked) != 1 and all(c in CONV_TILES for c in benchmarked)


# ----------------------------------------------------------------------------- one-lane-per-element kernels


def test_elementwise_pool_and_lut_kernels_stay_in_bounds_at_the_gpu_block(monkeypatch):
    """1,024 lanes per program (the GPU's block) on sizes that leave a ragged last program."""
    monkeypatch.setattr(common, "INTERPRETER_BLOCK", common.GPU_BLOCK)
    gen = torch.Generator().manual_seed(9)
    a = guarded(codes(gen, (3, 7, 11, 13), torch.uint8, extreme=True).contiguous(memory_format=torch.channels_last))
    b = guarded(codes(gen, (3, 7, 11, 13), torch.uint8, extreme=True).contiguous(memory_format=torch.channels_last))
    s = guarded(codes(gen, (2, 5, 9, 7), torch.int8, extreme=True))
    table = guarded(codes(gen, (256,), torch.int8, extreme=True))
    calls = [
        lambda backend: dq.int_add(a, b, k1=3, k2=-2, k3=100, shift=2, backend=backend),
        lambda backend: dq.int_mul(a, b, k1=5, k2=1, k3=-1, k4=7, shift=9, relu=True, backend=backend),
        lambda backend: dq.int_max_pool2d(a, 3, stride=2, padding=1, backend=backend),
        lambda backend: dq.int_max_pool2d(s, 3, stride=2, ceil_mode=True, backend=backend),
        lambda backend: dq.int_avg_pool2d(s, 2, stride=1, padding=1, backend=backend),
        lambda backend: dq.int_adaptive_avg_pool2d(a, (3, 5), backend=backend),
        lambda backend: dq.int_lut(s, table, backend=backend),
    ]
    for i, call in enumerate(calls):
        want = call("reference")
        with checked_launches() as checker:
            got = call("triton")
        assert not checker.violations and checker.accesses > 0, (i, checker.violations)
        assert torch.equal(got, want), i
    assert all(guards_intact(t) for t in (a, b, s, table))


# ----------------------------------------------------------------------------- transformer kernels

TRANSFORMER_CASES = [case for case in aot.launch_cases() if case.source == "transformer"]


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=[case.label.removeprefix("transformer: ")
                                                         for case in TRANSFORMER_CASES])
def test_transformer_kernels_stay_in_bounds_at_the_gpu_block(case, monkeypatch):
    """The odd and aligned shapes the AOT compile records (kernels/aot_cases.py TRANSFORMER_*),
    on random extreme codes in guard-banded buffers, with the GPU's 1,024-column row block
    (softmax rows of 2,000 and LayerNorm rows of 16,384 take several steps) and element block."""
    monkeypatch.setattr(common, "INTERPRETER_BLOCK", common.GPU_BLOCK)
    gen = torch.Generator().manual_seed(len(case.label))
    inputs: list = []

    def random_codes(code: str, shape: tuple) -> torch.Tensor:
        inputs.append(guarded(codes(gen, shape, {"u8": torch.uint8, "i8": torch.int8}[code], extreme=True)))
        return inputs[-1]

    with checked_launches() as checker:
        got = run_transformer_case(case, random_codes, "triton")
    assert not checker.violations and checker.accesses > 0, checker.violations
    assert checker.launches == [f"int_{case.op}_kernel"]
    assert all(guards_intact(t) for t in inputs)
    replay = iter(inputs)
    want = run_transformer_case(case, lambda code, shape: next(replay), "reference")
    assert torch.equal(got, want)


def test_checker_catches_an_embedding_id_past_the_table():
    """Positive control for the transformer kernels: an id equal to V (the op refuses it, the
    launcher does not look) reads one row past the table."""
    table = guarded(torch.arange(12, dtype=torch.int8).reshape(4, 3))
    ids = torch.tensor([0, 3, 4, 1], dtype=torch.uint8)
    with checked_launches() as checker, pytest.raises(Exception, match="OutOfBounds"):
        transformer.launch_int_embedding(ids, table)
    assert checker.violations and "table_ptr" in checker.violations[0], checker.violations


def test_checker_catches_a_bmm_row_past_its_operands():
    """Positive control: int_bmm_kernel launched with one row more than a and its shifts hold
    (group 0's extra row is group 1's first; group 1's lies past both tensors)."""
    gen = torch.Generator().manual_seed(6)
    a, b = guarded(codes(gen, (2, 5, 40), torch.int8, True)), codes(gen, (2, 40, 7), torch.uint8, True)
    a_shift, b_shift = torch.zeros((2, 5), dtype=torch.int32), torch.zeros((2, 7), dtype=torch.int32)
    out = torch.empty((2, 6, 7), dtype=torch.int32)
    with checked_launches() as checker, pytest.raises(Exception, match="OutOfBounds"):
        transformer.int_bmm_kernel[(2,)](
            a, b, out, a_shift, b_shift, 6, 7, 40, *a.stride(), *b.stride(), *out.stride(), 5, 7, 0, 0, 0, 0,
            ROUND=False, A_UNSIGNED=False, B_UNSIGNED=True, B_ON_N=True, REQUANT=False,
            BLOCK_M=transformer.BMM_BLOCK_M, BLOCK_N=transformer.BMM_BLOCK_N, BLOCK_K=transformer.BMM_BLOCK_K)
    assert checker.violations and "program (1, 0, 0)" in checker.violations[0], checker.violations
    assert "a_shift_ptr" in checker.violations[0]


# ----------------------------------------------------------------------------- int32 and grid limits


def _far(t: torch.Tensor, strides: tuple) -> torch.Tensor:
    """A copy of t with these (large) strides in a buffer that is virtual but for the touched pages."""
    last = sum((n - 1) * st for n, st in zip(t.shape, strides))
    far = torch.as_strided(torch.empty(last + 1, dtype=t.dtype), t.shape, strides)
    far.copy_(t)
    return far


# One operand far at a time: a wrapped int32 offset of one must not land inside the other.
@pytest.mark.parametrize("far", ["x", "w"])
def test_matmul_offsets_past_two_to_the_31_bytes_are_int64(far):
    """x rows 2^30 bytes apart (row 2 starts at 2^31), or w output channels 2^28 apart."""
    gen = torch.Generator().manual_seed(1)
    M, K, N = 3, 40, 20
    x = codes(gen, (M, K), torch.int8, extreme=True)
    w = codes(gen, (N, K), torch.int8, extreme=True)
    x_in = _far(x, (2**30, 1)) if far == "x" else x
    w_in = _far(w, (2**28, 1)) if far == "w" else w
    kw = torch.tensor([1, 5, 2], dtype=torch.int32)
    zeros = torch.zeros(N, dtype=torch.int32)
    out = torch.empty((M, N), dtype=torch.int32)
    with checked_launches() as checker:  # int8 codes at shift 0 are their own shifted form
        gemm.matmul_on_shifted(x_in, False, w_in, torch.zeros(M, dtype=torch.int32), kw, zeros, zeros, zeros,
                               torch.zeros(N), [0, 0, 0, 0], False, 0, False, 0, 0, out)
    assert not checker.violations
    assert torch.equal(out, dq.int_matmul(x, w, weight_shift=kw, backend="reference"))


@pytest.mark.parametrize("far", ["x", "w"])
def test_conv_offsets_past_two_to_the_31_bytes_are_int64(far):
    """Samples 2^30 bytes apart (sample 2 starts at 2^31; a stride of 2^31 or more would be an
    int64 argument), or output channels' filters 2^29 apart."""
    gen = torch.Generator().manual_seed(2)
    B, C, H, W, Cout = 3, 5, 4, 4, 6
    x = codes(gen, (B, C, H, W), torch.int8, extreme=True).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (Cout, C, 3, 3), torch.int8, extreme=True)
    x_in = _far(x, (2**30, 1, W * C, C)) if far == "x" else x
    w_in = _far(w, (2**29, 9, 3, 1)) if far == "w" else w
    kw = torch.tensor([4, 1, 6], dtype=torch.int32)
    zeros = torch.zeros(Cout, dtype=torch.int32)
    out = torch.empty((B, H, W, Cout), dtype=torch.int32)
    with checked_launches() as checker:
        gemm.conv2d_on_shifted(x_in, False, w_in, [1, 1, 1, 1, 1, 1, 1], torch.zeros(B, dtype=torch.int32), kw,
                               zeros, zeros, zeros, torch.zeros(Cout), [0, 0, 0, 0], False, 0, False, 0, 0, out)
    assert not checker.violations
    want = dq.int_conv2d(x, w, padding=1, weight_shift=kw, backend="reference")
    assert torch.equal(out.permute(0, 3, 1, 2), want)


@pytest.mark.parametrize("far", ["a", "b"])
def test_bmm_offsets_past_two_to_the_31_bytes_are_int64(far):
    """a's groups 2^30 bytes apart (group 2 starts at 2^31; an int32 group offset wraps and is
    caught), or b's rows 2^25 - 1 apart (row 69 lies 2.3e9 bytes in: the K step's base is int64,
    the offsets inside one step int32). The interpreter's loop index is a Python int, so only the
    compiled kernel could wrap an int32 step base: the b case checks the addressing, not that cast."""
    gen = torch.Generator().manual_seed(3)
    G, M, K, N = (3, 5, 40, 6) if far == "a" else (1, 5, 70, 6)
    a, b = codes(gen, (G, M, K), torch.uint8, extreme=True), codes(gen, (G, K, N), torch.int8, extreme=True)
    a_in = _far(a, (2**30, K, 1)) if far == "a" else a
    b_in = _far(b, (K * (2**25 - 1), 2**25 - 1, 1)) if far == "b" else b
    ka = torch.randint(0, 8, (G, M), generator=gen, dtype=torch.int32)
    kb = torch.randint(0, 8, (G, K), generator=gen, dtype=torch.int32)
    with checked_launches() as checker:
        got = transformer.launch_int_bmm(a_in, b_in, ka, kb, False, True, 0, 0, 0, 0, 0, torch.int32)
    assert not checker.violations and checker.launches == ["int_bmm_kernel"]
    assert torch.equal(got, dq.int_bmm(a, b, a_shift=ka, b_shift=kb, shift_rule="round", backend="reference"))
    meta = {"device": torch.device("meta")}  # one step more (2^25 bytes a row) is refused before any launch
    wide = torch.empty_strided((G, K, N), (0, 2**25, 1), dtype=torch.int8, **meta)
    with pytest.raises(ValueError, match="int_bmm kernel: b_step = 2147483648 exceeds"):
        transformer.launch_int_bmm(a.to(**meta), wide, ka.to(**meta), kb.to(**meta), False, True, 0, 0, 0, 0, 0,
                                   torch.int32)


def test_launchers_refuse_sizes_past_their_int32_indexing():
    """At the boundary: the largest size passes, one more is refused with the size named;
    meta tensors show the launchers check before they allocate or launch anything."""
    common.check_int32_sizes("k", rows=common.MAX_ROWS, image=common.INT32_MAX, programs=common.INT32_MAX)
    for name, limit in (("rows", common.MAX_ROWS), ("image", common.INT32_MAX), ("programs", common.INT32_MAX)):
        with pytest.raises(ValueError, match=f"{name} = {limit + 1} exceeds"):
            common.check_int32_sizes("k", **{name: limit + 1})
    meta = torch.device("meta")
    shifts = torch.zeros(1, dtype=torch.int32, device=meta)
    epilogue = [torch.zeros(4, dtype=torch.int32, device=meta)] * 3 + [torch.zeros(4, device=meta)]
    x = torch.empty((common.MAX_ROWS + 1, 8), dtype=torch.uint8, device=meta)
    w = torch.empty((4, 8), dtype=torch.int8, device=meta)
    with pytest.raises(ValueError, match="int_matmul kernel: rows"):
        gemm.launch_int_matmul(x, w, torch.zeros(x.shape[0], dtype=torch.int32, device=meta), shifts, *epilogue,
                               False, 0, False, 0, 0, torch.int32)
    image = torch.empty((1, 3, 30000, 30000), dtype=torch.uint8, device=meta)  # 2.7e9 codes in one image
    w = torch.empty((4, 3, 1, 1), dtype=torch.int8, device=meta)
    with pytest.raises(ValueError, match="int_conv2d kernel: image = 2700000000 exceeds"):
        gemm.launch_int_conv2d(image, w, [1, 1, 0, 0, 1, 1, 1], shifts, shifts, *epilogue, False, 0, False, 0, 0,
                               torch.int32)


def test_conv_grid_is_one_axis_whatever_the_groups():
    """GPU grids cap their second and third axes at 65,535: the conv grid has one axis, so a
    depthwise layer with 100,000 channels launches; past 2^31 - 1 programs it is refused."""
    assert gemm._checked_grid("int_conv2d", 3, 2, 100_000) == (600_000,)
    assert gemm._checked_grid("int_conv2d", 2**16, 2**15 - 1, 1) == (2**31 - 2**16,)
    with pytest.raises(ValueError, match="programs = 2147483648 exceeds"):
        gemm._checked_grid("int_conv2d", 2**16, 2**15, 1)


def test_grouped_conv_over_many_row_channel_and_group_programs():
    """groups x output-channel tiles x row tiles on the one grid axis, per-sample buckets too."""
    gen = torch.Generator().manual_seed(4)
    x = codes(gen, (3, 8, 7, 5), torch.uint8, extreme=True).contiguous(memory_format=torch.channels_last)
    w = codes(gen, (4 * 40, 2, 3, 3), torch.int8, extreme=True)  # 4 groups of 40 outputs: 2 tiles of 32
    ka, kw = torch.tensor([3, 0, 5]), torch.tensor([6, 1, 1])
    _check(x, w, ka, kw, "round", _epilogue(160, "requant_relu", True, gen), False,
           {"stride": 1, "padding": 1, "dilation": 1, "groups": 4})
