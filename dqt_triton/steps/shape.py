"""Operations that move codes without computing: flatten, and the eval no-ops."""

from __future__ import annotations

import torch
from torch import fx, nn

from .base import Capture, CodeValue, Step, StepKind


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

    def train(self, step: dict, ins: list[CodeValue], tp) -> CodeValue:
        q, step_size, signed = ins[0]
        return CodeValue(q.flatten(1), step_size, signed)

    def run(self, step: dict, ins: list[torch.Tensor], consts, ctx) -> torch.Tensor:
        return ins[0].flatten(1)


class NoOpKind(StepKind):
    """Dropout and Identity: the eval computation is the input itself, so no step is recorded.
    `x.size()` calls only feed flattening views, which check them."""

    kind = "noop"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), (nn.Dropout, nn.Identity)) or \
            (node.op == "call_method" and node.target == "size")

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if node.op == "call_method":
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.alias(node, src)
