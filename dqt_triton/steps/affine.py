"""A batch norm that follows no convolution (DenseNet's pre-activation BN -> ReLU -> conv):
a per-channel affine map on codes, run as a depthwise 1x1 integer convolution at 8 bits."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn

from .. import numerics
from ..nn import ActQuantizer, IntegerConstants
from .activation import is_relu
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, requantize
from .constants import ConvGeometry, LayerProgram
from .layer import layer_program, run_layer
from .transformer import extra_module

Tensor = torch.Tensor
# The largest |bias| in accumulator units the constants allow: far inside int32 next to a
# 255 x 127 product, and fine enough (2^20 units over the bias's range) to lose nothing.
_BIAS_UNITS = 1 << 20


def affine_constants(bn: nn.modules.batchnorm._BatchNorm, in_scale: float, out_scale: float, relu: bool) -> LayerProgram:
    """The depthwise 1x1 conv that computes bn(code * in_scale) / out_scale (docs/numerics.md 5):
    weight code w_c = round(a_c / e_c) with a per-channel step e_c, bias round(b_c / (in_scale e_c)),
    requantized by (in_scale e_c) / out_scale."""
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_mean, dtype=torch.float64)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    a = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    b = beta - bn.running_mean.double() * a
    if not bool(torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("batch-norm statistics are not finite (training diverged?); cannot build integer constants")
    # e_c: a_c at full int8 resolution, or coarser when the bias would not fit its units.
    e = torch.maximum(a.abs() / 127, b.abs() / (in_scale * _BIAS_UNITS)).clamp_min(1e-30)
    weight = torch.round(a / e).clamp(-127, 127).to(torch.int8).view(-1, 1, 1, 1)
    bias = torch.round(b / (in_scale * e)).to(torch.int32)
    pairs = [numerics.quantize_multiplier(float(r)) for r in (in_scale * e / out_scale).tolist()]
    c = len(pairs)
    constants = IntegerConstants(weight, bias, torch.tensor([m for m, _ in pairs], dtype=torch.int32, device=a.device),
                                 torch.tensor([s for _, s in pairs], dtype=torch.int32, device=a.device), None, relu,
                                 torch.uint8 if relu else torch.int8)
    return layer_program(constants, ConvGeometry((1, 1), (0, 0), (1, 1), c))


class AffineKind(StepKind):
    """BatchNorm2d on a value no convolution produced, optionally followed by ReLU."""

    kind = "affine"
    program_key = "ops"
    constants_type = LayerProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), nn.BatchNorm2d)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        last, relu = node, False
        nxt = cap.single_user(node)
        if nxt is not None and is_relu(nxt, cap):
            relu, last = True, nxt
            cap.skipped.add(nxt)
        src = cap.source(node, node.args[0])
        if src is None:
            cap.poisoned.add(last)
            return
        cap.emit(Step(self.kind, [src], f"affine{len(cap.steps)}", relu, fused={"bn": cap.module(node)}), last)

    def build(self, step: Step, b: Build) -> bool:
        bn = step.fused["bn"]
        b.extras[step.name] = copy.deepcopy(bn)
        b.extra_specs[step.name] = {"type": "batchnorm2d", "channels": bn.num_features, "eps": bn.eps,
                                    "momentum": bn.momentum, "affine": bn.affine}
        b.quantizers[step.name] = ActQuantizer(signed=not step.relu)
        return not step.relu

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, _ = ins[0]
        y = tp.parts.extras[step.name](q * scale)
        if step.relu:
            y = torch.relu(y)
        return requantize(y, step.name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        out_scale = float(parts.quantizers[step.name].scale())
        return affine_constants(parts.extras[step.name], in_scales[0], out_scale, step.relu), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: dict, ctx) -> Tensor:
        return run_layer(consts, ins[0], 0, 0, ctx.rule, ctx.cache, step.name)


def extra_from_spec(spec: dict) -> nn.Module:
    """Rebuild a step's extra module (a checkpoint's `extra_specs` entry)."""
    module = extra_module(spec)
    if module is not None:
        return module
    if spec.get("type") != "batchnorm2d":
        raise ValueError(f"unknown extra module type {spec.get('type')!r}")
    return nn.BatchNorm2d(spec["channels"], eps=spec["eps"], momentum=spec["momentum"], affine=spec["affine"])
