"""ReLU on its own (after an add or a pool; after a layer it is fused into the layer's epilogue)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import Build, Capture, CodeValue, Step, StepKind, TrainPass

_RELU_FUNCS = (F.relu, torch.relu)


def is_relu(node: fx.Node, cap: Capture) -> bool:
    if node.op == "call_module":
        return isinstance(cap.module(node), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def clamp_bound(node: fx.Node, cap: Capture) -> Optional[float]:
    """The upper bound of ReLU6 / Hardtanh(0, max) (a ReLU with a ceiling), else None."""
    m = cap.module(node)
    if isinstance(m, nn.ReLU6):
        return 6.0
    if isinstance(m, nn.Hardtanh) and m.min_val == 0 and m.max_val > 0:
        return float(m.max_val)
    if node.op == "call_function" and node.target is F.relu6:
        return 6.0
    if node.op == "call_function" and node.target is F.hardtanh:
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        if lo == 0 and isinstance(hi, (int, float)) and hi > 0:
            return float(hi)
    return None


class ReluKind(StepKind):
    kind = "relu"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return is_relu(node, cap)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src]), node)

    def build(self, step: Step, b: Build) -> bool:
        return False

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, _ = ins[0]
        return CodeValue(q.clamp_min(0), scale, False)

    def run(self, step: Step, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        return ins[0].clamp_min(0).to(torch.uint8)
