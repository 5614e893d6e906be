"""`dqt_triton.report`: the verdict a user acts on, from a results table's budgets."""

from __future__ import annotations

from dqt_triton.report import verdict


def _budget(bits, family, gain, se, stages=((4,),)):
    return {"budget_bits": bits, "deployed_family": family, "gain_over_static": gain, "gain_se": se,
            "best_static": {"mode": "static 4-bit"}, "deployed": {"policy": {"stages": [list(s) for s in stages]}}}


def test_the_verdict_names_what_to_deploy_and_where_dynamic_widths_pay():
    rows = [{"mode": "static 4-bit"}, {"mode": "deployed", "budget_bits": 4.0}]
    budgets = [_budget(2.5, "cascade", 0.029, 0.006, ((2,), (8,))), _budget(2.75, "gated", 0.01, 0.009),
               _budget(4.0, "static", 0.0, 0.0)]
    text = verdict({"rows": rows, "budgets": budgets})
    assert text.startswith("verdict: at 4 bits deploy static 4-bit: no dynamic policy beat it out of fold")
    assert "gain most at 2.5 bits: +2.9 ± 0.6 pp against the best static choice (static 4-bit), beyond 2 SE (cascade)" in text
    budgets[0]["gain_over_static"] = 0.005  # now 2.75 gains most, within noise
    assert "gain most at 2.75 bits: +1.0 ± 0.9 pp" in verdict({"rows": rows, "budgets": budgets})
    assert "within noise on this test split (gated)" in verdict({"rows": rows, "budgets": budgets})
    dynamic_at_4 = [_budget(4.0, "cascade3", -0.002, 0.003, ((3,), (4,), (8,)))]
    text = verdict({"rows": rows, "budgets": dynamic_at_4})
    assert text.startswith("verdict: at 4 bits deploy the cascade3 policy (test: -0.2 ± 0.3 pp")
    assert verdict({"rows": rows, "budgets": [_budget(4.0, "static", 0.0, 0.0)]}).endswith(
        "; no budget deploys dynamic widths.")
    assert verdict({"rows": rows[:1], "budgets": budgets}) is None  # no deployed row: no policies
