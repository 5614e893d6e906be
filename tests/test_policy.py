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


def designed_calibration(n: int = 60, seed: int = 3, allocs=((2, 2), (3, 2), (4, 4), (8, 8)), lift: float = 0.2):
    """A Calibration over designed logits: dearer allocations get more inputs right (by `lift`
    each), margins tie on purpose."""
    model = governed_mlp()
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    table = {a: torch.round(torch.randn(n, 10, generator=gen) * 4) / 4 for a in allocs}
    for i, a in enumerate(allocs):
        right = torch.rand(n, generator=gen) < 0.3 + lift * i
        table[a][right, y[right]] = 10.0
    return Calibration(model, torch.arange(n), y, batch_size=17, forward_at=lambda a, xb: table[tuple(a)][xb]), table


def test_three_stage_search_matches_brute_force_over_its_grid():
    """best_cascade3: for every stage triple and first-stage count on its grid, no second-stage
    threshold within the budget does better; the found cascade reproduces its accuracy and cost
    when run, and is at least as good on the data as any two-stage cascade through its stages."""
    allocs = [(2, 2), (3, 2), (4, 4), (8, 8)]
    cal, table = designed_calibration(allocs=allocs)
    n, y = len(cal.y), cal.y
    budget = 0.5 * (cal.cost((3, 2)) + cal.cost((8, 8)))
    found = policy.best_cascade3(cal, allocs, budget)
    assert found is not None and len(found.stages) == 3
    right, cost, _ = policy.outcome(cal, found)
    acc = float(right.double().mean())
    assert float(cost.mean()) <= budget * (1 + 1e-12)
    best = 0.0
    for lo, mid, hi in itertools.combinations(sorted(allocs, key=cal.cost), 3):
        m1, m2 = policy.top1_margin(table[lo]), policy.top1_margin(table[mid])
        k1_max = min(n, int((budget - cal.cost(lo)) / cal.escalation_cost(lo, mid) * n + 1e-9))
        grid = {max(1, round(k1_max * (i + 1) / policy.select.K1_GRID)) for i in range(policy.select.K1_GRID)}
        for t1 in [*m1.unique().tolist(), float("inf")]:
            first = m1 < t1
            if int(first.sum()) not in grid or k1_max < 1:
                continue
            for t2 in [*m2[first].unique().tolist(), float("inf")]:
                second = first & (m2 < t2)
                if not bool(second.any()):
                    continue
                spent = (cal.cost(lo) + float(first.double().mean()) * cal.escalation_cost(lo, mid)
                         + float(second.double().mean()) * cal.escalation_cost(mid, hi))
                if spent <= budget:
                    pick = torch.where(second[:, None], table[hi], torch.where(first[:, None], table[mid], table[lo]))
                    best = max(best, float((pick.argmax(1) == y).double().mean()))
    assert acc == pytest.approx(best)
    logits, spent, stage = policy.run_cascade(lambda a, xb, given: (table[tuple(a)][xb], [xb]), found,
                                              torch.arange(n), [], lambda a: {}, cal.cost, cal.escalation_cost)
    assert torch.equal(logits.argmax(1) == y, right) and torch.equal(spent, cost)


