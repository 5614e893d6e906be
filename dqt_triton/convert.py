"""Conversion of a float model: graph capture into steps, their trainable parts, the controller.

`ConvertConfig` holds the quantization options (written once: `DQTModel.from_float`,
`TrainConfig` and the CLI take them from here); `Architecture` is what conversion decides about
the model and what its checkpoint stores (the ``config`` entry) to rebuild it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

from torch import nn

from . import numerics
from .controller import GRANULARITIES, Controller, feature_count
from .graph import capture
from .nn import ActQuantizer, layer_from_spec, layer_spec
from .steps import KINDS, Build, Parts, Step
from .steps.affine import extra_from_spec


def option(default, help: str, **cli):
    """A config field with its help text and CLI details (`cli.add_config_options`)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a sequence default")
    return field(default=default, metadata={"help": help, **cli})


def check_bits(candidate_bits: Sequence[int]) -> tuple[int, ...]:
    """Distinct widths in [2, 8], sorted."""
    bits = tuple(int(b) for b in candidate_bits)
    if not bits or len(set(bits)) != len(bits) or any(not 2 <= b <= numerics.MASTER_BITS for b in bits):
        raise ValueError(f"candidate bit-widths must be distinct integers in [2, {numerics.MASTER_BITS}], "
                         f"got {candidate_bits!r}")
    return tuple(sorted(bits))


@dataclass
class ConvertConfig:
    """How a float model is quantized (`DQTModel.from_float`)."""

    candidate_bits: tuple = option((2, 3, 4, 5, 6, 7, 8), "candidate widths", flag="--bits", metavar="BITS")
    shift_rule: str = option("round", "how a code loses bits: round or floor (the paper's); training and "
                             "inference share it", choices=numerics.SHIFT_RULES)
    edge_bits: Optional[int] = option(8, "width of the first and last layers (0 or None: the controller "
                                      "governs them too)")
    bn_per_width: bool = option(True, "one batch norm per width (switchable), folded per width",
                                negative_flag=("--shared-bn", "one batch norm shared by every width"))
    controller_granularity: str = option("layer", "controller picks a width per governed layer ('layer'), "
                                         "one per sample ('sample'), one per governed layer for each token "
                                         "of a transformer ('token'), or one per token for every governed layer "
                                         "('token-shared')", flag="--controller", choices=GRANULARITIES)
    controller_hidden: Optional[int] = option(None, "hidden units of the controller (unset: enough for a "
                                              "controller with about 1%% of the backbone's parameters)",
                                              metavar="UNITS")

    def __post_init__(self) -> None:
        numerics.check_shift_rule(self.shift_rule)
        self.candidate_bits = check_bits(self.candidate_bits)
        if self.controller_granularity not in GRANULARITIES:
            raise ValueError(f"controller_granularity must be one of {GRANULARITIES}, "
                             f"got {self.controller_granularity!r}")
        if self.controller_hidden is not None and not (isinstance(self.controller_hidden, int)
                                                       and self.controller_hidden > 0):
            raise ValueError(f"controller_hidden must be None or a positive int, got {self.controller_hidden!r}")
        if self.edge_bits == 0:
            self.edge_bits = None
        if self.edge_bits is not None and not (isinstance(self.edge_bits, int) and
                                               2 <= self.edge_bits <= numerics.MASTER_BITS):
            raise ValueError(f"edge_bits must be None or an int in [2, {numerics.MASTER_BITS}], got {self.edge_bits!r}")


