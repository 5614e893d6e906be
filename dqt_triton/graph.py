"""Capture a float model as a DQT step list with torch.fx.

Each operation is recognised by the first step kind in `steps.CAPTURE_ORDER` that matches it
(see docs/conversion.md). Capture walks the whole graph before it
raises: `UnsupportedLayerError` lists every operation the integer model cannot represent.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

import torch
from torch import fx, nn

from .errors import UnsupportedLayerError
from .steps import CAPTURE_ORDER, Capture, Step

__all__ = ["Step", "capture"]


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once and keeps, per node, the shape of a tensor result, a list of
    shapes for a tuple of tensors, or the value itself (sizes, ints) otherwise."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.examples: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.examples[n] = ("tensor", tuple(result.shape))
        elif isinstance(result, (tuple, list)) and result and all(isinstance(r, torch.Tensor) for r in result):
            self.examples[n] = ("tensors", [tuple(r.shape) for r in result])
        elif isinstance(result, (tuple, list)) and any(isinstance(r, torch.Tensor) for r in result):
            self.examples[n] = ("mixed", None)  # (output, None) of nn.MultiheadAttention: tensors, not sizes
        else:
            self.examples[n] = ("static", result)
        return result


def _input_dtype(gm: fx.GraphModule) -> torch.dtype:
    """Token ids (long) for a model whose input feeds an nn.Embedding, else float."""
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if any(u.op == "call_module" and isinstance(modules[u.target], nn.Embedding) for u in node.users):
                return torch.long
    return torch.float32


def _examples(gm: fx.GraphModule, input_shape: Sequence[int]) -> dict[fx.Node, Any]:
    """Per-node example results of the float model on a batch of 2 (eval mode, no gradients):
    the shapes that shape-moving steps (view, transpose, chunk) record."""
    recorder = _ShapeRecorder(gm)
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            recorder.run(torch.zeros(2, *input_shape, dtype=_input_dtype(gm)))
    except Exception as exc:
        raise ValueError(f"the float model does not accept input_shape {tuple(input_shape)}: {exc}") from exc
    finally:
        gm.train(was_training)
    return recorder.examples


def capture(model: nn.Module, input_shape: Optional[Sequence[int]] = None) -> list[Step]:
    """The DQT steps of `model` (in topological order); raises UnsupportedLayerError.

    With `input_shape` (one sample's), the graph is also run once on a batch of 2 so that
    size arithmetic and reshapes (a channel shuffle, a chunk) are resolved to shapes.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # data-dependent control flow and the like
        raise UnsupportedLayerError(f"torch.fx could not trace the model: {exc}") from exc
    cap = Capture(dict(gm.named_modules()))
    if input_shape is not None:
        cap.examples = _examples(gm, input_shape)
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
                cap.reject(node, _why_unsupported(node, cap))
            else:
                kind.capture(node, cap)
    if cap.unsupported:
        counts = Counter(cap.unsupported_kinds)
        summary = ", ".join(f"{op} x{n}" for op, n in counts.most_common())
        listed = "\n  ".join(cap.unsupported)
        raise UnsupportedLayerError(f"{len(cap.unsupported)} unsupported operation(s) in the model ({summary}):"
                                    f"\n  {listed}")
    _check_output(output, cap)
    return cap.steps


_SHAPE_KINDS = ("permute", "reshape", "flatten")


def _why_unsupported(node: fx.Node, cap: Capture) -> str:
    """What a user can do about a common operation the integer model lacks ("" if nothing to add)."""
    module = cap.module(node)
    if isinstance(module, nn.MultiheadAttention):
        return ("its packed in-projection and fused attention are one module the integer model cannot split; "
                "write attention with nn.Linear and F.scaled_dot_product_attention (dqt_triton.transformers.Block)")
    name = getattr(node.target, "__name__", str(node.target))
    if name == "getitem":
        return ("indexing a tensor (such as the class token x[:, 0], or one output of a module returning a tuple) "
                "is unsupported; pool tokens with x.mean(1)")
    if name in ("masked_fill", "masked_fill_", "where"):
        return "masks are supported as F.scaled_dot_product_attention(..., is_causal=True)"
    return ""


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
    last = final
    while steps[last - 1].kind in _SHAPE_KINDS and steps[last - 1].inputs[0] == last - 1:
        last -= 1  # logits moved by a transpose or reshape ([B, T, V] -> [B, V, T]): they move as floats
    if steps[last - 1].kind == "layer" and "clamp_max" not in steps[last - 1].geometry:
        steps[last - 1].geometry["final"] = True
    else:
        steps.append(Step("dequant", [final], "logits", geometry={"final": True}))
