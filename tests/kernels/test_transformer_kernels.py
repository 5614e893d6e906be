"""Triton int_bmm / int_softmax / int_layernorm / int_embedding (kernels/transformer.py) against the
Numba reference (reference/transformer.py), with exact equality.

Under TRITON_INTERPRET=1 (CI) the kernels run on CPU tensors with the interpreter's row block
(256 columns: rows of 300 or more take several steps); on a machine with a GPU the same tests
run the compiled kernels on CUDA tensors. The int_bmm tile (32 x 64 x 64) is the GPU's
everywhere, so K = 70 or 130 takes two or three K steps and M = 37, N = 67 leave ragged tiles.
"""

from __future__ import annotations

import itertools
import math
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dqt_triton as dq
from dqt_triton import kernels, numerics
from tests.kernels.device import DEVICE, on_device
from tests.strategies import CODE_DTYPES, codes

pytestmark = pytest.mark.interpreter

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RULES = ("floor", "round")


def _seed(*parts) -> int:
    """A seed fixed by the test's parameters (str hashes vary between runs)."""
    return zlib.crc32(repr(parts).encode())


def _both(op, *args, **kwargs):
    """(reference result, Triton result moved back to the CPU) of one public op."""
    want = op(*args, backend="reference", **kwargs)
    moved = {k: on_device(v) for k, v in kwargs.items()}
    got = op(*on_device(*args), backend="triton", **moved)
    assert got.device.type == DEVICE.type
    return want, got.cpu()


