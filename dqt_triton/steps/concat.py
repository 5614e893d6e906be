"""Concatenation along channels, each operand requantized to the output's learned step."""

from __future__ import annotations

import torch
from torch import fx

from .. import numerics, ops
from ..nn import ActQuantizer
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, requantize
from .constants import DTYPES, ConcatProgram, DequantProgram

Tensor = torch.Tensor


class CatKind(StepKind):
    kind = "cat"
    program_key = "ops"
    constants_type = ConcatProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return node.op == "call_function" and node.target is torch.cat

    def capture(self, node: fx.Node, cap: Capture) -> None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not tensors:
            cap.reject(node, "takes no list of tensors")
            return
        if dim not in (1, -3):  # -3 is the channel axis of 4-D codes; a 2-D [B, F] value has no -3
            cap.reject(node, f"only concatenation along channels (dim=1) is supported, got dim={dim}")
            return
        inputs = [cap.source(node, t) for t in tensors]
        if None in inputs:
            return
        cap.emit(Step(self.kind, inputs, f"cat{len(cap.steps)}"), node)

    def build(self, step: Step, b: Build) -> bool:
        signed = any(b.signed[i] for i in step.inputs)
        b.quantizers[step.name] = ActQuantizer(signed=signed)
        return signed

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        y = torch.cat([v.q * v.scale for v in ins], dim=1)
        return requantize(y, step.name, tp)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        quant = parts.quantizers[step.name]
        out_scale = float(quant.scale())
        operands = []
        for s in in_scales:
            c = numerics.rescale_constants(s, out_scale)
            operands.append({"k1": c.k1, "shift": c.shift})
        return ConcatProgram(operands, "int8" if quant.signed else "uint8"), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: dict, ctx) -> Tensor:
        out_dtype = DTYPES[consts.out_dtype]
        parts = [ops.int_add(x, x, k1=c["k1"], k2=0, k3=0, shift=c["shift"], out_dtype=out_dtype)
                 for x, c in zip(ins, consts.operands)]
        return torch.cat(parts, dim=1)


class DequantKind(StepKind):
    """The network's output when it is not a Conv2d/Linear (e.g. SqueezeNet's pooled class
    maps): its codes times their step, float32 logits. `graph.capture` appends it; it matches
    no node."""

    kind = "dequant"
    program_key = "ops"
    constants_type = DequantProgram

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        return CodeValue(ins[0].q * ins[0].scale, None, True)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts) -> tuple[dict, float]:
        return DequantProgram(in_scales[0]), float("nan")

    def run(self, step: Step, ins: list[Tensor], consts: dict, ctx) -> Tensor:
        # Codes are exact in float32; one float32 multiply, as the float epilogue's.
        return ins[0].to(torch.float32) * torch.tensor(consts.scale, dtype=torch.float32)
