"""Width policies (`dqt_triton.policy`): the hull of the uniform widths, the per-layer allocation
search, the margin cascade's threshold search checked against brute force, and the escalation
mode's integer runtime (eval == frozen, bit for bit, on both CPU backends)."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch

import dqt_triton as dq
from dqt_triton import models, policy
from dqt_triton.policy import Calibration, Cascade
from dqt_triton.steps import Step


def governed_mlp() -> dq.DQTModel:
    return copy.deepcopy(_fitted_mlp())


@functools.lru_cache(maxsize=1)
def _fitted_mlp() -> dq.DQTModel:
    """An MLP with two governed hidden layers (first and last at 8 bits), fitted for a few steps
    to a random linear teacher so that its widths disagree on some inputs."""
    torch.manual_seed(0)
    model = dq.DQTModel.from_float(models.mlp(16, 12, 10, depth=3), (16,), candidate_bits=(2, 3, 4, 8),
                                   dynamic=True)
    x = inputs(256, seed=9)
    teacher = torch.randn(16, 10, generator=torch.Generator().manual_seed(2))
    y = ((x.float() - 128) @ teacher).argmax(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(30):
        model.set_bits((2, 3, 4, 8)[step % 4])
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def inputs(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 16), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def test_hull_mixes_neighbouring_points_and_ignores_points_below_it():
    points = [(1.0, 0.5), (2.0, 0.9), (3.0, 0.8), (4.0, 0.95)]
    assert policy.hull_accuracy(points, 0.5) is None
    assert policy.hull_accuracy(points, 1.5) == pytest.approx(0.7)
    assert policy.hull_accuracy(points, 3.0) == pytest.approx(0.925)  # (2, .9)-(4, .95), not the point (3, .8)
    assert policy.hull_accuracy(points, 9.0) == 0.95


def test_allocations_cost_what_their_layers_cost():
    model = governed_mlp()
    macs = model.arch.macs
    names = model.layer_names
    want = macs[names[0]] * 64 + macs[names[1]] * 9 + macs[names[2]] * 4 + macs[names[3]] * 64
    assert policy.allocation_bitops(model, (3, 2)) == want
    assert policy.allocation_bitops(model, (4, 4)) == model.uniform_bitops(4)


def test_cascade_search_matches_brute_force_over_pairs_and_thresholds():
    """Designed logits per allocation: the search's accuracy equals the best any (cheap, dear,
    threshold) reaches within the budget, and its threshold reproduces that accuracy and cost."""
    model = governed_mlp()
    n = 60
    gen = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (n,), generator=gen)
    allocs = [(2, 2), (3, 2), (4, 4), (8, 8)]
    table = {a: torch.round(torch.randn(n, 10, generator=gen) * 4) / 4 for a in allocs}  # ties on purpose
    for i, a in enumerate(allocs):  # dearer allocations get more inputs right
        right = torch.rand(n, generator=gen) < 0.3 + 0.2 * i
        table[a][right, y[right]] = 10.0
    x = torch.arange(n)
    cal = Calibration(model, x, y, batch_size=17, forward_at=lambda a, xb: table[tuple(a)][xb])
    budget = 0.5 * (cal.cost((3, 2)) + cal.cost((8, 8)))
    found, acc = policy.best_cascade(cal, allocs, budget)
    best = max((cal.accuracy(a) for a in allocs if cal.cost(a) <= budget), default=0.0)
    for lo, hi in itertools.permutations(allocs, 2):
        if cal.cost(hi) <= cal.cost(lo):
            continue
        m = policy.top1_margin(table[lo])
        for t in [*m.unique().tolist(), float("inf")]:
            esc = m < t
            if cal.cost(lo) + float(esc.float().mean()) * cal.escalation_cost(lo, hi) <= budget:
                pred = torch.where(esc[:, None], table[hi], table[lo]).argmax(1)
                best = max(best, float((pred == y).float().mean()))
    assert acc == pytest.approx(best)
    logits, spent, _ = policy.run_cascade(lambda a, xb, given: (table[tuple(a)][xb], [xb]), found, x, [],
                                          lambda a: {}, cal.cost, cal.escalation_cost)
    assert float((logits.argmax(1) == y).float().mean()) == pytest.approx(acc)
    assert float(spent.mean()) <= budget * (1 + 1e-12)


def test_escalation_is_the_uniform_cascade_unless_per_layer_stages_win_clearly():
    model = governed_mlp()
    x = inputs(200)
    y = model.set_bits(8)(x).argmax(1)  # the widest width's answers as labels: lower widths err
    table = policy.calibrate_policies(model, x, y, (2.5, 3.0, 4.0))
    cal = Calibration(model, x, y)
    for i, b in enumerate(table.budgets):
        a, c, e = table.allocation[i], table.cascade[i], table.escalation[i]
        assert a is not None and c is not None and e is not None
        assert all(len(set(stage)) == 1 for stage in c.stages)  # uniform widths
        assert e == c or policy.better_by(cal, e, c, policy.PER_LAYER_MARGIN_SE)
        stats = policy.evaluate_cascade(model, e, x, y)
        assert stats["accuracy"] >= float(policy.cascade_correct(cal, c).float().mean())
        assert stats["bitops"] <= model.uniform_bitops(b) * (1 + 1e-9)
    assert table.controller_codes[0] is not None


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("dear", [(8, 3), (2, 8)])
def test_frozen_escalation_equals_eval_and_each_stage_bit_for_bit(backend, dear):
    """Escalated inputs get exactly the dear allocation's logits although the dear pass resumes
    from the cheap pass's codes (the first layer always; with (2, 8) the first governed one too),
    and pay only the layers it recomputes."""
    model = governed_mlp()
    x = inputs(40, seed=5)
    cheap_alloc = (2, 2)
    cascade = Cascade((cheap_alloc, dear), (float(policy.top1_margin(policy.eval_at(model, cheap_alloc, x)).median()),))
    with dq.use_backend(backend):
        frozen = policy.FrozenCascade.from_model(model, cascade)
        logits = frozen(x)
        cheap, full = policy.eval_at(model, cheap_alloc, x), policy.eval_at(model, dear, x)
        escalated = frozen.last_stage == 1
        assert 0 < int(escalated.sum()) < len(x)
        assert torch.equal(escalated, policy.top1_margin(cheap) < cascade.thresholds[0])
        assert torch.equal(logits[~escalated], cheap[~escalated])
        assert torch.equal(logits[escalated], full[escalated])
        stats = policy.evaluate_cascade(model, cascade, x, cheap.argmax(1))
    macs = [model.arch.macs[n] for n in model.layer_names]
    first, second, third, last = macs
    recomputed = {(8, 3): second * 64 + third * 9 + last * 64, (2, 8): third * 64 + last * 64}[dear]
    assert policy.escalation_bitops(model, cheap_alloc, dear) == recomputed
    base = policy.allocation_bitops(model, cheap_alloc)
    costs = torch.where(escalated, base + recomputed, base).double()
    assert torch.equal(frozen.last_bitops, costs)
    assert stats["bitops"] == pytest.approx(float(costs.mean()))
    share = float(escalated.float().mean())
    assert stats["stage_shares"] == pytest.approx([1 - share, share])


def test_policies_survive_save_and_load(tmp_path):
    model = governed_mlp()
    x = inputs(64)
    table = policy.calibrate_policies(model, x, model.set_bits(8)(x).argmax(1), (3.0,))
    model.policies = table.to_dict()
    model.save(tmp_path / "m.pt")
    loaded = dq.DQTModel.load(tmp_path / "m.pt")
    assert policy.PolicyTable.from_dict(loaded.policies) == table
    runner = policy.escalation_at(loaded, 3.0)
    direct = policy.FrozenCascade.from_model(model, table.at(3.0))
    assert runner.cascade == table.at(3.0) and torch.equal(runner(x), direct(x))
    with pytest.raises(ValueError, match="no escalation policy calibrated for budget 2.0"):
        policy.escalation_at(loaded, 2.0)
    with pytest.raises(ValueError, match="no calibrated width policies"):
        policy.escalation_at(governed_mlp(), 3.0)


def test_bad_cascades_are_refused():
    with pytest.raises(ValueError, match="thresholds"):
        Cascade(((2, 2), (4, 4)))
    with pytest.raises(ValueError, match="one width per governed layer"):
        Cascade(((2, 2), (4,)), (1.0,))
    with pytest.raises(ValueError, match="at least one stage"):
        Cascade(())


def test_greedy_path_lowers_one_layer_one_width_at_a_time():
    model = governed_mlp()
    x = inputs(64)
    cal = Calibration(model, x, model.set_bits(8)(x).argmax(1))
    assert len(policy.candidate_allocations(model, cal)) == 16  # 4 widths, 2 layers: every allocation
    widths = (2, 3, 4, 8)
    path = policy.greedy_path(model, cal)
    assert path[0] == (8, 8) and path[-1] == (2, 2) and len(path) == 1 + 2 * (len(widths) - 1)
    for a, b in zip(path, path[1:]):
        steps = [widths.index(p) - widths.index(q) for p, q in zip(a, b)]
        assert sorted(steps) == [0, 1], (a, b)
    allocs = policy.candidate_allocations(model, cal, limit=3)
    assert set(allocs) == set(path) | {(b, b) for b in widths}


def test_resumption_takes_only_values_computed_identically():
    """A residual block: a layer at another width taints everything downstream of it, the add
    included; steps upstream of the first change are taken from the earlier pass."""
    steps = [Step("layer", [0], "stem"), Step("layer", [1], "conv"), Step("add", [1, 2], "add"),
             Step("layer", [3], "head")]
    cheap = {"stem": (8, 8), "conv": (2, 2), "head": (8, 8)}
    assert policy.reusable_values(steps, cheap, {**cheap, "conv": (4, 4)}) == {0, 1}
    assert policy.reusable_values(steps, cheap, {**cheap, "head": (4, 4)}) == {0, 1, 2, 3}
    assert policy.reusable_values(steps, cheap, {**cheap, "stem": (4, 4)}) == {0}
    macs = {"stem": 10, "conv": 100, "head": 1}
    assert policy.suffix_bitops(steps, macs, {"stem": 8, "conv": 2, "head": 8},
                                {"stem": 8, "conv": 4, "head": 8}) == 100 * 16 + 1 * 64
