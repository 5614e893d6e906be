"""Max and average pooling on codes (the step size passes through unchanged)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import ops
from .base import Capture, CodeValue, Step, StepKind, TrainPass
from .shape import FlattenKind

Tensor = torch.Tensor


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_counts(size: int, out: int) -> list[int]:
    return [((o + 1) * size + out - 1) // out - (o * size) // out for o in range(out)]


def adaptive_avg_pool_codes(q: Tensor, output_size) -> Tensor:
    """Integer adaptive average pool (docs/numerics.md section 6) on float codes, mean-pool gradients."""
    mean = F.adaptive_avg_pool2d(q, output_size)
    rows, cols = _window_counts(q.shape[2], output_size[0]), _window_counts(q.shape[3], output_size[1])
    count = torch.tensor(rows, dtype=torch.float64, device=q.device)[:, None] * \
        torch.tensor(cols, dtype=torch.float64, device=q.device)[None, :]
    sums = (F.adaptive_avg_pool2d(q.detach().double(), output_size) * count).round()
    exact = torch.floor((sums + torch.floor(count / 2)) / count).to(q.dtype)
    return mean + (exact - mean).detach()


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
        if m.return_indices:
            cap.reject(node, "return_indices is unsupported")
            return
        geo = {"kernel": pair(m.kernel_size), "stride": pair(m.stride or m.kernel_size),
               "padding": pair(m.padding), "dilation": pair(m.dilation), "ceil_mode": bool(m.ceil_mode)}
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry=geo), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        g = step.geometry
        return CodeValue(F.max_pool2d(q, g["kernel"], g["stride"], g["padding"], g["dilation"],
                                      ceil_mode=g.get("ceil_mode", False)), scale, signed)

    def run(self, step: Step, ins: list[Tensor], consts, ctx) -> Tensor:
        g = step.geometry
        return ops.int_max_pool2d(ins[0], tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"]),
                                  tuple(g["dilation"]), ceil_mode=g.get("ceil_mode", False))


def _spatial_mean_dims(node: fx.Node) -> bool:
    """x.mean((2, 3)) / x.mean([-2, -1]) / torch.mean(x, dim=...) without keepdim."""
    if not ((node.op == "call_method" and node.target == "mean") or
            (node.op == "call_function" and node.target is torch.mean)):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if isinstance(dims, int) or dims is None or keepdim:
        return False
    return sorted(int(d) % 4 for d in dims) == [2, 3]


class AvgPoolKind(StepKind):
    """AvgPool2d, AdaptiveAvgPool2d / F.adaptive_avg_pool2d to any size, and the spatial mean
    (`x.mean((2, 3))`: the global average pool, flattened)."""

    kind = "avgpool"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), (nn.AvgPool2d, nn.AdaptiveAvgPool2d)) or \
            (node.op == "call_function" and node.target is F.adaptive_avg_pool2d) or \
            (node.op in ("call_method", "call_function") and node.target in ("mean", torch.mean))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        flatten = False
        if isinstance(m, nn.AdaptiveAvgPool2d) or node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
            size = m.output_size if m is not None else (node.args[1] if len(node.args) > 1
                                                        else node.kwargs.get("output_size"))
            if size is None or (not isinstance(size, int) and None in tuple(size)):
                cap.reject(node, "output size None (keep the input size) is unsupported")
                return
            geo = {"global": True} if pair(size) == (1, 1) else {"adaptive": list(pair(size))}
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or not m.count_include_pad or m.divisor_override:
                cap.reject(node, "only floor mode with count_include_pad=True")
                return
            geo = {"kernel": pair(m.kernel_size), "stride": pair(m.stride or m.kernel_size), "padding": pair(m.padding)}
        elif _spatial_mean_dims(node):
            geo, flatten = {"global": True}, True
        else:
            cap.reject(node, "only the spatial mean over dims (2, 3) without keepdim, and the module forms of "
                             "average pooling")
            return
        src = cap.source(node, node.args[0])
        if src is None:
            return
        cap.emit(Step(self.kind, [src], geometry=geo), node)
        if flatten:
            cap.emit(Step(FlattenKind.kind, [len(cap.steps)]), node)

    @staticmethod
    def _window(step: dict, q: Tensor) -> tuple:
        g = step.geometry
        if g.get("global"):
            return tuple(q.shape[2:]), tuple(q.shape[2:]), (0, 0)
        return tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"])

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        if "adaptive" in step.geometry:
            return CodeValue(adaptive_avg_pool_codes(q, tuple(step.geometry["adaptive"])), scale, signed)
        return CodeValue(avg_pool_codes(q, *self._window(step, q)), scale, signed)

    def run(self, step: Step, ins: list[Tensor], consts, ctx) -> Tensor:
        if "adaptive" in step.geometry:
            return ops.int_adaptive_avg_pool2d(ins[0], tuple(step.geometry["adaptive"]))
        return ops.int_avg_pool2d(ins[0], *self._window(step, ins[0]))
