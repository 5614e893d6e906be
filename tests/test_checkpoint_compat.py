"""A checkpoint written before the step kinds existed (commit d30c4f8, format version 3) still
loads, and its integer model computes the same logits, bit for bit.

tests/data/checkpoint-v3-d30c4f8.pt: simple_cnn, candidate widths 2/4/8, four dqt_loss steps,
saved at static 4 bits with dynamic mode on and budget code 64; the -outputs file holds the
inputs and the logits and widths that commit's eval produced (static 4-bit and dynamic).
"""

from __future__ import annotations

from pathlib import Path

import torch

import dqt_triton as dq

DATA = Path(__file__).parent / "data"


def test_old_checkpoint_loads_and_computes_the_same_integers():
    saved = torch.load(DATA / "checkpoint-v3-d30c4f8-outputs.pt", weights_only=True)
    x = saved["x"]
    model = dq.DQTModel.load(DATA / "checkpoint-v3-d30c4f8.pt").eval()
    assert model.dynamic and model.budget_code == 64
    assert torch.equal(model(x), saved["dynamic"])
    assert torch.equal(model.last_bits, saved["dynamic_bits"])
    assert len(set(saved["dynamic_bits"][:, 1, 0].tolist())) > 1  # the dynamic widths really vary
    model.set_dynamic(False)
    assert torch.equal(model(x), saved["static4"])
    assert torch.equal(dq.FrozenDQTModel.load(DATA / "checkpoint-v3-d30c4f8.pt", mode="dynamic")(x), saved["dynamic"])
    assert torch.equal(dq.FrozenDQTModel.load(DATA / "checkpoint-v3-d30c4f8.pt", mode="static")(x), saved["static4"])
