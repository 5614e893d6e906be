"""Residual addition a + b (optionally followed by ReLU), requantized to a learned step."""

from __future__ import annotations

import operator

import torch
from torch import fx

from .. import numerics, ops
from ..nn import ActQuantizer
from .activation import is_relu
from .base import Build, Capture, CodeValue, Step, StepKind, requantize

_ADD_FUNCS = (operator.add, operator.iadd, torch.add)


class AddKind(StepKind):
    kind = "add"
    program_key = "adds"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return (node.op == "call_function" and node.target in _ADD_FUNCS) or \
            (node.op == "call_method" and node.target in ("add", "add_"))

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

    def train(self, step: dict, ins: list[CodeValue], tp) -> CodeValue:
        (qa, step_a, _), (qb, step_b, _) = ins
        y = qa * step_a + qb * step_b
        if step["relu"]:
            y = torch.relu(y)
        return requantize(y, step["name"], tp)

    def constants(self, step: dict, in_steps: list[float], in_signed: list[bool], model) -> tuple[dict, float]:
        out_step = float(model.quantizers[step["name"]].positive_step())
        c = numerics.add_constants(in_steps[0], in_steps[1], out_step)
        return {"k1": c.k1, "k2": c.k2, "k3": c.k3, "shift": c.shift, "relu": step["relu"]}, out_step

    def run(self, step: dict, ins: list[torch.Tensor], a: dict, ctx) -> torch.Tensor:
        return ops.int_add(ins[0], ins[1], k1=a["k1"], k2=a["k2"], k3=a["k3"], shift=a["shift"], relu=a["relu"])