def test_a_logistic_gate_ranks_wrong_answers_and_runs_frozen_exactly():
    """fit_gate learns which answers are wrong from the logits (here: flat rows, high entropy,
    are the wrong ones); a gated cascade round-trips its file form, escalates exactly the inputs
    whose gate score is below its threshold, and its frozen run equals the search's outcome."""
    n = 300
    gen = torch.Generator().manual_seed(4)
    y = torch.randint(0, 10, (n,), generator=gen)
    wrong = torch.rand(n, generator=gen) < 0.3
    logits = torch.randn(n, 10, generator=gen)
    answer = torch.where(wrong, (y + 1) % 10, y)
    logits[torch.arange(n), answer] += torch.where(wrong, 1.0, 4.0)  # wrong answers are less sure
    cal = Calibration(governed_mlp(), torch.arange(n), y, forward_at=lambda a, xb: logits[xb])
    gate = policy.fit_gate(cal, (2, 2))
    assert gate is not None and len(gate) == len(policy.GATE_FEATURES) + 1
    score = policy.stage_score(logits, gate)
    ranked = score.argsort()[:int(wrong.sum())]  # the lowest scores: most likely wrong
    assert float(wrong[ranked].double().mean()) > 0.6  # 30% of all answers are wrong
    right = Calibration(governed_mlp(), torch.arange(n), logits.argmax(1), forward_at=lambda a, xb: logits[xb])
    assert policy.fit_gate(right, (2, 2)) is None  # every answer right: nothing to fit, the margin

    model = governed_mlp()
    x = inputs(60, seed=6)
    cheap = policy.eval_at(model, (2, 2), x)
    labels = policy.eval_at(model, (8, 8), x).argmax(1)
    live = Calibration(model, x, labels)
    gate = policy.fit_gate(live, (2, 2))
    threshold = float(policy.stage_score(cheap, gate).median())
    cascade = Cascade(((2, 2), (8, 8)), (threshold,), (gate,))
    assert Cascade.from_dict(cascade.to_dict()) == cascade and "gate <" in cascade.describe()
    frozen = policy.FrozenCascade.from_model(model, cascade)
    got = frozen(x)
    escalated = frozen.last_stage == 1
    assert torch.equal(escalated, policy.stage_score(cheap, gate) < threshold) and 0 < int(escalated.sum()) < 60
    assert torch.equal(got[~escalated], cheap[~escalated])
    assert torch.equal(got[escalated], policy.eval_at(model, (8, 8), x)[escalated])
    right_live, cost, stage = policy.outcome(live, cascade)
    assert torch.equal(right_live, got.argmax(1) == labels) and torch.equal(cost, frozen.last_bitops)
    assert torch.equal(stage, frozen.last_stage)
    with pytest.raises(ValueError, match="gates"):
        Cascade(((2, 2), (8, 8)), (threshold,), ((1.0, 2.0),))


def test_cross_fitting_scores_each_input_with_a_policy_fitted_without_it():
    """crossfit: the folds partition the inputs; each input's out-of-fold outcome is that of the
    family fitted on the other folds (recomputed here for every fold)."""
    cal, _ = designed_calibration(n=80)
    cands = policy.Candidates(((2, 2), (3, 2), (4, 4), (8, 8)), ((2, 2), (4, 4), (8, 8)))
    budget = cal.cost((4, 4))
    folds = policy.select.folds(80, 5)
    assert sorted(torch.cat(folds).tolist()) == list(range(80)) and {len(f) for f in folds} == {16}
    oof = policy.crossfit(cal, cands, budget, k=5)
    assert set(oof) == set(policy.FAMILIES)
    for held in folds:
        keep = torch.ones(80, dtype=torch.bool)
        keep[held] = False
        fit_on = cal.subset(torch.nonzero(keep).flatten())
        for family, fit in policy.FAMILIES.items():
            fitted = fit(fit_on, cands, budget)
            right, cost, _ = policy.outcome(cal.subset(held), fitted)
            assert torch.equal(oof[family][0][held], right) and torch.equal(oof[family][1][held], cost), family
    static = oof["static"]
    assert torch.equal(static[0], cal.correct((4, 4))) and bool((static[1] == budget).all())


def test_the_choice_spends_the_budget_unless_the_data_says_otherwise():
    """choose: where the static width spends the budget, a family has to beat it beyond 2 paired
    SE out of fold (then the most accurate such); where it leaves budget unspent, the families
    tied with the best out of fold that spend the budget, the most accurate of them."""
    n = 200
    base = torch.zeros(n, dtype=torch.bool)
    base[:150] = True
    cost = lambda c: torch.full((n,), float(c), dtype=torch.float64)  # noqa: E731
    slight = base.clone()
    slight[150:153] = True  # +1.5 pp: inside 2 SE
    clear = base.clone()
    clear[150:180] = True  # +15 pp
    worse = base.clone()
    worse[100:150] = False  # -25 pp
    family, stats = policy.choose({"static": (base, cost(4)), "cascade": (slight, cost(3.9))}, budget=4.0)
    assert family == "static" and stats["cascade"]["gain"] == pytest.approx(0.015) and stats["static"]["gain"] == 0.0
    family, _ = policy.choose({"static": (base, cost(4)), "cascade": (slight, cost(3.9)),
                               "cascade3": (clear, cost(3.0)), "escalation": (clear, cost(3.5))}, budget=4.0)
    assert family == "escalation"  # both beat it clearly, equally: the dearer
    # budget 3, the static width costs 2 (budget unspent): of the families tied with the best out of
    # fold, those that spend the budget, the most accurate of them
    family, _ = policy.choose({"static": (base, cost(2)), "cascade": (base, cost(3))}, budget=3.0)
    assert family == "cascade"
    family, _ = policy.choose({"static": (base, cost(2)), "cascade": (worse, cost(3))}, budget=3.0)
    assert family == "static"
    family, _ = policy.choose({"static": (base, cost(2)), "cascade": (base, cost(3)), "cascade3": (slight, cost(2.8)),
                               "allocation": (slight, cost(2.2))}, budget=3.0)
    assert family == "cascade3"  # the allocation is tied but spends under 90% of the dearest tied family
    family, _ = policy.choose({"static": (base, cost(2)), "cascade": (base, cost(3)), "allocation": (clear, cost(2.2))},
                              budget=3.0)
    assert family == "allocation"  # clearly the most accurate: spending does not outweigh that


