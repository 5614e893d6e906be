"""The step-kind protocol: one class per operation of the integer program.

A step kind keeps side by side everything DQT does with one operation:

- `match` / `capture`: recognise it in a torch.fx graph and record a `Step` (graph.capture);
- `build`: create its trainable parts when a float model is converted (`convert.from_float`);
- `train`: its training-path forward on float codes with straight-through gradients (a `TrainPass`);
- `constants`: its integer constants (a `constants_type` record) in the program (`compile`);
- `run`: its integer-only forward on codes (`runtime.run_program`, eval and frozen models).

A kind sees the trainable modules through `Parts` and the pass through `TrainPass` or the
runtime's pass, never the model itself. Adding an operation is one new `StepKind` subclass
registered in `dqt_triton.steps`, plus its contract in docs/numerics.md and its tests;
`model.py` and `graph.py` need no change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional

import torch
from torch import fx, nn

from .constants import Constants

Tensor = torch.Tensor


@dataclass
class Step:
    """One operation of the integer program; `inputs` index earlier values (0 = network input)."""

    kind: str
    inputs: list[int]
    name: str = ""  # key of its modules (layer / quantizer) and program constants
    relu: bool = False
    geometry: dict[str, Any] = field(default_factory=dict)
    fused: dict[str, Any] = field(default_factory=dict)  # capture-time float modules, never saved

    def spec(self) -> dict:
        return {"kind": self.kind, "inputs": list(self.inputs), "name": self.name, "relu": self.relu,
                "geometry": dict(self.geometry)}

    @classmethod
    def from_spec(cls, spec: dict) -> "Step":
        """The step of a saved spec (no capture-time modules)."""
        return cls(spec["kind"], list(spec["inputs"]), spec["name"], spec["relu"], dict(spec["geometry"]))

    def bare(self) -> "Step":
        """This step without its capture-time modules (what a model and its programs keep)."""
        return Step(self.kind, list(self.inputs), self.name, self.relu, dict(self.geometry))


class CodeValue(NamedTuple):
    """A value on the training path: float codes, the real value of one code, signedness."""

    q: Tensor
    scale: Tensor
    signed: bool


class Parts(NamedTuple):
    """The trainable modules the step kinds read, each under its step's name."""

    layers: nn.ModuleDict  # Conv2d / Linear layers (`nn.DQTConv2d`, `nn.DQTLinear`)
    quantizers: nn.ModuleDict  # the activation quantizers of requantizing steps
    extras: nn.ModuleDict  # other modules (a standalone batch norm)


@dataclass
class TrainPass:
    """What the step kinds' `train` share during one training-path forward."""

    parts: Parts
    shift_rule: str
    candidate_bits: tuple[int, ...]
    gate_gradients: str  # how the task loss reaches the controller's gates (`quant.GATE_GRADIENTS`)
    fixed: dict[str, tuple[int, int]]  # (weight, activation) bits of the layers the controller does not set
    governed: dict[str, int]  # governed layer -> its column in `gates` / `widths` (empty: static pass)
    gates: Optional[Tensor] = None  # [B, governed, candidates], once the controller has run
    widths: Optional[Tensor] = None  # [B, governed] chosen bits
    # Layers to record (name -> None, filled by LayerKind.train): (output y, y minus the output of
    # the same input at 8 bits, detached), [B, T, N] for token rows; what the objective's token costs read.
    record: Optional[dict] = None


