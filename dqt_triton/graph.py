"""Capture a float model as a DQT step list with torch.fx.

Supported: Conv2d / Linear (each optionally followed by BatchNorm and ReLU, which are fused),
residual additions (optionally followed by ReLU), ReLU, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d to 1x1, flatten (``torch.flatten``, ``nn.Flatten``, ``x.view(x.size(0), -1)``),
Dropout and Identity (no-ops in the integer model). Anything else raises
`UnsupportedLayerError` naming the operation.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import UnsupportedLayerError

_RELU_FUNCS = (F.relu, torch.relu)
_ADD_FUNCS = (operator.add, operator.iadd, torch.add)


@dataclass
class Step:
    """One operation of the integer program; `inputs` index earlier values (0 = network input)."""

    kind: str  # layer | add | relu | maxpool | avgpool | flatten
    inputs: list[int]
    name: str = ""  # layer/quantizer key
    relu: bool = False
    geometry: dict[str, Any] = field(default_factory=dict)
    fused: dict[str, Any] = field(default_factory=dict)  # layer: float modules (conv/linear, bn)

    def spec(self) -> dict:
        return {"kind": self.kind, "inputs": list(self.inputs), "name": self.name, "relu": self.relu,
                "geometry": dict(self.geometry)}


def _describe(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"module {node.target!r} ({type(modules[node.target]).__name__})"
    if node.op == "call_function":
        return f"function {getattr(node.target, '__name__', node.target)}"
    return f"{node.op} {node.target}"


def _is_relu(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _single_user(node: fx.Node):
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_flatten_view(node: fx.Node) -> bool:
    """x.view(x.size(0), -1) / x.reshape(x.size(0), -1) / x.view(-1, n) style flattening."""
    if node.op != "call_method" or node.target not in ("view", "reshape", "flatten"):
        return False
    if node.target == "flatten":
        return len(node.args) >= 2 and node.args[1] == 1 or node.kwargs.get("start_dim") == 1
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    return len(dims) == 2 and dims[1] == -1 and isinstance(dims[0], fx.Node) and dims[0].target == "size"


def capture(model: nn.Module) -> list[Step]:
    """The DQT steps of `model` (in topological order); raises UnsupportedLayerError."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedLayerError(f"torch.fx could not trace the model: {exc}") from exc
    modules = dict(gm.named_modules())
    value_of: dict[fx.Node, int] = {}
    steps: list[Step] = []
    skipped: set[fx.Node] = set()
    layer_count = 0

    def new_value(step: Step, node: fx.Node) -> None:
        steps.append(step)
        value_of[node] = len(steps)  # value 0 is the network input

    def source(node: fx.Node, arg) -> int:
        if not isinstance(arg, fx.Node) or arg not in value_of:
            raise UnsupportedLayerError(f"{_describe(node, modules)} takes an input the integer model cannot "
                                        f"represent ({arg!r})")
        return value_of[arg]

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(f"the model must take exactly one input tensor, got {len(placeholders)}")
    for node in gm.graph.nodes:
        if node in skipped:
            continue
        if node.op == "placeholder":
            value_of[node] = 0
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or out not in value_of:
                raise UnsupportedLayerError("the model output must be a single tensor produced by a Linear or Conv2d")
            final = value_of[out]
            if final == 0 or steps[final - 1].kind != "layer":
                raise UnsupportedLayerError(
                    f"the model must end in a Linear or Conv2d layer (the dequantizing logits), got "
                    f"{steps[final - 1].kind if final else 'its input'}")
            steps[final - 1].geometry["final"] = True
            if final != len(steps):
                raise UnsupportedLayerError("the logits layer must be the last operation of the model")
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            layer = modules[node.target]
            last, bn, relu = node, None, False
            nxt = _single_user(last)
            if nxt is not None and nxt.op == "call_module" and isinstance(modules[nxt.target], nn.modules.batchnorm._BatchNorm):
                bn, last = modules[nxt.target], nxt
                skipped.add(nxt)
                nxt = _single_user(last)
            if nxt is not None and _is_relu(nxt, modules):
                relu, last = True, nxt
                skipped.add(nxt)
            name = f"layer{layer_count}_{node.target.replace('.', '_')}"
            layer_count += 1
            new_value(Step("layer", [source(node, node.args[0])], name, relu, {"final": False},
                           {"layer": layer, "bn": bn}), last)
        elif node.op == "call_module" and isinstance(modules[node.target], (nn.Dropout, nn.Identity)):
            value_of[node] = source(node, node.args[0])
        elif _is_relu(node, modules):
            new_value(Step("relu", [source(node, node.args[0])]), node)
        elif node.op == "call_module" and isinstance(modules[node.target], nn.MaxPool2d):
            m = modules[node.target]
            if m.ceil_mode or m.return_indices:
                raise UnsupportedLayerError(f"{_describe(node, modules)}: ceil_mode and return_indices are unsupported")
            geo = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                   "padding": _pair(m.padding), "dilation": _pair(m.dilation)}
            new_value(Step("maxpool", [source(node, node.args[0])], geometry=geo), node)
        elif node.op == "call_module" and isinstance(modules[node.target], nn.AvgPool2d):
            m = modules[node.target]
            if m.ceil_mode or not m.count_include_pad or m.divisor_override:
                raise UnsupportedLayerError(f"{_describe(node, modules)}: only floor mode with count_include_pad=True")
            geo = {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size),
                   "padding": _pair(m.padding)}
            new_value(Step("avgpool", [source(node, node.args[0])], geometry=geo), node)
        elif node.op == "call_module" and isinstance(modules[node.target], nn.AdaptiveAvgPool2d):
            if _pair(modules[node.target].output_size) != (1, 1):
                raise UnsupportedLayerError(f"{_describe(node, modules)}: only output size 1x1 (global average)")
            new_value(Step("avgpool", [source(node, node.args[0])], geometry={"global": True}), node)
        elif (node.op == "call_module" and isinstance(modules[node.target], nn.Flatten)
              and modules[node.target].start_dim == 1 and modules[node.target].end_dim == -1) or \
                (node.op == "call_function" and node.target is torch.flatten
                 and (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1)) or _is_flatten_view(node):
            new_value(Step("flatten", [source(node, node.args[0])]), node)
        elif node.op == "call_method" and node.target == "size":
            continue  # only feeds a flattening view, checked there
        elif (node.op == "call_function" and node.target in _ADD_FUNCS) or \
                (node.op == "call_method" and node.target in ("add", "add_")):
            if len(node.args) != 2 or node.kwargs:
                raise UnsupportedLayerError(f"{_describe(node, modules)}: only a + b of two tensors is supported")
            inputs = [source(node, a) for a in node.args]
            last, relu = node, False
            nxt = _single_user(node)
            if nxt is not None and _is_relu(nxt, modules):
                relu, last = True, nxt
                skipped.add(nxt)
            new_value(Step("add", inputs, f"add{len(steps)}", relu), last)
        else:
            raise UnsupportedLayerError(f"unsupported operation in the model: {_describe(node, modules)}")
    return steps
