"""Element-wise steps: non-linearities as 256-entry lookup tables, and the product of two
values (squeeze-excitation gates)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import numerics, ops
from ..nn import ActQuantizer
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, on_device, requantize
from .constants import DTYPES, LutProgram, MulProgram

Tensor = torch.Tensor

_MODULES = {nn.SiLU: "silu", nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
            nn.Tanh: "tanh"}
_FUNCTIONS = {F.silu: "silu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.hardswish: "hardswish",
              F.hardsigmoid: "hardsigmoid", torch.tanh: "tanh", F.tanh: "tanh"}
_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}
# Functions whose outputs are never negative: their codes are uint8.
_NON_NEGATIVE = {"sigmoid", "hardsigmoid"}


def lut_function(node: fx.Node, cap: Capture):
    """The lookup-table name of an element-wise non-linearity node, None if it is not one, or
    an error string for a variant the tables do not cover."""
    m = cap.module(node)
    if m is not None:
        if isinstance(m, nn.GELU):
            return "gelu" if m.approximate == "none" else "gelu_tanh"
        return next((name for cls, name in _MODULES.items() if type(m) is cls), None)
    if node.op == "call_function":
        if node.target is F.gelu:
            return "gelu_tanh" if node.kwargs.get("approximate", "none") == "tanh" else "gelu"
        return _FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _METHODS.get(node.target)
    return None


class LutKind(StepKind):
    """SiLU, Sigmoid, Hardswish, Hardsigmoid, GELU, Tanh: output code = table[input code]
    (docs/numerics.md section 5), the table built from the input and output steps."""

    kind = "lut"
    program_key = "ops"
    constants_type = LutProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return lut_function(node, cap) is not None

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], f"lut{len(cap.steps)}", geometry={"function": lut_function(node, cap)}),
                     node)

    def build(self, step: Step, b: Build) -> bool:
        signed = step.geometry["function"] not in _NON_NEGATIVE
        b.quantizers[step.name] = ActQuantizer(signed=signed)
        return signed

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, _ = ins[0]
        y = numerics.LUT_FUNCTIONS[step.geometry["function"]](q * scale)
        return requantize(y, step.name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        quant = parts.quantizers[step.name]
        out_scale = float(quant.scale())
        table = numerics.lut_table(step.geometry["function"], in_scales[0], in_signed[0], out_scale, quant.signed)
        return LutProgram(table), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: dict, ctx) -> Tensor:
        return ops.int_lut(ins[0], on_device(consts.table, ins[0], ctx, f"{step.name}.table"))


_MUL_FUNCS = (operator.mul, operator.imul, torch.mul)


class MulKind(StepKind):
    """a * b of two values (a squeeze-excitation gate times its feature map; broadcasting
    as torch's), requantized to a learned step: `int_mul` with the paper's constants."""

    kind = "mul"
    program_key = "ops"
    constants_type = MulProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, _MUL_FUNCS, ("mul", "mul_"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, fx.Node) and not cap.is_static(a)
                                                         for a in node.args):
            cap.reject(node, "only the product of two tensors is supported (not a tensor times a number)")
            return
        inputs = [cap.source(node, a) for a in node.args]
        if None in inputs:
            return
        shape = cap.shape(node)
        geometry = {"shape": list(shape[1:])} if shape is not None else {}
        cap.emit(Step(self.kind, inputs, f"mul{len(cap.steps)}", geometry=geometry), node)

    def build(self, step: Step, b: Build) -> bool:
        signed = any(b.signed[i] for i in step.inputs)
        b.quantizers[step.name] = ActQuantizer(signed=signed)
        return signed

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        (qa, sa, _), (qb, sb, _) = ins
        return requantize((qa * sa) * (qb * sb), step.name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        quant = parts.quantizers[step.name]
        out_scale = float(quant.scale())
        c = numerics.mul_constants(in_scales[0], in_scales[1], out_scale)
        return MulProgram(c.k1, c.shift, "int8" if quant.signed else "uint8"), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: dict, ctx) -> Tensor:
        a, b = torch.broadcast_tensors(*ins)
        return ops.int_mul(a, b, k1=consts.k1, k2=0, k3=0, k4=0, shift=consts.shift, out_dtype=DTYPES[consts.out_dtype])
