"""Step kinds of the integer program, one class each (see `base.StepKind`).

`KINDS` maps a saved step's ``kind`` to its class; `CAPTURE_ORDER` is the order in which
`graph.capture` asks them to match a torch.fx node (the first match wins).
"""

from __future__ import annotations

from .activation import ReluKind
from .add import AddKind
from .concat import CatKind, DequantKind
from .base import Build, Capture, CodeValue, Step, StepKind
from .layer import LayerKind
from .pool import AvgPoolKind, MaxPoolKind
from .shape import FlattenKind, NoOpKind

CAPTURE_ORDER: list[StepKind] = [LayerKind(), NoOpKind(), ReluKind(), MaxPoolKind(), AvgPoolKind(), FlattenKind(),
                                 AddKind(), CatKind()]
KINDS: dict[str, StepKind] = {k.kind: k for k in CAPTURE_ORDER + [DequantKind()] if k.kind != "noop"}

__all__ = ["KINDS", "CAPTURE_ORDER", "Build", "Capture", "CodeValue", "Step", "StepKind"]
