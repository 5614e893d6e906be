"""`dqt train` / `dqt eval`: the results table, checkpoints, exact resume, Ctrl-C, data errors."""

from __future__ import annotations

import json
import random
import socket

import numpy as np

import pytest
import torch

from dqt_triton import DQTModel, policy
from dqt_triton.checkpoint import load_file
from dqt_triton.cli import main
from dqt_triton.training import POLICY_BUDGETS, TrainConfig, Trainer, load_dataset, split_training_set

QUICK = ["--model", "mlp", "--width", "8", "--limit", "256", "--warmup-epochs", "1", "--epochs", "2",
         "--bits", "2", "4", "8", "--batch-size", "64"]


def _config(**overrides) -> TrainConfig:
    base = dict(model="mlp", width=8, limit=256, warmup_epochs=1, epochs=2, candidate_bits=(2, 4, 8), batch_size=64)
    base.update(overrides)
    return TrainConfig(**base)


def test_train_prints_the_results_table_and_writes_its_files(tmp_path, capsys):
    assert main(["train", *QUICK, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    modes = [line.split()[0] + " " + line.split()[1] for line in out.splitlines() if line.startswith("static")]
    assert modes == ["static 8-bit", "static 4-bit", "static 2-bit"]
    assert any(line.startswith("deployed ") for line in out.splitlines())  # the deployed policy, at --budget
    assert any(line.startswith("controller ") for line in out.splitlines())  # the paper's
    assert "agreement" in out
    for name in ("model.pt", "train_state.pt", "metrics.csv", "metrics.jsonl", "results.json"):
        assert (tmp_path / name).is_file(), name
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3] and [m["phase"] for m in metrics] == ["qat8", "dqt", "dqt"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["mode"] for r in results["rows"]][3:] == ["deployed", "controller"]
    assert results["rows"][3]["family"] in policy.FAMILIES
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results["rows"])
    assert results["rows"][3]["budget_bits"] == 4.0 and abs(sum(results["rows"][3]["histogram"].values()) - 1) < 1e-9

    # the width policies beside the controller, at every budget, from the policies saved in model.pt
    budget_lines = [ln for ln in out.splitlines() if ln[:4] in {f"{b:<4.2f}"[:4] for b in POLICY_BUDGETS}]
    assert "Width policies at run-time budgets" in out and len(budget_lines) == len(POLICY_BUDGETS)
    assert [r["budget_bits"] for r in results["budgets"]] == list(POLICY_BUDGETS)
    for r in results["budgets"]:  # against the best static choice within the budget, on the same test split
        assert r["deployed"]["bitops"] > 0 and r["hull_at_deployed"] is not None and r["deployed_family"] in policy.FAMILIES
        static = r["best_static"]
        within = lambda row: row is not None and row["bitops"] <= r["budget_bitops"] * (1 + 1e-9)  # noqa: E731
        fits = [row["accuracy"] for row in [*results["rows"][:3], r["allocation"]] if within(row)]
        assert static["accuracy"] == max(fits)
        assert r["gain_over_static"] == pytest.approx(r["deployed"]["accuracy"] - static["accuracy"])
        assert r["gain_se"] >= 0.0 and set(r["out_of_fold"]) <= set(policy.FAMILIES)
    assert any(ln.startswith("verdict: ") for ln in out.splitlines())

    assert main(["eval", str(tmp_path / "model.pt")]) == 0
    eval_out = capsys.readouterr().out
    assert [ln for ln in eval_out.splitlines() if ln.startswith(("static", "deployed", "controller", "verdict"))] == \
        [ln for ln in out.splitlines() if ln.startswith(("static", "deployed", "controller", "verdict"))]
    assert [ln for ln in eval_out.splitlines() if ln in budget_lines] == budget_lines

    # dqt allocate: the calibrated allocation at a reported budget, a fresh search at another
    saved = DQTModel.load(tmp_path / "model.pt")
    stored = saved.policies["allocation"][list(POLICY_BUDGETS).index(3.0)]["stages"][0]
    assert main(["allocate", str(tmp_path / "model.pt"), "--budget", "3", "--save", str(tmp_path / "a3.pt")]) == 0
    text = capsys.readouterr().out
    assert "the checkpoint's calibrated policies" in text and "test accuracy" in text
    allocated = DQTModel.load(tmp_path / "a3.pt")
    assert [allocated.static_bits[n][0] for n in allocated.governed] == stored
    assert main(["allocate", str(tmp_path / "model.pt"), "--budget", "3.3"]) == 0
    assert "training samples" in capsys.readouterr().out
    assert main(["allocate", str(tmp_path / "model.pt"), "--budget", "1"]) == 2
    assert "no allocation fits the BitOPs of uniform 1.0 bits" in capsys.readouterr().err


