"""Max and average pooling on codes (the step size passes through unchanged)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import ops
from .base import Capture, CodeValue, Step, StepKind

Tensor = torch.Tensor


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def avg_pool_codes(q: Tensor, kernel, stride, padding) -> Tensor:
    """Integer average pool floor((sum + c//2) / c) on float codes, mean-pool gradients."""
    count = kernel[0] * kernel[1]
    mean = F.avg_pool2d(q, kernel, stride, padding, count_include_pad=True)
    sums = F.avg_pool2d(q.detach().double(), kernel, stride, padding, count_include_pad=True, divisor_override=1)
    exact = torch.floor((sums + count // 2) / count).to(q.dtype)
    return mean + (exact - mean).detach()


class MaxPoolKind(StepKind):
    kind = "maxpool"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), nn.MaxPool2d)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        if m.ceil_mode or m.return_indices:
            cap.reject(node, "ceil_mode and return_indices are unsupported")
            return
        geo = {"kernel": pair(m.kernel_size), "stride": pair(m.stride or m.kernel_size),
               "padding": pair(m.padding), "dilation": pair(m.dilation)}
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry=geo), node)

    def train(self, step: dict, ins: list[CodeValue], tp) -> CodeValue:
        q, step_size, signed = ins[0]
        g = step["geometry"]
        return CodeValue(F.max_pool2d(q, g["kernel"], g["stride"], g["padding"], g["dilation"]), step_size, signed)

    def run(self, step: dict, ins: list[Tensor], consts, ctx) -> Tensor:
        g = step["geometry"]
        return ops.int_max_pool2d(ins[0], tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"]),
                                  tuple(g["dilation"]))


class AvgPoolKind(StepKind):
    kind = "avgpool"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), (nn.AvgPool2d, nn.AdaptiveAvgPool2d))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            if pair(m.output_size) != (1, 1):
                cap.reject(node, "only output size 1x1 (global average)")
                return
            geo = {"global": True}
        else:
            if m.ceil_mode or not m.count_include_pad or m.divisor_override:
                cap.reject(node, "only floor mode with count_include_pad=True")
                return
            geo = {"kernel": pair(m.kernel_size), "stride": pair(m.stride or m.kernel_size), "padding": pair(m.padding)}
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry=geo), node)

    @staticmethod
    def _window(step: dict, q: Tensor) -> tuple:
        g = step["geometry"]
        if g.get("global"):
            return tuple(q.shape[2:]), tuple(q.shape[2:]), (0, 0)
        return tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"])

    def train(self, step: dict, ins: list[CodeValue], tp) -> CodeValue:
        q, step_size, signed = ins[0]
        return CodeValue(avg_pool_codes(q, *self._window(step, q)), step_size, signed)

    def run(self, step: dict, ins: list[Tensor], consts, ctx) -> Tensor:
        return ops.int_avg_pool2d(ins[0], *self._window(step, ins[0]))
