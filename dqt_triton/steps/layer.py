"""Conv2d / Linear, with the BatchNorm and ReLU after it fused: the quantized layers."""

from __future__ import annotations

import copy
import math
from typing import Optional, Union

import torch
from torch import fx, nn

from .. import numerics, ops
from ..nn import ActQuantizer, DQTConv2d, DQTLinear, IntegerConstants
from .activation import (  # the fused activations are the activation kind's rules
    clamp_bound,
    is_relu,
)
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, requantize
from .constants import DTYPE_NAMES, DTYPES, ConvGeometry, LayerProgram

Tensor = torch.Tensor


def layer_program(c: IntegerConstants, conv: Optional[Union[dict, ConvGeometry]],
                  clamp_max: Optional[int] = None) -> LayerProgram:
    """A layer's record in the integer program (`conv`: the convolution's geometry, None for a Linear)."""
    # Conv weights in channels_last: both backends read [Cout, KH, KW, C/g] without a copy.
    weight = c.weight.contiguous(memory_format=torch.channels_last) if conv else c.weight
    geometry = ConvGeometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in conv.items()}) \
        if isinstance(conv, dict) else conv
    return LayerProgram(weight, c.bias, c.multiplier, c.shift, c.out_scale, c.relu, DTYPE_NAMES[c.out_dtype],
                        geometry, clamp_max)


def prepared_layer(p: LayerProgram, x: Tensor, rule: str, cache: dict, key: str) -> ops.PreparedLayer:
    """The layer validated and placed on x's device once (`ops.prepare_layer`), then reused."""
    layer = cache.get(key)
    if layer is None or layer.x_dtype != x.dtype or layer.weight.device != x.device:
        kwargs = dict(bias=p.bias, relu=p.relu, shift_rule=rule, clamp_max=p.clamp_max)
        if p.multiplier is not None:
            kwargs.update(multiplier=p.multiplier, shift=p.shift, out_dtype=DTYPES[p.out_dtype])
        elif p.out_scale is not None:
            kwargs.update(out_scale=p.out_scale)
        conv = None if p.conv is None else p.conv._asdict()
        layer = ops.prepare_layer(p.weight, x_dtype=x.dtype, device=x.device, conv=conv, **kwargs)
        cache[key] = layer
    return layer


def token_rows(shift, batch: int, tokens: int):
    """A shift per sample ([B] tensor) as one per row of a Linear on token sequences ([B * T]);
    ints, and shifts already given per token ([B, T]), flattened as they are."""
    if not isinstance(shift, torch.Tensor):
        return shift
    return shift.reshape(-1) if shift.dim() == 2 else shift.repeat_interleave(tokens)


def run_layer(p: LayerProgram, x: Tensor, act_shift, weight_shift, rule: str, cache: dict, key: str) -> Tensor:
    """The integer layer on codes x at the given shifts (prepared once per device, see `prepared_layer`).
    A Linear on token sequences [B, T, K] runs on the B * T rows, each token with its sample's shifts."""
    if p.conv is None and x.dim() == 3:
        B, T, K = x.shape
        rows = x.reshape(B * T, K)
        out = ops.run_prepared(prepared_layer(p, rows, rule, cache, key), rows, token_rows(act_shift, B, T),
                               token_rows(weight_shift, B, T))
        return out.reshape(B, T, -1)
    return ops.run_prepared(prepared_layer(p, x, rule, cache, key), x, act_shift, weight_shift)