class Capture:
    """The state of one graph capture, handed to `StepKind.capture`."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.modules = modules
        self.value_of: dict[fx.Node, int] = {}
        self.steps: list[Step] = []
        self.skipped: set[fx.Node] = set()
        self.unsupported: list[str] = []
        self.unsupported_kinds: list[str] = []  # the operation of each entry, for the summary line
        self.poisoned: set[fx.Node] = set()  # outputs of unsupported nodes: inputs taken from them are not re-reported
        self.layer_count = 0
        # node -> ("tensor", shape) | ("tensors", [shapes]) | ("static", value), from one run of
        # the float model on a batch of 2 (graph.capture with an input shape); empty otherwise.
        self.examples: dict[fx.Node, Any] = {}
        # chunk/split nodes: node -> (source value, dim, [(start, stop), ...]) for getitem to slice
        self.pieces: dict[fx.Node, tuple[int, int, list[tuple[int, int]]]] = {}

    def shape(self, node: fx.Node) -> Optional[tuple[int, ...]]:
        """The example shape of a tensor-valued node (batch of 2), if recorded."""
        kind, value = self.examples.get(node, (None, None))
        return value if kind == "tensor" else None

    def is_static(self, node: fx.Node) -> bool:
        """A node that computes sizes or constants, not tensors (x.size(1) // 2)."""
        return self.examples.get(node, (None,))[0] == "static"

    def module(self, node: fx.Node) -> Optional[nn.Module]:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module {node.target!r} ({type(self.modules[node.target]).__name__})"
        if node.op == "call_function":
            return f"function {getattr(node.target, '__name__', node.target)}"
        return f"{node.op} {node.target}"

    def reject(self, node: fx.Node, why: str = "") -> None:
        """Record an operation the integer model cannot represent; capture goes on to find the rest."""
        self.unsupported.append(self.describe(node) + (f": {why}" if why else ""))
        self.unsupported_kinds.append(type(self.modules[node.target]).__name__ if node.op == "call_module"
                                      else str(getattr(node.target, "__name__", node.target)))
        self.poisoned.add(node)

    def source(self, node: fx.Node, arg: Any) -> Optional[int]:
        """The value index of a tensor argument (None, after recording why, if it has none)."""
        if isinstance(arg, fx.Node) and arg in self.value_of:
            return self.value_of[arg]
        if isinstance(arg, fx.Node) and arg in self.poisoned:
            self.poisoned.add(node)
            return None
        self.reject(node, f"takes an input the integer model cannot represent ({arg!r})")
        return None

    def emit(self, step: Step, node: fx.Node) -> None:
        """Append `step`; `node`'s value (the last node it fuses) is the step's output."""
        self.steps.append(step)
        self.value_of[node] = len(self.steps)  # value 0 is the network input

    def alias(self, node: fx.Node, value: int) -> None:
        """`node` computes nothing in the integer model: its value is an earlier one."""
        self.value_of[node] = value

    @staticmethod
    def calls(node: fx.Node, functions: tuple = (), methods: tuple = ()) -> bool:
        """Is `node` a call of one of `functions` (torch.add, operator.add) or `methods` ("add")?"""
        return (node.op == "call_function" and node.target in functions) or \
            (node.op == "call_method" and node.target in methods)

    @staticmethod
    def single_user(node: fx.Node) -> Optional[fx.Node]:
        users = list(node.users)
        return users[0] if len(users) == 1 else None


@dataclass
class Build:
    """What `DQTModel.from_float` collects while building the steps' trainable parts."""

    bn_per_width: bool
    layers: nn.ModuleDict
    quantizers: nn.ModuleDict
    macs: dict = field(default_factory=dict)
    elements: dict = field(default_factory=dict)
    signed: list = field(default_factory=list)  # per value: are its codes signed
    extras: nn.ModuleDict = field(default_factory=nn.ModuleDict)  # other trainable modules (a standalone BN)
    extra_specs: dict = field(default_factory=dict)  # how to rebuild them on load


def on_device(t: Tensor, like: Tensor, ctx, key: str) -> Tensor:
    """A program constant on `like`'s device, copied once per device (kept in the runtime's cache;
    not `setdefault`, whose argument would copy at every call)."""
    if t.device == like.device:
        return t
    placed = ctx.cache.get(key)
    if placed is None:
        placed = ctx.cache[key] = t.to(like.device)
    return placed


def requantize(y: Tensor, name: str, tp: TrainPass) -> CodeValue:
    """Real values y as codes of the step's own learned quantizer (LSQ gradients, created by
    its `build` under the step's name): how every requantizing step ends its training path."""
    quant = tp.parts.quantizers[name]
    return CodeValue(quant(y), quant.scale(), quant.signed)


class StepKind:
    """Base class of a step kind; subclasses override what applies to them."""

    kind: str = ""
    #: where `constants` go in the integer program ("layers", "adds", "ops"; None: the step has none)
    program_key: Optional[str] = None
    #: the record type of its constants (`steps.constants`), for loading saved programs
    constants_type: Optional[type] = None

    def match(self, node: fx.Node, cap: Capture) -> bool:
        """Does this kind capture `node`? Checked in registry order."""
        return False

    def capture(self, node: fx.Node, cap: Capture) -> None:
        raise NotImplementedError

    def build(self, step: Step, b: Build) -> bool:
        """Create the step's modules; return whether its output codes are signed."""
        return b.signed[step.inputs[0]]

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        raise NotImplementedError

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool],
                  parts: Parts) -> tuple[Optional[Constants], float]:
        """(the step's integer constants or None, the real value of one output code)."""
        return None, in_scales[0]

    def run(self, step: Step, ins: list[Tensor], consts: Optional[Constants], ctx) -> Tensor:
        """Integer forward; `ctx` is the runtime's pass (`ctx.shifts(name)`, `ctx.rule`, `ctx.cache`)."""
        raise NotImplementedError
