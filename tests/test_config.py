"""The typed configurations: written once, validated once, and the CLI built from them."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

import dqt_triton as dq
from dqt_triton import models
from dqt_triton.cli import add_config_options, config_option_names, main
from dqt_triton.convert import ConvertConfig
from dqt_triton.objective import LossConfig
from dqt_triton.program import IntegerProgram, program_tensors
from dqt_triton.training import BEFORE_THE_OPTION, TrainConfig


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_options(parser, TrainConfig)
    return parser.parse_args(argv)


def test_train_config_is_the_conversion_and_loss_options_plus_the_recipe():
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {f.name for f in dataclasses.fields(ConvertConfig)} <= train
    assert {f.name for f in dataclasses.fields(LossConfig)} <= train
    cfg = TrainConfig(shift_rule="floor", alpha=0.5, controller_granularity="sample")
    assert cfg.convert_config() == ConvertConfig(shift_rule="floor", controller_granularity="sample")
    assert cfg.loss_config() == LossConfig(alpha=0.5)


def test_every_option_is_on_the_command_line_with_its_default_unset():
    args = _parse([])
    names = config_option_names(TrainConfig)
    assert set(names) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(getattr(args, n) is None for n in names)  # unset: the dataset's recipe decides
    args = _parse(["--bits", "2", "4", "--shared-bn", "--no-distill", "--controller", "sample", "--edge-bits", "0",
                   "--budget", "3", "--policy-budgets", "2.5", "3", "--gate-gradients", "all",
                   "--controller-hidden", "4"])
    assert args.candidate_bits == [2, 4] and args.bn_per_width is False and args.distill is False
    assert args.controller_granularity == "sample" and args.edge_bits == 0 and args.budget_bits == 3.0
    assert args.policy_budgets == [2.5, 3.0] and args.gate_gradients == "all" and args.controller_hidden == 4
    with pytest.raises(SystemExit):
        _parse(["--gate-gradients", "sometimes"])


@pytest.mark.parametrize("bad, message", [
    (dict(shift_rule="ceil"), "shift_rule must be one of"),
    (dict(candidate_bits=(2, 2)), "distinct integers"),
    (dict(edge_bits=9), "edge_bits must be None or an int"),
    (dict(controller_hidden=0), "controller_hidden must be None or a positive int"),
    (dict(controller_hidden=2.5), "controller_hidden must be None or a positive int"),
    (dict(controller_granularity="pixel"), "controller_granularity must be one of"),
    (dict(consistency_share=0.0), "consistency_share must be in"),
    (dict(imitation_source="oracle"), "imitation_source must be one of"),
    (dict(gate_gradients="some"), "gate_gradients must be one of"),
    (dict(calibration_holdout=0.95), "calibration_holdout must be in"),
])
def test_bad_options_are_refused_where_the_config_is_made(bad, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**bad)


def test_edge_bits_zero_means_every_layer_governed():
    assert ConvertConfig(edge_bits=0).edge_bits is None
    model = dq.DQTModel.from_float(models.mlp(64, 16, 10, 2), (64,), edge_bits=0)
    assert model.governed == model.layer_names


def test_controller_hidden_sets_the_controller_size():
    default = dq.DQTModel.from_float(models.mlp(64, 16, 10, 2), (64,), dynamic=True)
    small = dq.DQTModel.from_float(models.mlp(64, 16, 10, 2), (64,), dynamic=True, controller_hidden=3)
    assert small.controller.hidden == 3 != default.controller.hidden
    assert small.controller.macs() < default.controller.macs()


def test_from_float_and_dqt_loss_refuse_unknown_options():
    with pytest.raises(TypeError, match="unknown ConvertConfig option.*'bitz'"):
        dq.DQTModel.from_float(models.mlp(64, 16, 10, 2), (64,), bitz=4)
    model = dq.DQTModel.from_float(models.mlp(64, 16, 10, 2), (64,), dynamic=True).train()
    x, y = torch.randint(0, 256, (4, 64), dtype=torch.uint8), torch.arange(4)
    with pytest.raises(TypeError, match="unknown LossConfig option.*'consistency_samples'"):
        model.dqt_loss(x, y, consistency_samples=2)


def test_saved_configs_load_under_their_old_names_and_defaults():
    old = {"data": "digits", "controller": "sample", "edge_bits": 0, "candidate_bits": [2, 4, 8]}
    cfg = TrainConfig.from_saved(old)
    assert cfg.controller_granularity == "sample" and cfg.edge_bits is None and cfg.candidate_bits == (2, 4, 8)
    for name, value in BEFORE_THE_OPTION.items():  # a run written before an option did what the code did then
        assert getattr(cfg, name) == value
    assert TrainConfig.from_saved(dataclasses.asdict(TrainConfig(seed=3))) == TrainConfig(seed=3)


def test_train_on_a_machine_without_the_requested_gpu_is_a_backend_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    assert main(["train", "--device", "cuda", "--out", str(tmp_path)]) == 8
    assert "no CUDA device" in capsys.readouterr().err


def test_the_program_round_trips_through_the_checkpoint_dicts():
    """`IntegerProgram.to_dict` / `from_dict`: every record at every level comes back equal,
    tensors bit for bit (a capped ReLU's clamp, a conv's geometry, the controller's offsets)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU6(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 8 * 8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    model = dq.DQTModel.from_float(net, (1, 8, 8), dynamic=True).eval()
    program = model.integer_program()
    again = IntegerProgram.from_dict(program.to_dict())
    assert [s.spec() for s in again.steps] == [s.spec() for s in program.steps]
    first = again.layers[model.layer_names[0]]
    assert first.clamp_max is not None and first.conv.padding == (1, 1)
    a, b = list(program_tensors(program)), list(program_tensors(again))
    assert len(a) == len(b) and all(torch.equal(s, t) for s, t in zip(a, b))
    x = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(dq.FrozenDQTModel(again, model.arch.macs)(x), model(x))
