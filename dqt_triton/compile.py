"""Compiling a trained `DQTModel` into its `IntegerProgram` (the only place that reads the
trainable modules to build integer constants; `runtime` then runs the program alone)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .controller import budget_price
from .program import IntegerProgram
from .steps import KINDS

if TYPE_CHECKING:
    from .model import DQTModel


@torch.no_grad()
def compile_program(model: "DQTModel") -> IntegerProgram:
    """The integer program of `model` in its current mode (static widths, or dynamic at its
    budget code), with every step's constants folded from the trained parameters."""
    arch, parts = model.arch, model.parts
    value_scale = [float(model.input_step)]  # the real value of one code of each value
    signed = arch.value_signed
    tables: dict[str, dict] = {"layers": {}, "adds": {}, "ops": {}}
    for step in model.steps:
        kind = KINDS[step.kind]
        ins = step.inputs
        consts, out_scale = kind.constants(step, [value_scale[i] for i in ins], [signed[i] for i in ins], parts)
        if kind.program_key is not None:
            tables[kind.program_key][step.name] = consts
        value_scale.append(out_scale)
    source = arch.controller_source
    controller = None
    if model.dynamic:
        controller = model.controller.program(value_scale[source], signed[source], budget_price(model.budget_code))
    return IntegerProgram(
        steps=list(model.steps), layers=tables["layers"], adds=tables["adds"], ops=tables["ops"],
        layer_names=list(model.layer_names), governed=list(model.governed), shift_rule=model.shift_rule,
        candidate_bits=list(model.candidate_bits), input_shape=list(arch.input_shape), input_dtype=arch.input_dtype,
        input_scale=arch.input_scale, dynamic=model.dynamic,
        static_bits={n: tuple(b) for n, b in model.fixed_bits().items()}, controller_source=source,
        controller=controller)


__all__ = ["compile_program"]
