"""BitOPs accounting and width-transition cost for any `DQTModel` (trained or not).

Conventions (docs and tables use these):
- BitOPs of a conv/linear layer for one sample = MACs x weight bits x activation bits; the model
  total sums its conv/linear layers, plus products of two activations (attention) at 8 x 8 bits;
  residual adds, pooling, softmax, LayerNorm and requantization are not counted.
  In dynamic mode the controller is added at 8 x 8 bits.
- Transition cost of switching every layer's width: each weight element and each element of
  every layer's input activation (one sample) changes precision once. DQT derives the new code
  with one shift per element; a dequantize-requantize scheme needs two floating-point operations
  per element (multiply by the old scale, divide by the new one and round).
"""

from __future__ import annotations

import time
from typing import Optional, Sequence

import torch

from .model import DQTModel


def layer_stats(model: DQTModel) -> list[dict]:
    """Per conv/linear layer: MACs, weight elements, input and output activation elements (one sample)."""
    return [{"layer": name, "macs": model.arch.macs[name], **model.arch.elements[name]}
            for name in model.layer_names]


def static_bitops(model: DQTModel, bits) -> float:
    """BitOPs of one sample with static widths: an int, a (w, a) pair, or one entry per layer."""
    stats = layer_stats(model)
    if isinstance(bits, int):
        pairs = [(bits, bits)] * len(stats)
    elif isinstance(bits, tuple) and len(bits) == 2 and all(isinstance(b, int) for b in bits):
        pairs = [bits] * len(stats)
    else:
        pairs = [(b, b) if isinstance(b, int) else tuple(b) for b in bits]
    if len(pairs) != len(stats):
        raise ValueError(f"need one width per layer ({len(stats)}), got {len(pairs)}")
    return float(sum(s["macs"] * w * a for s, (w, a) in zip(stats, pairs)) + 64 * model.arch.product_macs)


def bitops_table(model: DQTModel, uniform: Sequence[int] = (8, 6, 4, 2), mixed: Optional[Sequence] = None,
                 dynamic_input: Optional[torch.Tensor] = None) -> list[dict]:
    """Rows of BitOPs per sample: uniform widths, a static mixed assignment (default: first and
    last layer at 8 bits, the rest at 4), and the dynamic mode's mean and spread on real inputs."""
    rows = [{"mode": f"uniform {b}-bit", "bitops": static_bitops(model, b)} for b in uniform]
    n = len(model.layer_names)
    label = "static mixed"
    if mixed is None:
        mixed = [8] + [4] * (n - 2) + [8] if n > 2 else [8] * n
        label = "static mixed (first/last 8, rest 4)"
    rows.append({"mode": label, "bitops": static_bitops(model, list(mixed))})
    if dynamic_input is not None and model.controller is not None:
        was_training, dynamic = model.training, model.dynamic
        model.eval()
        model.set_dynamic(True)
        with torch.no_grad():
            model(dynamic_input)
        per_sample = model.last_bitops.double()
        rows.append({"mode": "dynamic (mean over inputs)", "bitops": float(per_sample.mean()),
                     "min": float(per_sample.min()), "max": float(per_sample.max()),
                     "controller_bitops": float(model.controller.macs() * 64)})
        model.set_dynamic(dynamic)
        model.train(was_training)
    reference = static_bitops(model, 8)
    for r in rows:
        r["vs_uniform8"] = r["bitops"] / reference
    return rows


def transition_cost(model: DQTModel) -> dict:
    """Elements whose precision changes when every layer switches width (one sample), and the
    operations each scheme needs (see the module docstring)."""
    stats = layer_stats(model)
    weights = sum(s["weights"] for s in stats)
    activations = sum(s["inputs"] for s in stats)
    elements = weights + activations
    return {"weight_elements": weights, "activation_elements": activations, "elements": elements,
            "dqt_shifts": elements, "dequant_requant_flops": 2 * elements}


def timed_call(fn, device: str = "cpu") -> float:
    """Seconds one call of `fn` takes, waiting for queued CUDA work before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_width_switch(model: DQTModel, device: str = "cpu", repeats: int = 10, to_bits: int = 4) -> dict:
    """Median seconds to derive every layer's weights at `to_bits` from the 8-bit master codes:
    one shift per element (DQT) vs dequantize + requantize in floating point."""
    codes = [torch.randint(-128, 128, (s["weights"],), dtype=torch.int8, device=device) for s in layer_stats(model)]
    k = 8 - to_bits
    scale_old, scale_new = 0.01, 0.01 * 2**k
    lo, hi = -(2 ** (to_bits - 1)), 2 ** (to_bits - 1) - 1

    def shift():
        return [c >> k for c in codes]

    def dequant_requant():
        return [torch.clamp(torch.round(c.float() * scale_old / scale_new), lo, hi).to(torch.int8) for c in codes]

    def median(fn):
        fn()
        times = sorted(timed_call(fn, device) for _ in range(repeats))
        return times[len(times) // 2]

    t_shift, t_float = median(shift), median(dequant_requant)
    return {"device": device, "elements": sum(c.numel() for c in codes), "shift_seconds": t_shift,
            "dequant_requant_seconds": t_float, "speedup": t_float / t_shift}
