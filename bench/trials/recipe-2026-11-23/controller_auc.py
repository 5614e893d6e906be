"""How well does a trained controller tell inputs apart? For a checkpoint, on the test split and on
the samples the held-out recipe would hold out: the inputs wrong at 2 (or 3) bits but right at 8,
and the AUC with which the controller's preference for 8 over the low width ranks them first,
next to the AUC of the 8-bit path's own loss (what a controller reading the whole network could
know). Accuracy at every static width for reference.

    python bench/trials/recipe-2026-11-23/controller_auc.py MODEL.pt DATASET SEED
"""
import sys, torch, torch.nn.functional as F
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3]))
from dqt_triton import DQTModel
from dqt_triton.training import load_dataset
path, data = sys.argv[1], sys.argv[2]
m = DQTModel.load(path).eval(); ds = load_dataset(data)
perm = torch.randperm(len(ds.y_train), generator=torch.Generator().manual_seed(int(sys.argv[3]) + 777))
held = perm[:int(round(0.1*len(perm)))]
def analyse(x, y, name):
    with torch.no_grad():
        ce = {}; right = {}
        for b in m.candidate_bits:
            m.set_bits(b); lg = m(x); ce[b] = F.cross_entropy(lg.float(), y, reduction="none"); right[b] = lg.argmax(1) == y
        m.set_dynamic(True); m.train(False)
        m.simulated_forward(x); z = m.controller_logits[:, 0]  # [N, J] net of price at current code
    acc = {b: round(float(right[b].float().mean())*100,1) for b in m.candidate_bits}
    # sensitivity target: CE_2 - CE_8 ; predicted: z_8 - z_2 (more positive -> controller wants more bits)
    J = list(m.candidate_bits)
    for lo in (2, 3):
        fail = (~right[lo]) & right[8]
        pred = z[:, J.index(8)] - z[:, J.index(lo)]
        # AUC of pred for fail
        pos, neg = pred[fail], pred[~fail]
        auc = float((pos[:, None] > neg[None, :]).float().mean()) if len(pos) and len(neg) else float("nan")
        # AUC of true CE_lo - CE_8 on same? also oracle-ish: rank by CE_8 (teacher loss)
        t8 = ce[8]; auc8 = float((t8[fail][:, None] > t8[~fail][None, :]).float().mean()) if len(pos) else float('nan')
        print(f"{name}: fails at {lo} but right at 8: {int(fail.sum())}/{len(y)}; controller AUC {auc:.2f}; AUC of 8-bit CE {auc8:.2f}")
    print(name, "acc", acc)
analyse(ds.x_test, ds.y_test, "test")
analyse(ds.x_train[held], ds.y_train[held], "holdout")
