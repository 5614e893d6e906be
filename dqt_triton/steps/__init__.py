"""Step kinds of the integer program, one class each (see `base.StepKind`).

`KINDS` maps a saved step's ``kind`` to its class; `CAPTURE_ORDER` is the order in which
`graph.capture` asks them to match a torch.fx node (the first match wins).
"""

from __future__ import annotations

from .activation import ReluKind
from .add import AddKind
from .affine import AffineKind
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass
from .concat import CatKind, DequantKind
from .layer import LayerKind
from .pointwise import LutKind, MulKind
from .pool import AvgPoolKind, MaxPoolKind
from .shape import FlattenKind, NoOpKind, PermuteKind, ReshapeKind, SliceKind, SplitKind
from .transformer import (
    AttentionKind,
    EmbeddingKind,
    ExpandKind,
    LayerNormKind,
    MatmulKind,
    ParamKind,
    ScaleKind,
    SoftmaxKind,
    TokenMeanKind,
)

CAPTURE_ORDER: list[StepKind] = [LayerKind(), NoOpKind(), ReluKind(), MaxPoolKind(), TokenMeanKind(), AvgPoolKind(),
                                 FlattenKind(), ReshapeKind(), PermuteKind(), SplitKind(), SliceKind(), AddKind(),
                                 CatKind(), LutKind(), ScaleKind(), MulKind(), AffineKind(), MatmulKind(),
                                 SoftmaxKind(), AttentionKind(), LayerNormKind(), EmbeddingKind(), ParamKind(),
                                 ExpandKind()]
# Kinds that leave no step of their own ("noop" aliases, "split" only records its pieces).
KINDS: dict[str, StepKind] = {k.kind: k for k in CAPTURE_ORDER + [DequantKind()] if k.kind not in ("noop", "split")}

__all__ = ["KINDS", "CAPTURE_ORDER", "Build", "Capture", "CodeValue", "Parts", "Step", "StepKind", "TrainPass"]
