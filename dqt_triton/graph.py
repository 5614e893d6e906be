"""Capture a float model as a DQT step list with torch.fx.

Each operation is recognised by the first step kind in `steps.CAPTURE_ORDER` that matches it
(see the README's supported-operations table). Capture walks the whole graph before it
raises: `UnsupportedLayerError` lists every operation the integer model cannot represent.
"""

from __future__ import annotations

from torch import fx, nn

from .errors import UnsupportedLayerError
from .steps import CAPTURE_ORDER, Capture, Step

__all__ = ["Step", "capture"]


def capture(model: nn.Module) -> list[Step]:
    """The DQT steps of `model` (in topological order); raises UnsupportedLayerError."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedLayerError(f"torch.fx could not trace the model: {exc}") from exc
    cap = Capture(dict(gm.named_modules()))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(f"the model must take exactly one input tensor, got {len(placeholders)}")
    output = None
    for node in gm.graph.nodes:
        if node in cap.skipped:
            continue
        if node.op == "placeholder":
            cap.alias(node, 0)
        elif node.op == "output":
            output = node
        else:
            kind = next((k for k in CAPTURE_ORDER if k.match(node, cap)), None)
            if kind is None:
                cap.reject(node)
            else:
                kind.capture(node, cap)
    if cap.unsupported:
        listed = "\n  ".join(cap.unsupported)
        raise UnsupportedLayerError(f"{len(cap.unsupported)} unsupported operation(s) in the model:\n  {listed}")
    _check_output(output, cap)
    return cap.steps


def _check_output(node: fx.Node, cap: Capture) -> None:
    """Mark the step that makes the logits: a Linear/Conv2d (its float epilogue dequantizes), or
    a dequantizing step appended after any other final value."""
    out = node.args[0]
    if not isinstance(out, fx.Node) or out not in cap.value_of:
        raise UnsupportedLayerError("the model output must be a single tensor computed from the input")
    final = cap.value_of[out]
    steps = cap.steps
    if not any(s.kind == "layer" for s in steps[:final]):
        raise UnsupportedLayerError("the model has no Linear or Conv2d layer before its output")
    if final != len(steps):
        raise UnsupportedLayerError("the model output must be its last operation")
    if steps[final - 1].kind == "layer" and "clamp_max" not in steps[final - 1].geometry:
        steps[final - 1].geometry["final"] = True
    else:
        steps.append(Step("dequant", [final], "logits", geometry={"final": True}))
