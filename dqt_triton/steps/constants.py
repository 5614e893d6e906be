"""Typed integer constants of the step kinds (the program's records below the top level).

Each step kind names its record (`StepKind.constants_type`); `to_dict` / `from_dict`
translate to the checkpoint format's dicts (files written before the records load unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

Tensor = torch.Tensor
DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32, "float32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


class ConvGeometry(NamedTuple):
    """A convolution's geometry (pairs as tuples; `groups` an int)."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def to_dict(self) -> dict:
        return {"stride": list(self.stride), "padding": list(self.padding), "dilation": list(self.dilation),
                "groups": self.groups}

    @classmethod
    def from_dict(cls, d: dict) -> "ConvGeometry":
        return cls(tuple(d["stride"]), tuple(d["padding"]), tuple(d["dilation"]), int(d["groups"]))


@dataclass
class Constants:
    """Base of a step kind's integer constants: a flat record of tensors and plain values."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Constants":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class LayerProgram(Constants):
    """A Conv2d/Linear layer (batch norm folded): int8 weight codes and its epilogue, docs/numerics.md 3.5.
    Requantizing layers have `multiplier` and `shift`; the final, dequantizing one `out_scale`."""

    weight: Tensor
    bias: Tensor
    multiplier: Optional[Tensor]
    shift: Optional[Tensor]
    out_scale: Optional[Tensor]
    relu: bool
    out_dtype: str
    conv: Optional[ConvGeometry] = None
    clamp_max: Optional[int] = None  # a capped ReLU's largest output code (ReLU6)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["conv"] = None if self.conv is None else self.conv.to_dict()
        if self.clamp_max is None:
            del d["clamp_max"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerProgram":
        conv = None if d["conv"] is None else ConvGeometry.from_dict(d["conv"])
        return cls(d["weight"], d["bias"], d["multiplier"], d["shift"], d["out_scale"], d["relu"], d["out_dtype"],
                   conv, d.get("clamp_max"))


@dataclass
class AddProgram(Constants):
    """`int_add` constants of a residual add (docs/numerics.md 4)."""

    k1: int
    k2: int
    k3: int
    shift: int
    relu: bool


@dataclass
class LutProgram(Constants):
    """A 256-entry output-code table indexed by the input code (`int_lut`)."""

    table: Tensor


@dataclass
class MulProgram(Constants):
    """`int_mul` constants of a product of two values."""

    k1: int
    shift: int
    out_dtype: str


@dataclass
class ConcatProgram(Constants):
    """Each operand's rescale (k1, shift) to the concatenation's output step."""

    operands: list[dict]
    out_dtype: str


@dataclass
class DequantProgram(Constants):
    """The real value of one output code (the logits of a network ending in pooling)."""

    scale: float


@dataclass
class ProductProgram(Constants):
    """`int_bmm` of two values (docs/numerics.md 10.1): requantization (multiplier, shift) of
    D_a D_b c / D_y, and which axis of the right operand holds its tokens."""

    multiplier: int
    shift: int
    out_dtype: str
    b_token_axis: int


@dataclass
class SoftmaxProgram(Constants):
    """`int_softmax`'s exp table (10.2) of the score step."""

    table: Tensor
    causal: bool


@dataclass
class LayerNormProgram(Constants):
    """`int_layernorm`'s folded constants (10.3)."""

    mult: Tensor
    offset: Tensor
    shift: int
    eps_units: int
    out_dtype: str


@dataclass
class AttentionProgram(Constants):
    """F.scaled_dot_product_attention as products and softmax: scores, their softmax, the
    weighted sum of the values."""

    scores: ProductProgram
    softmax: SoftmaxProgram
    output: ProductProgram

    def to_dict(self) -> dict:
        return {"scores": self.scores.to_dict(), "softmax": self.softmax.to_dict(), "output": self.output.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "AttentionProgram":
        return cls(ProductProgram.from_dict(d["scores"]), SoftmaxProgram.from_dict(d["softmax"]),
                   ProductProgram.from_dict(d["output"]))


@dataclass
class TableProgram(Constants):
    """int8 codes of a learned table: token embeddings [V, D] (`int_embedding`), or a constant
    such as position embeddings, broadcast over the batch."""

    codes: Tensor
