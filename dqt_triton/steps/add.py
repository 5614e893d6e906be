"""Residual addition a + b (optionally followed by ReLU), requantized to a learned step."""

from __future__ import annotations

import operator

import torch
from torch import fx

from .. import numerics, ops
from ..nn import ActQuantizer
from .activation import is_relu
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, requantize
from .constants import AddProgram

_ADD_FUNCS = (operator.add, operator.iadd, torch.add)


class AddKind(StepKind):
    kind = "add"
    program_key = "adds"
    constants_type = AddProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, _ADD_FUNCS, ("add", "add_"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) for a in node.args):
            cap.reject(node, "only a + b of two tensors is supported")
            return
        inputs = [cap.source(node, a) for a in node.args]
        last, relu = node, False
        nxt = cap.single_user(node)
        if nxt is not None and is_relu(nxt, cap):
            relu, last = True, nxt
            cap.skipped.add(nxt)
        if None in inputs:
            cap.poisoned.add(last)
            return
        cap.emit(Step(self.kind, inputs, f"add{len(cap.steps)}", relu), last)

    def build(self, step: Step, b: Build) -> bool:
        b.quantizers[step.name] = ActQuantizer(signed=not step.relu)
        return not step.relu

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        (qa, step_a, _), (qb, step_b, _) = ins
        y = qa * step_a + qb * step_b
        if step.relu:
            y = torch.relu(y)
        return requantize(y, step.name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        out_scale = float(parts.quantizers[step.name].scale())
        c = numerics.add_constants(in_scales[0], in_scales[1], out_scale)
        return AddProgram(c.k1, c.k2, c.k3, c.shift, step.relu), out_scale

    def run(self, step: Step, ins: list[torch.Tensor], a: dict, ctx) -> torch.Tensor:
        return ops.int_add(ins[0], ins[1], k1=a.k1, k2=a.k2, k3=a.k3, shift=a.shift, relu=a.relu)