def _assert_same(want: torch.Tensor, got: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"{int((got != want).sum())} of {want.numel()} differ"


# ----------------------------------------------------------------------------- int_bmm


def _bmm_inputs(gen, G, M, K, N, a_dtype, b_dtype, on_n, extreme=False):
    a, b = codes(gen, (G, M, K), a_dtype, extreme), codes(gen, (G, K, N), b_dtype, extreme)
    ka = torch.randint(0, 8, (G, M), generator=gen)
    kb = torch.randint(0, 8, (G, N if on_n else K), generator=gen)
    return a, b, ka, kb


def _requant(gen, out_dtype) -> dict:
    return dict(multiplier=int(torch.randint(-(2**31) + 1, 2**31, (), generator=gen)),
                shift=int(torch.randint(20, 45, (), generator=gen)), out_dtype=out_dtype)


# CI: each rule and token axis with two of the four dtype pairs (rotated: every pair twice);
# -m slow runs all four.
@pytest.mark.parametrize(("on_n", "rule", "a_dtype", "b_dtype"), [
    pytest.param(on_n, rule, a, b, marks=[] if (p - r - on_n) % 2 == 0 else [pytest.mark.slow],
                 id=f"b_tokens_on_{'N' if on_n else 'K'}-{rule}-{str(a)[6:]}-{str(b)[6:]}")
    for on_n in (False, True) for r, rule in enumerate(RULES)
    for p, (a, b) in enumerate(itertools.product(CODE_DTYPES, CODE_DTYPES))])
def test_bmm_matches_reference(on_n, rule, a_dtype, b_dtype):
    """Per-row shifts of a and b, ragged tiles, two and three K steps, three groups; the raw sum
    and both requantized outputs."""
    gen = torch.Generator().manual_seed(_seed(a_dtype, b_dtype, rule, on_n))
    for (G, M, K, N), extreme in (((3, 37, 70, 67), False), ((2, 33, 130, 65), True)):
        a, b, ka, kb = _bmm_inputs(gen, G, M, K, N, a_dtype, b_dtype, on_n, extreme)
        axis = -1 if on_n else -2
        for kwargs in ({}, _requant(gen, torch.int8), _requant(gen, torch.uint8)):
            want, got = _both(dq.int_bmm, a, b, a_shift=ka, b_shift=kb, b_token_axis=axis, shift_rule=rule, **kwargs)
            _assert_same(want, got)


@SETTINGS
@given(seed=st.integers(0, 2**31), G=st.integers(1, 3), M=st.integers(1, 40), K=st.integers(1, 140),
       N=st.integers(1, 70), a_dtype=st.sampled_from(CODE_DTYPES), b_dtype=st.sampled_from(CODE_DTYPES),
       rule=st.sampled_from(RULES), on_n=st.booleans(), requant=st.booleans(), extreme=st.booleans())
def test_bmm_matches_reference_on_random_shapes(seed, G, M, K, N, a_dtype, b_dtype, rule, on_n, requant, extreme):
    gen = torch.Generator().manual_seed(seed)
    a, b, ka, kb = _bmm_inputs(gen, G, M, K, N, a_dtype, b_dtype, on_n, extreme)
    kwargs = _requant(gen, b_dtype) if requant else {}
    _assert_same(*_both(dq.int_bmm, a, b, a_shift=ka, b_shift=kb, b_token_axis=-1 if on_n else -2,
                        shift_rule=rule, **kwargs))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_bmm_every_code_at_every_shift_on_either_side(dtype, rule):
    """Each code at each shift (2,048 tokens, K = 1) against the other operand's codes at the
    range ends and around the powers of two, once as a (rows) and once as b (columns, b_tokens
    on N): the uint8 offset and the rounding clamp at the top, code by code."""
    lo = 0 if dtype == torch.uint8 else -128
    every = (torch.arange(256) + lo).repeat_interleave(8)
    shifts = torch.arange(8).repeat(256)
    probes = torch.tensor([-128, -127, -65, -64, -63, -33, -32, -1, 0, 1, 2, 3, 7, 8, 9, 15, 16, 31, 32, 63, 64,
                           126, 127], dtype=torch.int8)
    for other in (probes, (probes.long() + 128).to(torch.uint8)):
        a, b = every.to(dtype).reshape(1, -1, 1), other.reshape(1, 1, -1)
        want, got = _both(dq.int_bmm, a, b, a_shift=shifts.reshape(1, -1), b_shift=3, shift_rule=rule)
        _assert_same(want, got)
        a, b = other.reshape(1, -1, 1), every.to(dtype).reshape(1, 1, -1)
        want, got = _both(dq.int_bmm, a, b, a_shift=5, b_shift=shifts.reshape(1, -1), b_token_axis=-1,
                          shift_rule=rule)
        _assert_same(want, got)


ENDS = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def _largest_k(a_dtype, b_dtype) -> int:
    """The largest K the op accepts: K max|a| max|b| <= 2^31 - 1 (128 for int8, 255 for uint8)."""
    return (2**31 - 1) // ((255 if a_dtype == torch.uint8 else 128) * (255 if b_dtype == torch.uint8 else 128))


@pytest.mark.parametrize(("a_dtype", "b_dtype"), list(itertools.product(CODE_DTYPES, CODE_DTYPES)),
                         ids=lambda d: str(d).removeprefix("torch."))
def test_bmm_extreme_constant_codes(a_dtype, b_dtype):
    """All lowest or all highest codes at shift 0 over three K steps: every pair of range ends,
    raw and requantized to saturation."""
    for x, y in itertools.product(ENDS[a_dtype], ENDS[b_dtype]):
        a, b = torch.full((2, 3, 150), x, dtype=a_dtype), torch.full((2, 150, 2), y, dtype=b_dtype)
        want, got = _both(dq.int_bmm, a, b)
        _assert_same(want, got)
        assert int(got[0, 0, 0]) == 150 * x * y
        _assert_same(*_both(dq.int_bmm, a, b, multiplier=2**31 - 1, shift=20, out_dtype=torch.int8))


def test_bmm_sum_at_the_int32_accumulator_bound():
    """uint8 x uint8 255s over the largest K (33,025, 517 K steps): v = 2^31 - 33,023, built from
    the int8 MMA and the offset's row, column and constant terms."""
    K = _largest_k(torch.uint8, torch.uint8)
    a, b = torch.full((1, 1, K), 255, dtype=torch.uint8), torch.full((1, K, 1), 255, dtype=torch.uint8)
    want, got = _both(dq.int_bmm, a, b)
    _assert_same(want, got)
    assert int(got) == K * 255 * 255 == 2**31 - 33_023


@pytest.mark.slow
@pytest.mark.parametrize(("a_dtype", "b_dtype"), list(itertools.product(CODE_DTYPES, CODE_DTYPES)),
                         ids=lambda d: str(d).removeprefix("torch."))
def test_bmm_every_pair_of_range_ends_at_the_largest_k(a_dtype, b_dtype):
    """Each pair of range ends over the largest K of the dtypes (up to 2,048 K steps), raw and
    requantized: about three minutes under the interpreter."""
    K = _largest_k(a_dtype, b_dtype)
    for x, y in itertools.product(ENDS[a_dtype], ENDS[b_dtype]):
        a, b = torch.full((1, 2, K), x, dtype=a_dtype), torch.full((1, K, 1), y, dtype=b_dtype)
        want, got = _both(dq.int_bmm, a, b)
        _assert_same(want, got)
        assert int(got[0, 0, 0]) == K * x * y
        _assert_same(*_both(dq.int_bmm, a, b, multiplier=2**31 - 1, shift=20, out_dtype=torch.int8))


def test_bmm_takes_attention_shapes_and_per_sample_token_shifts():
    """Q K^T ([B, H, T, d] codes, K^T as a transposed view) with one shift per token of each
    sample shared by its heads, then P V."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (codes(gen, (2, 3, 9, 16), torch.int8, False) for _ in range(3))
    per_token = torch.randint(0, 8, (2, 1, 9), generator=gen)
    want, got = _both(dq.int_bmm, q, k.transpose(-2, -1), a_shift=per_token, b_shift=per_token, b_token_axis=-1,
                      multiplier=1 << 20, shift=30, out_dtype=torch.int8)
    _assert_same(want, got)
    p = codes(gen, (2, 3, 9, 9), torch.uint8, False)
    want, got = _both(dq.int_bmm, p, v, a_shift=1, b_shift=per_token, shift_rule="round")
    _assert_same(want, got)


@pytest.mark.parametrize(("G", "M", "K", "N"), [(0, 4, 5, 6), (2, 0, 5, 6), (2, 4, 5, 0), (2, 4, 0, 6)])
def test_bmm_empty_operands(G, M, K, N):
    """Empty outputs launch nothing; K = 0 gives the empty sum (0, requantized to its code)."""
    a, b = torch.zeros((G, M, K), dtype=torch.uint8), torch.ones((G, K, N), dtype=torch.int8)
    for kwargs in ({}, {"multiplier": 5, "shift": 1, "out_dtype": torch.uint8}):
        want, got = _both(dq.int_bmm, a, b, a_shift=2, b_shift=1, **kwargs)
        _assert_same(want, got)


# ----------------------------------------------------------------------------- int_softmax


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_softmax_matches_reference(dtype, causal):
    """Rows shorter and longer than one column block (300 and 600 columns: two and three steps),
    M < N for the causal diagonal, flat rows (every column ties with the top), tables of a
    gentle and a steep step (entries 0 past a few codes)."""
    gen = torch.Generator().manual_seed(17 + causal)
    for step in (0.01, 0.5):
        table = numerics.softmax_table(step)
        for shape in ((3, 5, 300), (1, 7, 600), (2, 17, 19)):
            x = codes(gen, shape, dtype, False)
            x[:, 1] = x[:, 1, :1]
            _assert_same(*_both(dq.int_softmax, x, table, causal=causal))


@SETTINGS
@given(seed=st.integers(0, 2**31), G=st.integers(1, 3), M=st.integers(1, 8), extra=st.integers(0, 300),
       dtype=st.sampled_from(CODE_DTYPES), causal=st.booleans(), step=st.floats(1e-3, 2.0), extreme=st.booleans())
def test_softmax_matches_reference_on_random_shapes(seed, G, M, extra, dtype, causal, step, extreme):
    gen = torch.Generator().manual_seed(seed)
    x = codes(gen, (G, M, M + extra), dtype, extreme)
    _assert_same(*_both(dq.int_softmax, x, numerics.softmax_table(step), causal=causal))


@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_softmax_extreme_rows(dtype):
    """Constant rows at either end of the range, rows of both ends (top - x = 255, the table's
    last entry), and a 1-D input (one row)."""
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    x = torch.stack([torch.full((40,), lo), torch.full((40,), hi), torch.tensor([lo, hi] * 20),
                     torch.tensor([hi] + [lo] * 39)]).to(dtype).reshape(2, 2, 40)
    table = torch.arange(256, 0, -1, dtype=torch.int32) * 128  # 2^15 at 0, 128 at 255: none is 0
    for causal in (False, True):
        _assert_same(*_both(dq.int_softmax, x, table, causal=causal))
    _assert_same(*_both(dq.int_softmax, x[0, 1], numerics.softmax_table(0.1)))


def test_softmax_longest_row_keeps_the_int32_sum():
    """65,535 equal codes: s = 65,535 * 2^15 = 2^31 - 2^15, the most the int32 row sum holds;
    every column gets floor((510 * 2^15 + s) / (2 s)) = 0, the causal last row the same."""
    x = torch.full((1, 2, 65_535), 7, dtype=torch.int8)
    table = numerics.softmax_table(0.1)
    for causal in (False, True):
        want, got = _both(dq.int_softmax, x, table, causal=causal)
        _assert_same(want, got)
    x[0, 1, 12_345] = 8  # one column above the rest takes (almost) everything else's share
    want, got = _both(dq.int_softmax, x, table)
    _assert_same(want, got)


def test_softmax_empty_inputs():
    """No samples through the op; no rows or no columns straight into the kernel op (the public
    op cannot shape those: `x.reshape(-1, M, N)` of an empty tensor is ambiguous)."""
    table = numerics.softmax_table(0.1)
    for causal in (False, True):
        _assert_same(*_both(dq.int_softmax, torch.zeros((0, 4, 5), dtype=torch.int8), table, causal=causal))
    for shape, causal in (((2, 3, 0), False), ((2, 0, 4), True), ((0, 2, 2), True)):
        out = kernels.int_softmax(on_device(torch.zeros(shape, dtype=torch.uint8)), on_device(table), causal)
        assert out.shape == shape and out.dtype == torch.uint8


# ----------------------------------------------------------------------------- int_layernorm


def _layernorm(x, mult, offset, shift, eps_units, out_dtype):
    return _both(dq.int_layernorm, x, mult, offset, shift=shift, eps_units=eps_units, out_dtype=out_dtype)


def _random_constants(gen, C):
    mult = torch.randint(-(2**30), 2**30 + 1, (C,), generator=gen, dtype=torch.int32)
    offset = torch.randint(-(2**47), 2**47 + 1, (C,), generator=gen, dtype=torch.int64)
    return mult, offset


@pytest.mark.parametrize("out_dtype", CODE_DTYPES)
@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_layernorm_matches_reference(dtype, out_dtype):
    """C not a power of two, within one block and across two (300) and 64 blocks (16,384, the
    widest row); a constant row (zero variance) in each; constants from `layernorm_constants`
    (eps 0 and torch's 1e-5) and raw extremes (|mult| 2^30, |offset| 2^47, eps_units up to 2^61)."""
    gen = torch.Generator().manual_seed(_seed(dtype, out_dtype))
    for R, C in ((5, 7), (4, 300), (2, 16_384)):
        x = codes(gen, (R, C), dtype, False)
        x[1] = x[1, 0]
        for eps in (0.0, 1e-5):
            c = numerics.layernorm_constants(torch.randn(C, generator=gen) * 2, torch.randn(C, generator=gen), C,
                                             0.05, 0.03, eps)
            _assert_same(*_layernorm(x, c.mult, c.offset, c.shift, c.eps_units, out_dtype))
        mult, offset = _random_constants(gen, C)
        for shift, eps_units in ((0, 0), (38, 12_345), (50, 2**61)):
            _assert_same(*_layernorm(x, mult, offset, shift, eps_units, out_dtype))


@SETTINGS
@given(seed=st.integers(0, 2**31), R=st.integers(1, 4), C=st.integers(1, 600), dtype=st.sampled_from(CODE_DTYPES),
       out_dtype=st.sampled_from(CODE_DTYPES), constant_row=st.booleans(), extreme=st.booleans(),
       shift=st.integers(0, 50), eps_units=st.sampled_from((0, 1, 65_536, 2**40, 2**61)))
def test_layernorm_matches_reference_on_random_shapes(seed, R, C, dtype, out_dtype, constant_row, extreme, shift,
                                                      eps_units):
    gen = torch.Generator().manual_seed(seed)
    x = codes(gen, (R, C), dtype, extreme)
    if constant_row:
        x[0] = x[0, 0]
    mult, offset = _random_constants(gen, C)
    mult >>= int(torch.randint(0, 31, (), generator=gen))  # small multipliers too: codes off the clamp
    _assert_same(*_layernorm(x, mult, offset, shift, eps_units, out_dtype))


@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_layernorm_extreme_and_constant_rows(dtype):
    """Rows of both range ends (the largest variance), all-lowest and all-highest rows (zero
    variance: with eps_units 0, r = 0 and n = 0, the output is the offset alone)."""
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    C = 300
    x = torch.stack([torch.tensor([lo, hi] * (C // 2)), torch.full((C,), lo), torch.full((C,), hi),
                     torch.tensor([hi] + [lo] * (C - 1))]).to(dtype)
    gen = torch.Generator().manual_seed(23)
    mult, offset = _random_constants(gen, C)
    mult >>= 18
    offset >>= 30
    for eps_units in (0, 2**61):
        want, got = _layernorm(x, mult, offset, 3, eps_units, torch.int8)
        _assert_same(want, got)
    assert set(torch.unique(got[0]).tolist()) != {0}


def test_layernorm_integer_square_root_at_its_boundaries():
    """Rows [a, b] give d = +-|a - b| and Q = r^2 + eps_units with r = 256 |a - b|: eps_units 2r
    makes Q = (r + 1)^2 - 1 (isqrt stays r), 2r + 1 makes it (r + 1)^2 (isqrt r + 1). With mult
    4096 and offsets -+2^24 the first row's codes are n -+ 4096 exactly, so they show which root
    was taken and the floor of the negative d's quotient (at |a - b| = 1 and root 257:
    -4079.56 -> -4080, code 16; truncation would give 17)."""
    mult = torch.full((2,), 4096, dtype=torch.int32)
    offset = torch.tensor([-(2**24), 2**24], dtype=torch.int64)
    for diff in (1, 5, 17):
        x = torch.tensor([[10 + diff, 10], [10, 10 + diff]], dtype=torch.int8)
        r = 256 * diff
        rows = []
        for eps_units in (0, 2 * r, 2 * r + 1):
            want, got = _layernorm(x, mult, offset, 0, eps_units, torch.int8)
            _assert_same(want, got)
            root = math.isqrt(r * r + eps_units)
            n = [(2 * d * 2**20 + root) // (2 * root) for d in (diff, -diff)]  # Python's // floors
            assert got[0].tolist() == [n[0] - 4096, n[1] + 4096], (diff, eps_units)
            rows.append(got[0].tolist())
        assert rows[0] == rows[1] == [0, 0] != rows[2], (diff, rows)
        if diff == 1:
            assert rows[2] == [-16, 16]


def test_layernorm_empty_rows():
    c = numerics.layernorm_constants(None, None, 5, 0.1, 0.1, 1e-5)
    x = torch.zeros((0, 5), dtype=torch.uint8)
    _assert_same(*_layernorm(x, c.mult, c.offset, c.shift, c.eps_units, torch.uint8))
    _assert_same(*_layernorm(torch.zeros((2, 0, 5), dtype=torch.int8), c.mult, c.offset, c.shift, c.eps_units,
                             torch.int8))


# ----------------------------------------------------------------------------- int_embedding


@pytest.mark.parametrize("dtype", CODE_DTYPES)
def test_embedding_matches_reference(dtype):
    """Ids of either dtype (int8 ids up to 127), odd widths, more elements than one block, a 2-D
    batch of ids, the first and last rows of the table, and empty inputs."""
    gen = torch.Generator().manual_seed(29)
    V = 128 if dtype == torch.int8 else 256
    for L, D in ((1, 1), (37, 13), (300, 3)):
        table = codes(gen, (V, D), torch.int8, True)
        ids = torch.randint(0, V, (L,), generator=gen)
        ids[0], ids[-1] = 0, V - 1
        want, got = _both(dq.int_embedding, ids.to(dtype), table)
        _assert_same(want, got)
        assert torch.equal(got, table[ids])
    table = codes(gen, (V, 5), torch.int8, False)
    _assert_same(*_both(dq.int_embedding, torch.randint(0, V, (3, 7), generator=gen).to(dtype), table))
    _assert_same(*_both(dq.int_embedding, torch.zeros((0,), dtype=dtype), table))
    _assert_same(*_both(dq.int_embedding, torch.zeros((4,), dtype=dtype), torch.zeros((V, 0), dtype=torch.int8)))


# ----------------------------------------------------------------------------- torch.library ops


def test_transformer_ops_pass_opcheck():
    """Schema and fake (Meta) implementations of the four kernel ops."""
    gen = torch.Generator().manual_seed(31)
    a, b = codes(gen, (2, 5, 40), torch.uint8, False), codes(gen, (2, 40, 7), torch.int8, False)
    ka, kb = torch.randint(0, 8, (2, 5), dtype=torch.int32), torch.randint(0, 8, (2, 7), dtype=torch.int32)
    x = codes(gen, (2, 3, 9), torch.int8, False)
    c = numerics.layernorm_constants(None, None, 9, 0.1, 0.1, 1e-5)
    cases = [
        (torch.ops.dqt_triton.int_bmm.default, (a, b, ka, kb, True, False, 0, 0, 0, 0, 0, torch.int32)),
        (torch.ops.dqt_triton.int_bmm.default, (a, b, ka, kb, True, True, 1, 12345, 20, -128, 127, torch.int8)),
        (torch.ops.dqt_triton.int_softmax.default, (x, numerics.softmax_table(0.1), True)),
        (torch.ops.dqt_triton.int_layernorm.default, (x.reshape(6, 9), c.mult, c.offset, c.shift, c.eps_units, 0,
                                                      255, torch.uint8)),
        (torch.ops.dqt_triton.int_embedding.default, (torch.randint(0, 130, (11,), generator=gen).to(torch.uint8),
                                                      codes(gen, (130, 4), torch.int8, False))),
    ]
    for op, args in cases:
        args = tuple(on_device(t) if isinstance(t, torch.Tensor) else t for t in args)
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_launchers_refuse_mismatched_operands():
    x = torch.zeros((2, 3, 4), dtype=torch.int8)
    shifts = torch.zeros((2, 3), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"b_shift must be contiguous int32 \[2, 5\]"):
        kernels.int_bmm(x, torch.zeros((2, 4, 5), dtype=torch.int8), shifts, shifts, True, False, 0, 0, 0, 0, 0,
                        torch.int32)
    with pytest.raises(ValueError, match="mode 1 cannot write torch.int32"):
        kernels.int_bmm(x, torch.zeros((2, 4, 3), dtype=torch.int8), shifts, shifts, True, False, 1, 1, 0, 0, 0,
                        torch.int32)
    with pytest.raises(ValueError, match="table must be contiguous int32"):
        kernels.int_softmax(x, torch.zeros(255, dtype=torch.int32), False)
    with pytest.raises(ValueError, match=r"offset must be contiguous torch.int64 \[4\]"):
        kernels.int_layernorm(x[0], torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32), 0, 0,
                              -128, 127, torch.int8)
    with pytest.raises(ValueError, match="table must be contiguous int8"):
        kernels.int_embedding(x[0, 0], torch.zeros((4, 2), dtype=torch.uint8))