def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    straight = Trainer(_config(), tmp_path / "straight")
    straight.train()

    interrupted = Trainer(_config(), tmp_path / "resumed")
    original = Trainer._train_epoch

    def stop_in_second_dqt_epoch(self, epoch, dqt_phase, target):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch, dqt_phase, target)

    monkeypatch.setattr(Trainer, "_train_epoch", stop_in_second_dqt_epoch)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    DQTModel.load(tmp_path / "resumed" / "model-interrupted.pt")  # usable
    DQTModel.load(tmp_path / "resumed" / "model.pt")

    resumed = Trainer(_config(), tmp_path / "resumed")
    resumed.resume()
    assert resumed.epoch == 2
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(run):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert metrics("straight") == metrics("resumed")


def test_resume_refuses_other_options(tmp_path):
    Trainer(_config(epochs=1), tmp_path).train()
    with pytest.raises(ValueError, match="alpha"):
        Trainer(_config(epochs=1, alpha=0.0), tmp_path).resume()


def test_resume_accepts_a_state_written_before_an_option_existed(tmp_path):
    """A training state from before an option was added resumes when the run asks for what
    that run did (the default of the time), and is refused otherwise."""
    from dqt_triton.model_file import write as _atomic_save

    Trainer(_config(epochs=1), tmp_path).train()
    path = tmp_path / "train_state.pt"
    state = load_file(path)
    del state["config"]["consistency_share"], state["config"]["gate_gradients"]
    _atomic_save(state, path)
    # Those runs did what the defaults then were (the whole batch, every gate gradient); today's
    # defaults differ, so only the old behaviour resumes.
    with pytest.raises(ValueError, match="consistency_share.*gate_gradients"):
        Trainer(_config(epochs=1), tmp_path).resume()
    with pytest.raises(ValueError, match="gate_gradients"):
        Trainer(_config(epochs=1, consistency_share=1.0), tmp_path).resume()
    Trainer(_config(epochs=1, consistency_share=1.0, gate_gradients="all"), tmp_path).resume()


def test_a_state_from_before_a_default_changed_resumes_only_with_the_old_behaviour(tmp_path):
    """imitation_source came with a new default ("sandwich"); runs before it judged held-out
    samples. Resuming one must not switch recipes silently."""
    from dqt_triton.model_file import write as _atomic_save

    Trainer(_config(epochs=1, imitation_source="holdout"), tmp_path).train()
    path = tmp_path / "train_state.pt"
    state = load_file(path)
    del state["config"]["imitation_source"]
    _atomic_save(state, path)
    with pytest.raises(ValueError, match="imitation_source"):
        Trainer(_config(epochs=1), tmp_path).resume()
    Trainer(_config(epochs=1, imitation_source="holdout"), tmp_path).resume()


