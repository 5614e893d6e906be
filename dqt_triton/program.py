"""The integer program: typed, tensor-holding records that `run_program` executes.

A program is what a trained `DQTModel` compiles to (`compile.compile_program`) and what a
`FrozenDQTModel` holds: the steps, each step's integer constants, the widths, the input's
description and, in dynamic mode, the controller's integer constants. Every level is a typed
record; `to_dict` / `from_dict` translate to the nested dicts and lists of the checkpoint
format (files written before the records existed load unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import torch

from .errors import CheckpointError
from .steps import KINDS, Step
from .steps.constants import AddProgram, Constants, LayerProgram

Tensor = torch.Tensor


@dataclass
class ControllerProgram:
    """The controller in integers: pooled feature codes -> fc1 -> fc2 -> argmax over
    (int32 logits - price offsets) per governed layer."""

    pool: Optional[list[int]]
    fc1: LayerProgram
    fc2: LayerProgram
    price_offsets: Tensor  # int64 [heads, candidates]
    num_layers: int
    num_choices: int
    per_token: bool = False  # runs on each token's features [D] of [B, T, D]: widths [B, T, heads]

    def to_dict(self) -> dict:
        d = {"pool": self.pool, "fc1": self.fc1.to_dict(), "fc2": self.fc2.to_dict(),
             "price_offsets": self.price_offsets, "num_layers": self.num_layers, "num_choices": self.num_choices}
        if self.per_token:
            d["per_token"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ControllerProgram":
        return cls(d["pool"], LayerProgram.from_dict(d["fc1"]), LayerProgram.from_dict(d["fc2"]), d["price_offsets"],
                   d["num_layers"], d["num_choices"], d.get("per_token", False))


@dataclass
class IntegerProgram:
    """Everything `run_program` needs: no float weights, no trainable module."""

    steps: list[Step]
    layers: dict[str, LayerProgram]
    adds: dict[str, AddProgram]
    ops: dict[str, Constants]
    layer_names: list[str]
    governed: list[str]
    shift_rule: str
    candidate_bits: list[int]
    input_shape: list[int]
    input_dtype: str
    input_scale: float
    dynamic: bool
    static_bits: dict[str, tuple[int, int]]  # (weight, activation) bits of every layer the controller does not set
    controller_source: int  # value index the controller reads
    controller: Optional[ControllerProgram] = None
    tables: dict[str, dict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.tables = {"layers": self.layers, "adds": self.adds, "ops": self.ops}

    def constants(self, step: Step) -> Optional[Constants]:
        """The constants of `step` (None for kinds that have none)."""
        key = KINDS[step.kind].program_key
        return self.tables[key][step.name] if key else None

    def to_dict(self) -> dict:
        """The checkpoint format's nested dicts and lists (tensors are not copied)."""
        return {"steps": [s.spec() for s in self.steps],
                **{key: {n: c.to_dict() for n, c in table.items()} for key, table in self.tables.items()},
                "layer_names": list(self.layer_names), "governed": list(self.governed), "shift_rule": self.shift_rule,
                "candidate_bits": list(self.candidate_bits), "input_shape": list(self.input_shape),
                "input_dtype": self.input_dtype, "input_scale": self.input_scale, "dynamic": self.dynamic,
                "static_bits": {n: list(b) for n, b in self.static_bits.items()},
                "controller_source": self.controller_source,
                "controller": None if self.controller is None else self.controller.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "IntegerProgram":
        steps = [Step.from_spec(s) for s in d["steps"]]
        tables: dict[str, dict] = {"layers": {}, "adds": {}, "ops": {}}
        for step in steps:
            kind = KINDS.get(step.kind)
            if kind is None:
                raise CheckpointError(f"unknown step kind {step.kind!r} in the integer program")
            if kind.program_key is not None:
                tables[kind.program_key][step.name] = kind.constants_type.from_dict(d[kind.program_key][step.name])
        controller = None if d["controller"] is None else ControllerProgram.from_dict(d["controller"])
        return cls(steps, tables["layers"], tables["adds"], tables["ops"], list(d["layer_names"]),
                   list(d["governed"]), d["shift_rule"], list(d["candidate_bits"]), list(d["input_shape"]),
                   d["input_dtype"], d["input_scale"], bool(d["dynamic"]),
                   {n: tuple(b) for n, b in d["static_bits"].items()}, d["controller_source"], controller)


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """A copy of a program (or any part of it) with `fn` applied to every tensor in it; the
    steps, which hold no tensor, are shared."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Step):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj) if f.init})
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [map_tensors(v, fn) for v in obj]
    return obj


def program_tensors(obj: Any) -> Iterator[Tensor]:
    """Every tensor of a program (or any part of it), in a fixed order."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Step):
        return
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if f.init:
                yield from program_tensors(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from program_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from program_tensors(v)


def clone_program(program: IntegerProgram, device: Optional[Union[str, torch.device]] = None) -> IntegerProgram:
    """A deep copy of a program's tensors, on `device` (None: each tensor stays where it is)."""
    return map_tensors(program, lambda t: t.detach().clone() if device is None else t.detach().to(device, copy=True))


def program_device(program: IntegerProgram) -> torch.device:
    """Where the program's constants live (CPU for a program without tensors)."""
    first = next(program_tensors(program), None)
    return torch.device("cpu") if first is None else first.device


__all__ = ["IntegerProgram", "ControllerProgram", "map_tensors", "program_tensors", "clone_program", "program_device"]
