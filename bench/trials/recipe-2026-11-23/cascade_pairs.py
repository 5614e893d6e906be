"""Test accuracy at budget uniform 4 of fixed cascade pairs (threshold calibrated on the held-out split)."""
import sys, torch
from dqt_triton import DQTModel
from dqt_triton.training import TrainConfig, Trainer
from bench.evidence import SETUPS
torch.set_num_threads(1)
for data in ("digits", "madelon"):
    for seed in (0, 1, 2):
        cfg = TrainConfig(data=data, seed=seed, calibration_holdout=0.1, **SETUPS[data])
        tr = Trainer(cfg, "/tmp/trial5/tmp")
        model = DQTModel.load(f"bench/results/evidence/checkpoints/{data}-dqt-seed{seed}/model.pt").eval()
        xc, yc = tr.calibration
        target = model.uniform_bitops(4)
        out = []
        for pair in [(2, 4), (2, 5), (3, 5), (3, 6), (3, 8), (2, 8)]:
            c = model.calibrate_cascade(xc, target, pairs=[pair])
            acc = float((model(tr.ds.x_test).argmax(1) == tr.ds.y_test).float().mean())
            out.append(f"{pair[0]}->{pair[1]} {acc*100:.1f}@{float(model.last_bitops.mean())/target:.2f}")
        model.set_bits(4)
        s4 = float((model(tr.ds.x_test).argmax(1) == tr.ds.y_test).float().mean())
        print(data, seed, f"static4 {s4*100:.1f} |", " | ".join(out), flush=True)