def test_missing_cifar_copy_is_named(tmp_path, capsys):
    assert main(["train", "--data", "cifar10", "--out", str(tmp_path)]) == 4
    assert "needs --data-dir" in capsys.readouterr().err
    (tmp_path / "cifar-10-batches-py").mkdir()
    assert main(["train", "--data", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 4
    assert "missing data_batch_1" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="missing data_batch_1"):
        main(["--debug", "train", "--data", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])


def test_torchrun_two_gloo_processes_match_one_process(tmp_path):
    """2 CPU ranks under torchrun (gloo) stay in sync (checked each epoch inside the trainer) and
    end where one process with the same global batch ends, up to float reduction order."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    args = ["train", "--model", "mlp", "--width", "8", "--limit", "256", "--warmup-epochs", "2", "--epochs", "0",
            "--bits", "4", "8", "--batch-size", "64"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dqt_triton.cli", *args,
                          "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    ddp = load_file(tmp_path / "ddp" / "train_state.pt")["model"]
    single = load_file(tmp_path / "single" / "train_state.pt")["model"]
    assert ddp.keys() == single.keys()
    for name, value in single.items():
        if value.dtype.is_floating_point:  # float training state: the all-reduce sums in another order
            torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-5, msg=name)
        else:  # integer state (batch counters) must match exactly
            assert torch.equal(ddp[name], value), name


def test_training_ends_by_recalibrating_each_widths_norms_and_saves_them(tmp_path, monkeypatch):
    """norm_recalibration N: after the last epoch the trainer re-estimates the batch-norm
    statistics of every candidate width (a static baseline: its one width) on N samples of its
    training split (drawn across it), and model.pt holds the recalibrated model;
    0 skips it."""
    calls, seen = [], []
    recalibrate = DQTModel.recalibrate_norms

    def recorded(self, x, bits=None, batch_size=256):
        calls.append((x.shape[0], bits))
        seen.append(x)
        return recalibrate(self, x, bits, batch_size)

    monkeypatch.setattr(DQTModel, "recalibrate_norms", recorded)
    for name, overrides, call in (("dqt", {}, (100, None)), ("static", {"static_bits": 4}, (100, [4]))):
        trainer = Trainer(_config(model="cnn", epochs=1, norm_recalibration=100, **overrides), tmp_path / name)
        trainer.train()
        assert calls[-1] == call
        # Drawn across the training split, not its first rows (a class-sorted split would bias those).
        x_train = trainer.ds.x_train
        assert not torch.equal(seen[-1], x_train[:100])
        assert all(any(torch.equal(row, other) for other in x_train) for row in seen[-1][:5])
        widths = trainer.model.candidate_bits
        for layer in (trainer.model.layers[n] for n in trainer.model.governed):
            # Reset, then one batch of 100: training's counts are gone.
            assert [int(layer.width_bns[8 - b].num_batches_tracked) for b in widths] == [1] * len(widths)
        saved, now = DQTModel.load(tmp_path / name / "model.pt").state_dict(), trainer.model.state_dict()
        assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k]) for k in now)
    Trainer(_config(model="cnn", epochs=1, norm_recalibration=0), tmp_path / "off").train()
    assert len(calls) == 2


def test_a_phased_static_baseline_follows_the_dqt_runs_learning_rates(tmp_path, monkeypatch):
    """static_schedule: a constant baseline trains at lr throughout (what runs did before the
    option); a phased one drops to dqt_lr after the warm-up epochs, as the DQT run does, and a
    resumed phased run picks up the dropped rate."""
    seen = []
    epoch = Trainer._train_epoch

    def recorded(self, *args):
        seen.append(self.optimizer.param_groups[0]["lr"])
        return epoch(self, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", recorded)
    rates = dict(lr=3e-3, dqt_lr=5e-4, warmup_epochs=1, epochs=2, norm_recalibration=0)
    for name, overrides, expected in (("dqt", {}, [3e-3, 5e-4, 5e-4]),
                                      ("constant", {"static_bits": 4}, [3e-3] * 3),
                                      ("phased", {"static_bits": 4, "static_schedule": "phased"},
                                       [3e-3, 5e-4, 5e-4])):
        seen.clear()
        Trainer(_config(**rates, **overrides), tmp_path / name).train()
        assert seen == expected, name
    seen.clear()
    resumed = Trainer(_config(**{**rates, "epochs": 3}, static_bits=4, static_schedule="phased"), tmp_path / "phased")
    with pytest.raises(ValueError, match="options differ"):
        resumed.resume()  # epochs differ; the same options resume at the dropped rate
    resumed = Trainer(_config(**rates, static_bits=4, static_schedule="phased"), tmp_path / "phased")
    resumed.resume()
    assert resumed.optimizer.param_groups[0]["lr"] == 5e-4
    with pytest.raises(ValueError, match="static_schedule must be 'constant' or 'phased', got 'cosine'"):
        _config(static_bits=4, static_schedule="cosine")


def test_mnist1d_is_generated_offline_and_leaves_the_global_random_state_alone(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("MNIST-1D must be generated offline, not downloaded")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    np_state, py_state = np.random.get_state(), random.getstate()
    ds = load_dataset("mnist1d")
    assert ds.x_train.shape == (4000, 1, 1, 40) and ds.x_test.shape == (1000, 1, 1, 40)
    assert ds.x_train.dtype == torch.int8 and ds.input_signed and ds.input_shape == (1, 1, 40)
    assert set(ds.y_train.tolist()) == set(range(10)) and int(ds.x_train.abs().max()) == 127
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    again = load_dataset("mnist1d")
    assert torch.equal(again.x_train, ds.x_train) and torch.equal(again.y_test, ds.y_test)


def test_calibration_split_is_kept_out_of_training():
    cfg = _config()
    held, calib, fit = split_training_set(cfg, 1000)
    assert len(held) == 0 and len(calib) == 200 and len(fit) == 800
    assert not set(calib.tolist()) & set(fit.tolist())
    judged = split_training_set(_config(imitation_source="holdout"), 1000)
    assert [len(part) for part in judged] == [100, 200, 700]
    assert len(set().union(*(set(p.tolist()) for p in judged))) == 1000


def test_train_on_mnist1d_builds_the_1d_cnn_and_its_frozen_model_is_exact(tmp_path, capsys):
    args = ["train", "--data", "mnist1d", "--width", "2", "--limit", "256", "--warmup-epochs", "1", "--epochs", "1",
            "--bits", "2", "4", "8", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "cnn1d (width 2) on mnist1d" in capsys.readouterr().out
    model = DQTModel.load(tmp_path / "model.pt").eval()
    x = load_dataset("mnist1d").x_test[:64]
    for bits in (2, 4, 8):
        model.set_bits(bits)
        assert torch.equal(model.freeze()(x), model(x))