def test_calibrated_policies_hold_every_family_and_deploy_the_cross_fitted_choice():
    model = governed_mlp()
    x = inputs(200)
    y = model.set_bits(8)(x).argmax(1)  # the widest width's answers as labels: lower widths err
    table = policy.calibrate_policies(model, x, y, (2.5, 3.0, 4.0))
    cal = Calibration(model, x, y)
    cands = policy.Candidates(tuple(policy.candidate_allocations(model, cal)),
                              tuple(policy.uniform(model, b) for b in (2, 3, 4, 8)))
    for i, b in enumerate(table.budgets):
        budget = model.uniform_bitops(b) * (1 + 1e-9)
        family, stats = policy.choose(policy.crossfit(cal, cands, budget), budget)
        assert table.deployed_family[i] == family and table.out_of_fold[i] == stats
        fitted = policy.FAMILIES[family](cal, cands, budget)
        assert table.deployed[i] == fitted
        assert all(len(set(stage)) == 1 for stage in table.cascade[i].stages)  # uniform widths
        widest = max(w for w in (2, 3, 4, 8) if policy.allocation_bitops(model, (w, w)) <= budget)
        if family == "static":
            assert table.deployed[i] == Cascade(((widest, widest),))
        run = policy.evaluate_cascade(model, table.deployed[i], x, y)  # the frozen integer programs
        right, spent, _ = policy.outcome(cal, table.deployed[i])  # the search's cached logits
        assert float(spent.mean()) <= budget and run["accuracy"] == pytest.approx(float(right.double().mean()))
        assert run["bitops"] == pytest.approx(float(spent.mean()))
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


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_a_frozen_three_stage_gated_cascade_equals_the_models_policy(backend):
    """A three-stage cascade with a gate on its first transition and the margin on its second,
    frozen and run on each CPU backend, gives every input the logits of its last stage's full
    pass, the stage and the BitOPs the model's own policy (cached eval logits) computes."""
    model = governed_mlp()
    x = inputs(48, seed=8)
    labels = policy.eval_at(model, (8, 8), x).argmax(1)
    cal = Calibration(model, x, labels)
    gate = policy.fit_gate(cal, (2, 2))
    first = float(policy.stage_score(cal.logits((2, 2)), gate).quantile(0.6))
    second = float(policy.top1_margin(cal.logits((3, 3))).quantile(0.5))
    cascade = Cascade(((2, 2), (3, 3), (8, 8)), (first, second), (gate, None))
    right, cost, stage = policy.outcome(cal, cascade)
    assert set(stage.tolist()) == {0, 1, 2}
    with dq.use_backend(backend):
        frozen = policy.FrozenCascade.from_model(model, cascade)
        logits = frozen(x)
    assert torch.equal(frozen.last_stage, stage) and torch.equal(frozen.last_bitops, cost)
    for i, alloc in enumerate(cascade.stages):
        assert torch.equal(logits[stage == i], cal.logits(alloc)[stage == i])
    assert torch.equal(logits.argmax(1) == labels, right)


def test_policies_survive_save_and_load(tmp_path):
    model = governed_mlp()
    x = inputs(64)
    table = policy.calibrate_policies(model, x, model.set_bits(8)(x).argmax(1), (3.0,))
    model.policies = table.to_dict()
    model.save(tmp_path / "m.pt")
    loaded = dq.DQTModel.load(tmp_path / "m.pt")
    assert policy.PolicyTable.from_dict(loaded.policies) == table
    runner = policy.deployed_at(loaded, 3.0)
    direct = policy.FrozenCascade.from_model(model, table.at(3.0))
    assert runner.cascade == table.at(3.0) and torch.equal(runner(x), direct(x))
    assert policy.escalation_at(loaded, 3.0).cascade == table.at(3.0, "escalation")
    with pytest.raises(ValueError, match="no deployed policy calibrated for budget 2.0"):
        policy.deployed_at(loaded, 2.0)
    with pytest.raises(ValueError, match="no calibrated width policies"):
        policy.deployed_at(governed_mlp(), 3.0)


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
