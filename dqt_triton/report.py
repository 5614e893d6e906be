"""The text `dqt train` and `dqt eval` print from `training.results_table`: the table of static
widths and dynamic modes, the width policies at each budget against the best static choice that
fits it, and a verdict a user can act on."""

from __future__ import annotations

from typing import Optional

from .policy import select


def _pp(gain: float, se: float) -> str:
    """A difference in accuracy and its standard error, in percentage points."""
    return f"{100 * gain:+.1f} ± {100 * se:.1f}"

def format_table(results: dict) -> str:
    perplexity = all("perplexity" in r for r in results["rows"])  # next-token targets: accuracy per token
    lines = [f"{'mode':<14} {'accuracy':>9}" + (f" {'perplexity':>10}" if perplexity else "") +
             f" {'BitOPs/sample':>15} {'vs uniform 4':>12}  chosen-width histogram"]
    for r in results["rows"]:
        hist = " ".join(f"{b}:{p:.2f}" for b, p in r["histogram"].items() if p > 0)
        ppl = f" {r['perplexity']:>10.3f}" if perplexity else ""
        lines.append(f"{r['mode']:<14} {r['accuracy']:>9.4f}{ppl} {r['bitops']:>15,.0f} "
                     f"{r['bitops_vs_uniform4']:>12.2f}  {hist}")
    if results.get("edge_bits"):
        lines.append(f"(first and last layers at {results['edge_bits']} bits in every row; the histogram counts "
                     "the governed layers)")
    for r in results["rows"]:
        if r["mode"] in ("deployed", "controller") and r.get("spread") is not None:
            where = (f"budget uniform {r['budget_bits']:g}" if r["mode"] == "deployed"
                     else f"budget code {r['budget_code']}, widths {r.get('allowed_bits', 'all')}")
            name = f"deployed ({r['family']})" if r["mode"] == "deployed" else r["mode"]
            lines.append(f"{name}, per input: BitOPs of the dearest 10% / cheapest 10% = {r['spread']:.2f}x; "
                         f"accuracy of the cheap half {r['cheap_half_accuracy']:.4f}, dear half "
                         f"{r['dear_half_accuracy']:.4f} ({where})")
    if results.get("agreement_dynamic") is not None:
        lines.append(f"train-path / integer-eval top-1 agreement (controller): {results['agreement_dynamic']:.4f}")
    if results.get("budgets"):
        lines += ["", format_budgets(results["budgets"], results["uniform4_bitops"])]
        advice = verdict(results)
        if advice:
            lines += ["", advice]
    return "\n".join(lines)


def format_budgets(budgets: list, unit: float) -> str:
    """The width policies at each budget: the deployed policy against the best static choice
    that fits the budget (gain with its paired SE), then every fitted family and the paper's
    controller (accuracy @ BitOPs / uniform 4), and the hull at the deployed policy's BitOPs."""
    def cell(r: Optional[dict]) -> str:
        return "-" if r is None else f"{r['accuracy']:.4f} @ {r['bitops'] / unit:.2f}"

    def gain(r: dict) -> str:
        return "-" if r["gain_over_static"] is None else _pp(r["gain_over_static"], r["gain_se"])

    def out_of_fold(r: dict) -> str:  # the deployed family's out-of-fold gain over the static width
        row = (r.get("out_of_fold") or {}).get(r["deployed_family"], {})
        return "-" if "gain" not in row else _pp(row["gain"], row["se"])

    def static(r: dict) -> str:
        s = r["best_static"]
        return "-" if s is None else f"{s['accuracy']:.4f} {s['mode'].removeprefix('static ')}"

    head = ["budget", "best static", "deployed", "family", "gain pp", "oof pp", "hull*", "allocation",
            "uniform cascade", "escalation", "3-stage cascade", "gated cascade", "controller"]
    lines = ["Width policies at run-time budgets (test accuracy @ BitOPs / uniform 4; fitted and chosen on the "
             "held-out calibration split):",
             f"{head[0]:<6} {head[1]:>18} {head[2]:>15} {head[3]:>10} {head[4]:>11} {head[5]:>11} {head[6]:>7} "
             + " ".join(f"{h:>15}" for h in head[7:])]
    for r in budgets:
        hull = r["hull_at_deployed"]
        lines.append(f"{r['budget_bits']:<6.2f} {static(r):>18} {cell(r['deployed']):>15} {r['deployed_family']:>10} "
                     f"{gain(r):>11} {out_of_fold(r):>11} {'-' if hull is None else f'{hull:.4f}':>7} "
                     + " ".join(f"{cell(r[k]):>15}" for k in ("allocation", "cascade", "escalation", "cascade3",
                                                              "gated", "controller")))
    lines.append("best static: the best of the uniform widths and the calibrated allocation that fit the budget, on "
                 f"the test split.\ndeployed: chosen out of fold ({select.FOLDS}-fold cross-fitting on the "
                 "calibration split): where the static width spends the budget,\na family that beats it by more than "
                 f"{select.TIE_SE:g} paired SE; where it leaves budget unspent, of the families within "
                 f"{select.TIE_SE:g} SE\nof the best, the best that spends it. gain: deployed - best static, ± paired "
                 "SE;\noof: the deployed family's out-of-fold gain over the static width the budget affords, ± paired "
                 "SE.\n* the hull of the uniform widths at the deployed policy's own BitOPs (forgives unspent budget). "
                 "Cascades: every input at a\ncheap width, the inputs whose top-1 margin is below a calibrated "
                 "threshold again at a dearer one, resuming from\nthe layers "
"both share (every pass counted).")
    return "\n".join(lines)


def verdict(results: dict) -> Optional[str]:
    """Plain advice from `results_table`'s budgets: what to deploy at the deployment budget, and
    where dynamic widths were deployed, the largest gain over the best static choice on the test
    split and whether it is beyond two standard errors."""
    budgets = results.get("budgets")
    deployment = next((r for r in results["rows"] if r["mode"] == "deployed"), None)
    if not budgets or deployment is None:
        return None
    at = next(r for r in budgets if r["budget_bits"] == deployment["budget_bits"])

    def versus(r: dict) -> str:
        if r["gain_over_static"] is None:
            return ""
        return (f"{_pp(r['gain_over_static'], r['gain_se'])} pp against the best static choice "
                f"({r['best_static']['mode']})")

    b = f"{at['budget_bits']:g} bits"
    if at["deployed_family"] == "static":
        width = at["deployed"]["policy"]["stages"][0][0]
        text = (f"at {b} deploy static {width}-bit: no dynamic policy beat it out of fold on the calibration split "
                f"(test: {versus(at)})")
    else:
        text = f"at {b} deploy the {at['deployed_family']} policy (test: {versus(at)})"
    dynamic = [r for r in budgets if r["deployed_family"] != "static" and r["gain_over_static"] is not None]
    if dynamic:
        best = max(dynamic, key=lambda r: r["gain_over_static"])
        clear = best["gain_over_static"] > 2 * best["gain_se"]
        text += (f"; dynamic widths gain most at {best['budget_bits']:g} bits: {versus(best)}, "
                 f"{'beyond 2 SE' if clear else 'within noise on this test split'} ({best['deployed_family']})")
    else:
        text += "; no budget deploys dynamic widths"
    return "verdict: " + text + "."