def config_of(cls, source, **overrides):
    """An instance of config class `cls` with the fields of `source` (any object or dataclass
    carrying them, e.g. a TrainConfig) and then `overrides`; an unknown override is an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"unknown {cls.__name__} option(s) {sorted(unknown)}; known: {sorted(names)}")
    values = {} if source is None else {n: getattr(source, n) for n in names if hasattr(source, n)}
    return cls(**{**values, **overrides})


@dataclass
class Architecture:
    """What conversion decided: shapes, layers, widths, the controller's place (the checkpoint's
    ``config``; `to_dict` / `from_dict` keep its keys)."""

    input_shape: list[int]
    input_scale: float
    input_dtype: str  # "uint8" or "int8"
    candidate_bits: list[int]
    shift_rule: str
    dynamic: bool  # built in dynamic mode
    macs: dict[str, int]  # per layer, one sample
    elements: dict[str, dict]  # per layer: weights, inputs, outputs
    controller: Optional[dict]  # Controller.spec()
    layer_specs: dict[str, dict]  # nn.layer_spec per layer
    quantizer_signed: dict[str, bool]
    value_signed: list[bool]  # per value (0 = the input)
    edge_bits: Optional[int]
    governed: list[str]
    controller_source: int  # value index the controller reads
    extra_specs: dict[str, dict] = field(default_factory=dict)
    product_macs: int = 0  # one sample's MACs of products of two activations (attention), at 8 x 8 bits

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Architecture":
        optional = {"extra_specs": {}, "product_macs": 0}  # absent from files written before them
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: d[n] for n in names if n not in optional}, **{n: d.get(n, v) for n, v in optional.items()})

    def rebuild(self) -> tuple[Parts, Optional[Controller]]:
        """Untrained modules of this architecture (a checkpoint's state dict fills them)."""
        parts = Parts(nn.ModuleDict({n: layer_from_spec(s) for n, s in self.layer_specs.items()}),
                      nn.ModuleDict({n: ActQuantizer(signed) for n, signed in self.quantizer_signed.items()}),
                      nn.ModuleDict({n: extra_from_spec(s) for n, s in self.extra_specs.items()}))
        controller = None
        if self.controller is not None:
            controller = Controller.from_spec(self.controller, self.candidate_bits, len(self.governed))
        return parts, controller


class Converted(NamedTuple):
    """A converted model's pieces (`DQTModel` assembles them)."""

    steps: list[Step]
    parts: Parts
    controller: Optional[Controller]
    arch: Architecture


def check_finite_float_model(model: nn.Module, input_scale) -> None:
    """Refuse NaN/inf at the boundary, where the cause is still visible."""
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) or not math.isfinite(input_scale) \
            or input_scale <= 0:
        raise ValueError(f"input_scale must be a finite positive number (the real value of one input code), "
                         f"got {input_scale!r}")
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not bool(t.isfinite().all()):
                bad = int((~t.isfinite()).sum())
                raise ValueError(f"the float model's {kind} {name!r} has {bad} non-finite value(s) (NaN or inf); "
                                 "a diverged or damaged float model cannot be converted")


