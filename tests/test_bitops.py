"""BitOPs accounting and transition-cost counts on models whose numbers can be worked out by hand."""

from __future__ import annotations

import pytest
import torch

import dqt_triton as dq
from dqt_triton import bitops, models


def test_mlp_counts_by_hand():
    model = dq.DQTModel.from_float(models.mlp(64, 32, 10), (64,))
    stats = bitops.layer_stats(model)
    assert [s["macs"] for s in stats] == [64 * 32, 32 * 32, 32 * 10]
    assert [s["inputs"] for s in stats] == [64, 32, 32] and [s["outputs"] for s in stats] == [32, 32, 10]
    assert bitops.static_bitops(model, 4) == (64 * 32 + 32 * 32 + 32 * 10) * 16
    assert bitops.static_bitops(model, (8, 2)) == (64 * 32 + 32 * 32 + 32 * 10) * 16
    assert bitops.static_bitops(model, [8, 4, (2, 8)]) == 64 * 32 * 64 + 32 * 32 * 16 + 32 * 10 * 16
    cost = bitops.transition_cost(model)
    assert cost["weight_elements"] == 64 * 32 + 32 * 32 + 32 * 10
    assert cost["activation_elements"] == 64 + 32 + 32
    assert cost["dequant_requant_flops"] == 2 * cost["dqt_shifts"] == 2 * cost["elements"]
    with pytest.raises(ValueError, match="one width per layer"):
        bitops.static_bitops(model, [8, 8])


def test_conv_macs_are_weights_times_output_pixels():
    model = dq.DQTModel.from_float(models.simple_cnn(1, 10, 8, 8), (1, 8, 8))
    stats = bitops.layer_stats(model)
    # conv 1->8 3x3 on 8x8, conv 8->16 3x3 on 4x4, linear 16*2*2 -> 10
    assert [s["macs"] for s in stats] == [8 * 9 * 64, 16 * 8 * 9 * 16, 64 * 10]
    assert [s["inputs"] for s in stats] == [64, 8 * 16, 64]


def test_table_scales_with_bits_and_dynamic_lies_between_extremes():
    torch.manual_seed(0)
    model = dq.DQTModel.from_float(models.simple_cnn(1, 10, 8, 8), (1, 8, 8), candidate_bits=(2, 4, 8), dynamic=True)
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    rows = {r["mode"]: r for r in bitops.bitops_table(model, dynamic_input=x)}
    assert rows["uniform 8-bit"]["bitops"] == 4 * rows["uniform 4-bit"]["bitops"] == 16 * rows["uniform 2-bit"]["bitops"]
    dyn = rows["dynamic (mean over inputs)"]
    ctrl = dyn["controller_bitops"]
    assert rows["uniform 2-bit"]["bitops"] + ctrl <= dyn["min"] <= dyn["bitops"] <= dyn["max"]
    assert dyn["max"] <= rows["uniform 8-bit"]["bitops"] + ctrl
    assert model.training  # the table leaves the model's mode as it was


def test_width_switch_timing_measures_both_schemes():
    model = dq.DQTModel.from_float(models.mlp(64, 32, 10), (64,))
    timing = bitops.time_width_switch(model, repeats=3)
    assert timing["elements"] == bitops.transition_cost(model)["weight_elements"]
    assert timing["shift_seconds"] > 0 and timing["dequant_requant_seconds"] > 0