class LayerKind(StepKind):
    kind = "layer"
    program_key = "layers"
    constants_type = LayerProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), (nn.Conv2d, nn.Linear))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        layer = cap.module(node)
        last, bn, relu = node, None, False
        nxt = cap.single_user(last)
        if nxt is not None and isinstance(cap.module(nxt), nn.modules.batchnorm._BatchNorm):
            bn, last = cap.module(nxt), nxt
            cap.skipped.add(nxt)
            nxt = cap.single_user(last)
        geometry = {"final": False}
        if nxt is not None and (is_relu(nxt, cap) or clamp_bound(nxt, cap) is not None):
            relu, last = True, nxt
            cap.skipped.add(nxt)
            if clamp_bound(nxt, cap) is not None:
                geometry["clamp_max"] = clamp_bound(nxt, cap)  # ReLU6 / Hardtanh(0, max): a capped ReLU
        src = cap.source(node, node.args[0])
        name = f"layer{cap.layer_count}_{node.target.replace('.', '_')}"
        cap.layer_count += 1
        if src is not None:
            fused = {"layer": layer, "bn": bn}
            if cap.examples:  # one sample's shapes, for MACs and element counts
                fused["in_shape"], fused["out_shape"] = cap.shape(node.args[0])[1:], cap.shape(node)[1:]
            cap.emit(Step(self.kind, [src], name, relu, geometry, fused), last)
        else:
            cap.poisoned.add(last)

    def build(self, step: Step, b: Build) -> bool:
        float_layer, bn = step.fused["layer"], step.fused["bn"]
        bn_copy = copy.deepcopy(bn) if bn is not None else None
        cls = DQTConv2d if isinstance(float_layer, nn.Conv2d) else DQTLinear
        layer = cls.from_float(float_layer, bn_copy, step.relu, bn_per_width=b.bn_per_width)
        numerics.check_accumulator(layer.reduction_size(), b.signed[step.inputs[0]], 0, step.name)
        b.layers[step.name] = layer
        b.macs[step.name] = layer.macs_per_sample(step.fused["out_shape"])
        b.elements[step.name] = {"weights": layer.weight.numel(), "inputs": math.prod(step.fused["in_shape"]),
                                 "outputs": math.prod(step.fused["out_shape"])}
        if not step.geometry["final"]:
            b.quantizers[step.name] = ActQuantizer(signed=not step.relu)
        return not step.relu

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        name = step.name
        layer = tp.parts.layers[name]
        tokens = q.shape[1] if q.dim() == 3 and layer.conv is None else 0
        if tokens:  # a Linear on token sequences: its rows are the B * T tokens
            batch = q.shape[0]
            q = q.reshape(batch * tokens, q.shape[2])
        if name in tp.governed:
            i = tp.governed[name]
            k = numerics.MASTER_BITS - tp.widths[..., i]  # [B], or [B, T] with a width per token
            gates = tp.gates[..., i, :]
            if tokens:
                k = token_rows(k, batch, tokens)
                gates = gates.reshape(-1, gates.shape[-1]) if gates.dim() == 3 else gates.repeat_interleave(tokens, 0)
            where = f"layer {name} at the controller's widths"
            y = layer.forward_codes(q, scale, signed, k, k, tp.shift_rule, gates,
                                    tp.candidate_bits, where=f"layer {name}",
                                    gate_gradients=tp.gate_gradients)
        else:
            wb, ab = tp.fixed[name]
            where = f"layer {name} at {wb}-bit weights / {ab}-bit activations"
            y = layer.forward_codes(q, scale, signed, numerics.MASTER_BITS - ab,
                                    numerics.MASTER_BITS - wb, tp.shift_rule, where=f"layer {name}")
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(f"non-finite values (NaN/inf) in the output of {where}: training has "
                                     "diverged; lower the learning rate or clip gradients")
        error = None
        if tp.record is not None and name in tp.record:
            if layer.bn is not None or layer.width_bns is not None:  # a second call would move its statistics
                raise ValueError(f"layer {name} has a batch norm: gradient token costs need governed layers "
                                 "without one (use token_costs='position')")
            with torch.no_grad():  # the error this layer's widths add to its output, on the same input
                error = y - layer.forward_codes(q, scale, signed, 0, 0, tp.shift_rule, where=f"layer {name}")
        if tokens:
            y = y.reshape(batch, tokens, -1)
        if error is not None:
            tp.record[name] = (y, error.view(y.shape))
        if step.geometry.get("final"):
            return CodeValue(y, None, True)  # the logits, already real-valued
        if "clamp_max" in step.geometry:
            y = y.clamp_max(step.geometry["clamp_max"])  # rounding is monotone: the integer path caps the code
        return requantize(y, name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool],
                  parts: Parts) -> tuple[LayerProgram, float]:
        layer = parts.layers[step.name]
        final = step.geometry.get("final")
        out_scale = None if final else float(parts.quantizers[step.name].scale())
        clamp = None
        if "clamp_max" in step.geometry:
            clamp = min(255, math.floor(step.geometry["clamp_max"] / out_scale + 0.5))
        program = layer_program(layer.integer_constants(in_scales[0], in_signed[0], out_scale), layer.conv, clamp)
        return program, out_scale if out_scale is not None else float("nan")

    def run(self, step: Step, ins: list[Tensor], consts: LayerProgram, ctx) -> Tensor:
        act_shift, weight_shift = ctx.shifts(step.name)
        return run_layer(consts, ins[0], act_shift, weight_shift, ctx.rule, ctx.cache, step.name)
