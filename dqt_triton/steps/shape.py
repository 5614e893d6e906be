"""Operations that move codes without computing: flatten, and the eval no-ops."""

from __future__ import annotations

import torch
from torch import fx, nn

from .base import Capture, CodeValue, Step, StepKind, TrainPass


def _is_flatten_view(node: fx.Node) -> bool:
    """x.view(x.size(0), -1) / x.reshape(x.size(0), -1) / x.flatten(1) style flattening."""
    if node.op != "call_method" or node.target not in ("view", "reshape", "flatten"):
        return False
    if node.target == "flatten":
        return len(node.args) >= 2 and node.args[1] == 1 or node.kwargs.get("start_dim") == 1
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return len(dims) == 2 and dims[1] == -1 and isinstance(dims[0], fx.Node) and dims[0].target == "size"


class FlattenKind(StepKind):
    kind = "flatten"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        m = cap.module(node)
        if isinstance(m, nn.Flatten):
            return m.start_dim == 1 and m.end_dim == -1
        if node.op == "call_function" and node.target is torch.flatten:
            return node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1
        return _is_flatten_view(node)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src]), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        return CodeValue(q.flatten(1), scale, signed)

    def run(self, step: Step, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        return ins[0].flatten(1)


class NoOpKind(StepKind):
    """Dropout, Identity, `.contiguous()` and torchvision's stochastic depth: the eval
    computation is the input itself, so no step is recorded. Size arithmetic (`x.size()`,
    `c // 2`) computes no codes either: the steps that use sizes record shapes instead.

    Stochastic depth and Dropout are also skipped on the training path: DQT training does not
    drop branches (a deliberate simplification; the eval network is the same)."""

    kind = "noop"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), (nn.Dropout, nn.Identity)) or cap.is_static(node) or \
            (node.op == "call_method" and node.target in ("size", "contiguous")) or \
            (node.op == "call_function" and getattr(node.target, "__name__", "") in ("stochastic_depth", "dropout"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if cap.is_static(node) or (node.op == "call_method" and node.target == "size"):
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.alias(node, src)


def _batch_kept(cap: Capture, node: fx.Node) -> bool:
    src, out = cap.shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None, cap.shape(node)
    return src is not None and out is not None and out[0] == src[0] == 2


class ReshapeKind(StepKind):
    """view / reshape to a per-sample shape recorded at capture (the batch axis stays first):
    the views of a channel shuffle. Codes and step size pass through."""

    kind = "reshape"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, (torch.reshape, torch.flatten), ("view", "reshape", "flatten"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if not cap.examples:
            cap.reject(node, "a reshape needs the model's input shape to be resolved")
            return
        if not _batch_kept(cap, node):
            cap.reject(node, "only reshapes that keep the batch axis first are supported")
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry={"shape": list(cap.shape(node)[1:])}), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        return CodeValue(q.reshape(q.shape[0], *step.geometry["shape"]), scale, signed)

    def run(self, step: Step, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        return ins[0].reshape(ins[0].shape[0], *step.geometry["shape"])


class PermuteKind(StepKind):
    """transpose / permute of the non-batch axes."""

    kind = "permute"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, (torch.transpose, torch.permute), ("transpose", "permute"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src_shape = cap.shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if src_shape is None:
            cap.reject(node, "a transpose needs the model's input shape to be resolved")
            return
        rank = len(src_shape)
        args = list(node.args[1:])
        if node.target in ("permute", torch.permute):
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            order = [int(d) % rank for d in dims]
        else:
            d0, d1 = (int(d) % rank for d in args[:2])
            order = list(range(rank))
            order[d0], order[d1] = order[d1], order[d0]
        if order[0] != 0 or sorted(order) != list(range(rank)):
            cap.reject(node, "only permutations that keep the batch axis first are supported")
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry={"dims": order}), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        return CodeValue(q.permute(*step.geometry["dims"]), scale, signed)

    def run(self, step: Step, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        return ins[0].permute(*step.geometry["dims"])


class SplitKind(StepKind):
    """chunk / split along a non-batch axis: records the pieces; each `getitem` on the result
    becomes a slice step."""

    kind = "split"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, (torch.chunk, torch.split), ("chunk", "split"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        kind, shapes = cap.examples.get(node, (None, None))
        src_shape = cap.shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        if kind != "tensors" or src_shape is None:
            cap.reject(node, "a chunk/split needs the model's input shape to be resolved")
            return
        dim = int(dim) % len(src_shape)
        if dim == 0:
            cap.reject(node, "splitting the batch axis is unsupported")
            return
        src = cap.source(node, node.args[0])
        if src is None:
            return
        bounds, start = [], 0
        for shape in shapes:
            bounds.append((start, start + shape[dim]))
            start += shape[dim]
        cap.pieces[node] = (src, dim, bounds)


class SliceKind(StepKind):
    """One piece of a chunk/split: `narrow` along its axis."""

    kind = "slice"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return node.op == "call_function" and getattr(node.target, "__name__", "") == "getitem" and \
            isinstance(node.args[0], fx.Node) and node.args[0] in cap.pieces

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src, dim, bounds = cap.pieces[node.args[0]]
        start, stop = bounds[int(node.args[1])]
        cap.emit(Step(self.kind, [src], geometry={"dim": dim, "start": start, "stop": stop}), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        g = step.geometry
        return CodeValue(q.narrow(g["dim"], g["start"], g["stop"] - g["start"]), scale, signed)

    def run(self, step: Step, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        g = step.geometry
        return ins[0].narrow(g["dim"], g["start"], g["stop"] - g["start"])