def convert(model: nn.Module, input_shape: Sequence[int], config: ConvertConfig, *, dynamic: bool,
            input_scale: float, input_signed: bool) -> Converted:
    """Capture `model` and build the trainable parts of every step (see `DQTModel.from_float`)."""
    check_finite_float_model(model, input_scale)
    input_shape = tuple(int(s) for s in input_shape)
    cands = config.candidate_bits
    captured = capture(model, input_shape)
    build = Build(config.bn_per_width, nn.ModuleDict(), nn.ModuleDict(), signed=[input_signed])
    for step in captured:
        build.signed.append(KINDS[step.kind].build(step, build))
    names = [s.name for s in captured if s.kind == "layer"]
    edge_bits = config.edge_bits
    edges = {names[0], names[-1]} if edge_bits is not None else set()
    governed = [n for n in names if n not in edges]
    # DQNet-style early features: the first layer's output when it is not governed.
    first_step = next(i for i, s in enumerate(captured) if s.kind == "layer")
    source = first_step + 1 if edge_bits is not None and len(names) > 1 else 0
    feature_shape = captured[first_step].fused["out_shape"] if source else input_shape
    per_token = config.controller_granularity.startswith("token")
    if per_token and (dynamic or config.controller_hidden is not None):
        source, feature_shape = _token_source(captured, governed)
    controller = None
    if dynamic or config.controller_hidden is not None:
        if not governed:
            raise ValueError(f"the model has {len(names)} layers and edge_bits={edge_bits} fixes the first and "
                             "last: no layer is left for the controller; pass edge_bits=None")
        backbone_params = sum(p.numel() for p in build.layers.parameters())
        features = feature_count(feature_shape, per_token)
        hidden = config.controller_hidden or max(
            8, round(0.01 * backbone_params / (features + len(governed) * len(cands))))
        heads = 1 if config.controller_granularity in ("sample", "token-shared") else len(governed)
        controller = Controller(feature_shape, heads, len(cands), hidden, cands, per_token)
    arch = Architecture(
        input_shape=list(input_shape), input_scale=float(input_scale), input_dtype="int8" if input_signed else "uint8",
        candidate_bits=list(cands), shift_rule=config.shift_rule, dynamic=bool(dynamic), macs=build.macs,
        elements=build.elements, controller=controller.spec() if controller is not None else None,
        layer_specs={n: layer_spec(layer) for n, layer in build.layers.items()},
        quantizer_signed={n: q.signed for n, q in build.quantizers.items()}, value_signed=build.signed,
        edge_bits=edge_bits, governed=governed, controller_source=source, extra_specs=build.extra_specs,
        product_macs=sum(int(s.geometry.get("macs", 0)) for s in captured if s.kind in ("matmul", "attention")))
    parts = Parts(build.layers, build.quantizers, build.extras)
    return Converted([s.bare() for s in captured], parts, controller, arch)





def _token_source(captured: list[Step], governed: list[str]) -> tuple[int, tuple]:
    """A per-token controller's source: the value the first governed layer reads, a token
    sequence [T, D] per sample, with every governed layer reading T tokens."""
    steps = {s.name: (i, s) for i, s in enumerate(captured) if s.kind == "layer"}
    shapes = {n: tuple(steps[n][1].fused["in_shape"]) for n in governed}
    tokens = {s[0] for s in shapes.values() if len(s) == 2}
    if not governed or any(len(s) != 2 for s in shapes.values()) or len(tokens) != 1:
        raise ValueError("controller_granularity='token' needs every governed layer to be a Linear on token "
                         f"sequences [B, T, D] of one length T; the governed layers read {shapes}")
    first = steps[governed[0]][1]
    return first.inputs[0], shapes[governed[0]]


def parse_bits(bits, names: list[str], governed: list[str], edge_bits: Optional[int],
               current: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Static (weight, activation) widths of every layer from `DQTModel.set_bits`'s argument:
    an int or a (w, a) pair for the governed layers (the edges keep `edge_bits`), a list with
    one entry per layer, or a dict layer name -> entry (layers it does not name keep `current`)."""
    if isinstance(bits, dict):
        unknown = set(bits) - set(names)
        if unknown:
            raise ValueError(f"unknown layer names {sorted(unknown)}; layers are {names}")
        entries = [bits.get(n, current[n]) for n in names]
    elif isinstance(bits, (list, tuple)) and len(bits) == len(names) and not (
            len(bits) == 2 and all(isinstance(b, int) for b in bits) and len(names) != 2):
        entries = list(bits)
    else:
        entries = [bits if n in governed or edge_bits is None else edge_bits for n in names]
    parsed = {}
    for name, entry in zip(names, entries):
        pair = (entry, entry) if isinstance(entry, int) else tuple(entry)
        if len(pair) != 2 or any(not isinstance(b, int) or not 2 <= b <= numerics.MASTER_BITS for b in pair):
            raise ValueError(f"bits for layer {name} must be an int or (weight, activation) pair in "
                             f"[2, {numerics.MASTER_BITS}], got {entry!r}")
        parsed[name] = pair
    return parsed
__all__ = ["ConvertConfig", "Architecture", "Converted", "convert", "check_bits", "config_of", "option", "parse_bits"]
