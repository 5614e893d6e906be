"""Would a cheap first pass tell easy inputs from hard ones better than the controller does?

A two-pass cascade on a trained DQT checkpoint, evaluated offline with the integer eval: every
input runs at a low width; if its top softmax probability is below a threshold it runs again at
a higher width, whose answer counts. BitOPs per input = the low pass, plus the high pass when
rerun (the second pass does not reuse the first). The threshold is the largest whose mean BitOPs
on the training split stay within the budget (uniform 4 bits); the test split reports accuracy
and BitOPs at that threshold, next to the same checkpoint's dynamic mode at the uniform-4 budget.

    python bench/trials/recipe-2026-11-23/cascade.py DATASET SEED [SEED ...]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from dqt_triton import DQTModel  # noqa: E402
from dqt_triton.training import load_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "results" / "evidence" / "checkpoints"


def static_pass(model, x, bits):
    with torch.no_grad():
        model.set_bits(bits)
        logits = model(x).float()
    return logits.softmax(1), model.last_bitops.double().clone()


def cascade(passes, lo, hi, threshold):
    """(predictions, BitOPs per input) from precomputed static passes {bits: (probs, bitops)}."""
    (p_lo, cost_lo), (p_hi, cost_hi) = passes[lo], passes[hi]
    rerun = p_lo.max(1).values < threshold
    return torch.where(rerun, p_hi.argmax(1), p_lo.argmax(1)), cost_lo + rerun.double() * cost_hi


def main():
    data, seeds = sys.argv[1], [int(s) for s in sys.argv[2:]]
    ds = load_dataset(data)
    for seed in seeds:
        model = DQTModel.load(str(ROOT / f"{data}-dqt-seed{seed}" / "model.pt")).eval()
        budget = float(model.uniform_bitops(4))
        with torch.no_grad():
            model.calibrate_budget(ds.x_train, budget)
            dyn = model(ds.x_test).argmax(1)
            dyn_cost = float(model.last_bitops.double().mean()) / budget
        print(f"{data} seed {seed}: dynamic {float((dyn == ds.y_test).float().mean()) * 100:.1f} at {dyn_cost:.2f}x")
        train = {b: static_pass(model, ds.x_train, b) for b in (2, 3, 4, 5, 6, 8)}
        test = {b: static_pass(model, ds.x_test, b) for b in (2, 3, 4, 5, 6, 8)}
        for lo in (2, 3):
            for hi in (4, 5, 6, 8):
                best = None
                for threshold in [i / 100 for i in range(0, 101)] + [0.995, 0.999, 1.01]:
                    _, cost = cascade(train, lo, hi, threshold)
                    if float(cost.mean()) <= budget:
                        best = threshold
                if best is None:
                    continue
                pred, cost = cascade(test, lo, hi, best)
                acc = float((pred == ds.y_test).float().mean()) * 100
                print(f"  cascade {lo}->{hi} (threshold {best:.3f}): {acc:.1f} at {float(cost.mean()) / budget:.2f}x")


if __name__ == "__main__":
    main()
