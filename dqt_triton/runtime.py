"""The integer runtime: `run_program` and `FrozenDQTModel`.

Everything here reads an `IntegerProgram` and nothing else: no trainable module, no float
weight. Eval mode of a `DQTModel` and a frozen model run the same function on the same program,
so their outputs are the same integers (the tests hold them to `torch.equal`).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch
from torch import nn

from . import model_file, numerics, ops
from .program import ControllerProgram, IntegerProgram, clone_program, map_tensors, program_device
from .steps import KINDS
from .steps.constants import DTYPES
from .steps.layer import run_layer

Tensor = torch.Tensor


def device_constant(cache: dict, key: str, make: Callable[[], Tensor]) -> Tensor:
    """A constant of the program made once per device (not a host-to-device copy per call)."""
    t = cache.get(key)
    if t is None:
        t = cache[key] = make()
    return t


def check_input(input_shape, input_dtype: str, input_scale: float, x: object) -> None:
    """A clear error for inputs that are not master codes of the model's input shape."""
    want = DTYPES[input_dtype]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"DQTModel input must be a tensor of {input_dtype} codes, got {type(x).__name__}")
    if x.dtype != want:
        raise TypeError(f"DQTModel input must be {input_dtype} codes (real value = code * input_scale "
                        f"{input_scale}), got dtype {x.dtype}")
    if tuple(x.shape[1:]) != tuple(input_shape) or x.dim() != len(input_shape) + 1:
        raise ValueError(f"DQTModel input must have shape [batch, {', '.join(map(str, input_shape))}], "
                         f"got {tuple(x.shape)}")


def bitops_from_bits(bits: Tensor, macs: Union[list[int], Tensor], controller_macs: int = 0) -> Tensor:
    """BitOPs per sample: sum over layers of MACs x weight bits x activation bits, for chosen
    bits [B, layers, (w, a)], or [B, T, layers, (w, a)] per token (each token 1/T of a layer's
    MACs), plus the controller's MACs at 8 x 8 bits. `macs` may be a float64 tensor already on
    the bits' device."""
    macs_t = macs if isinstance(macs, Tensor) else torch.tensor(macs, dtype=torch.float64, device=bits.device)
    products = bits[..., 0].double() * bits[..., 1].double() * macs_t
    if bits.dim() == 4:
        products = products / bits.shape[1]
    return products.flatten(1).sum(dim=1) + controller_macs * 64


def chosen_bits(fixed: Tensor, widths: Optional[Tensor], governed_index: Tensor, batch: int) -> Tensor:
    """(w, a) bits of every layer: the fixed ones [layers, 2] with the governed layers at the
    controller's widths ([B, governed] per sample or [B, T, governed] per token); without widths,
    the fixed ones for each of `batch` samples."""
    if widths is None:
        return fixed.expand(batch, -1, -1).clone()
    bits = fixed.expand(*widths.shape[:-1], -1, -1).clone()
    bits[..., governed_index, :] = widths.unsqueeze(-1).expand(*widths.shape, 2)
    return bits


def run_controller(p: ControllerProgram, x: Tensor, cache: Optional[dict] = None) -> Tensor:
    """Integer controller on feature codes x: chosen candidate index [B, governed layers]
    (first maximum of the int32 logits minus the price offsets)."""
    cache = {} if cache is None else cache
    q = x
    if p.pool is not None:
        q = ops.int_avg_pool2d(q, tuple(p.pool))
    q = q.reshape(-1, q.shape[-1]) if p.per_token else q.flatten(1)  # a row per token, or per sample
    h = run_layer(p.fc1, q, 0, 0, "floor", cache, "controller.fc1")
    logits = run_layer(p.fc2, h, 0, 0, "floor", cache, "controller.fc2")
    logits = logits.view(*x.shape[:2] if p.per_token else (-1,), p.num_layers, p.num_choices)
    offsets = device_constant(cache, "controller.price_offsets", lambda: p.price_offsets.to(x.device))
    return (logits.to(torch.int64) - offsets).argmax(dim=-1)


class RunPass:
    """What the step kinds' `run` share during one `run_program` call."""

    def __init__(self, program: IntegerProgram, x: Tensor, cache: dict, widths: Optional[Tensor] = None) -> None:
        self.program, self.x, self.cache = program, x, cache
        self.rule = program.shift_rule
        self.governed = {n: i for i, n in enumerate(program.governed)} if program.dynamic else {}
        self.widths: Optional[Tensor] = widths  # [B, (T,) governed]: given, or once the controller has run
        self.forced = widths is not None
        self.values: list[Tensor] = []

    def shifts(self, name: str):
        """(activation shift, weight shift) of layer `name`: per sample for a governed layer
        (the controller runs on its source value when the first governed layer needs it)."""
        if name in self.governed:
            if self.forced and self.program.controller.per_token:
                tokens = self.values[self.program.controller_source].shape[1]
                if self.widths.shape[1] != tokens:
                    raise ValueError(f"widths give {self.widths.shape[1]} tokens; the model has {tokens}")
                self.forced = False  # checked once
            if self.widths is None:
                p = self.program
                choice = run_controller(p.controller, self.values[p.controller_source], self.cache)
                candidates = device_constant(self.cache, "candidate_bits",
                                             lambda: torch.tensor(p.candidate_bits, device=self.x.device))
                self.widths = candidates[choice]
                if self.widths.shape[-1] != len(self.governed):  # one head for every governed layer
                    self.widths = self.widths.expand(*self.widths.shape[:-1], len(self.governed))
            k = numerics.MASTER_BITS - self.widths[..., self.governed[name]]  # [B], or [B, T] per token
            return k, k
        wb, ab = self.program.static_bits[name]
        return numerics.MASTER_BITS - ab, numerics.MASTER_BITS - wb


def run_program(program: IntegerProgram, x: Tensor, cache: Optional[dict] = None) -> tuple[Tensor, Tensor]:
    """The integer-only forward pass: (float32 logits, chosen bits [B, layers, (w, a)]).

    Static: every layer's (w, a) widths come from the program. Dynamic: fixed layers (first and
    last by default) keep their widths; the controller runs on its source value (the first
    layer's output codes) just before the first governed layer needs a width.

    `cache` (a dict the caller keeps per program and device) holds the layers validated and
    placed on x's device by the first call; later calls read no tensor value on the host and
    copy nothing, so on a GPU they never wait for the device. Without it every call validates.
    """
    logits, chosen, _ = run_program_values(program, x, cache)
    return logits, chosen


def check_widths(program: IntegerProgram, x: Tensor, widths: Tensor) -> None:
    """A clear error for forced widths that a dynamic program cannot run: the shape of the
    controller's choice, [B, governed] per sample or [B, T, governed] per token, and candidates only."""
    if not program.dynamic:
        raise ValueError("forced widths replace the controller's choice: they need the dynamic program")
    if not isinstance(widths, Tensor) or widths.dtype.is_floating_point or widths.dtype == torch.bool:
        raise TypeError(f"widths must be an integer tensor, got {getattr(widths, 'dtype', type(widths).__name__)}")
    per_token = program.controller.per_token
    tokens = widths.shape[1:2] if per_token and widths.dim() == 3 else ()  # checked against the tokens in `shifts`
    shape = (x.shape[0], *tokens, len(program.governed))
    if widths.dim() != 2 + per_token or tuple(widths.shape) != shape:
        raise ValueError(f"widths must have shape [batch, {'tokens, ' if per_token else ''}governed layers] "
                         f"= [{x.shape[0]}, {'T, ' if per_token else ''}{len(program.governed)}], "
                         f"got {list(widths.shape)}")
    if widths.device != x.device:
        raise ValueError(f"widths are on {widths.device}, the input on {x.device}")
    candidates = torch.tensor(program.candidate_bits, device=widths.device)
    if not bool((widths.unsqueeze(-1) == candidates).any(-1).all()):
        raise ValueError(f"widths hold values outside the candidates {list(program.candidate_bits)}")


def run_program_values(program: IntegerProgram, x: Tensor, cache: Optional[dict] = None,
                       given: Optional[dict] = None, widths: Optional[Tensor] = None) -> tuple[Tensor, Tensor, list]:
    """`run_program`, also returning every value of the pass (index 0 the input, i + 1 the
    output codes of step i). `given` maps value indices to codes already computed for the same
    inputs (a cheaper pass's values that this program would compute identically: see
    `policy.reusable_values`); those steps are not run again. `widths` ([B, (T,) governed],
    candidates of a dynamic program) replace the controller's choice, which then does not run."""
    check_input(program.input_shape, program.input_dtype, program.input_scale, x)
    if widths is not None:
        check_widths(program, x, widths)
        widths = widths.long()
    cache = {} if cache is None else cache
    given = given or {}
    names = program.layer_names
    run = RunPass(program, x, cache, widths)
    values = run.values
    values.append(x)
    for index, step in enumerate(program.steps):
        if index + 1 in given:
            values.append(given[index + 1])
            continue
        kind = KINDS[step.kind]
        values.append(kind.run(step, [values[i] for i in step.inputs], program.constants(step), run))
    fixed = program.static_bits
    fixed_bits = device_constant(cache, "fixed_bits", lambda: torch.tensor([fixed[n] for n in names], device=x.device))
    idx = device_constant(cache, "governed_index", lambda: torch.tensor([names.index(n) for n in program.governed],
                                                                        device=x.device, dtype=torch.long))
    chosen = chosen_bits(fixed_bits, run.widths, idx, x.shape[0])
    return values[-1], chosen, values


class ProgramRunner:
    """Runs one program on any device, keeping each device's prepared layers (the cache of
    `run_program`), and reports BitOPs per sample: what eval mode and `FrozenDQTModel` share."""

    def __init__(self, program: IntegerProgram, macs: dict, controller_macs: int = 0) -> None:
        self.program, self.macs, self.controller_macs = program, macs, controller_macs
        self.caches: dict = {}  # device -> run_program cache

    def cache(self, x: object) -> dict:
        return self.caches.setdefault(x.device if isinstance(x, Tensor) else None, {})

    def __call__(self, x: Tensor, widths: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """(logits, chosen bits [B, layers, 2], BitOPs per sample [B]); `widths` replace the
        controller's choice (`run_program_values`); the BitOPs count the fixed MACs either way."""
        cache = self.cache(x)
        logits, chosen, _ = run_program_values(self.program, x, cache, widths=widths)
        macs = device_constant(cache, "macs", lambda: torch.tensor(
            [self.macs[n] for n in self.program.layer_names], dtype=torch.float64, device=chosen.device))
        return logits, chosen, bitops_from_bits(chosen, macs, self.controller_macs)

    def values(self, x: Tensor, given: Optional[dict] = None) -> tuple[Tensor, list]:
        """(logits, every value of the pass): `run_program_values` on this program."""
        logits, _, values = run_program_values(self.program, x, self.cache(x), given)
        return logits, values


class FrozenDQTModel(nn.Module):
    """The integer-only model: `forward(codes)` returns float32 logits; no float weights."""

    def __init__(self, program: IntegerProgram, macs: dict, controller_macs: int = 0) -> None:
        super().__init__()
        self.runner = ProgramRunner(program, macs, controller_macs)
        self.last_bits: Optional[Tensor] = None
        self.last_bitops: Optional[Tensor] = None

    @property
    def program(self) -> IntegerProgram:
        return self.runner.program

    @property
    def macs(self) -> dict:
        return self.runner.macs

    @property
    def controller_macs(self) -> int:
        return self.runner.controller_macs

    @property
    def device(self) -> torch.device:
        """Where the program's constants live (a call on another device places a copy once)."""
        return program_device(self.program)

    def _apply(self, fn, recurse: bool = True) -> "FrozenDQTModel":
        # .to(device) / .cuda() / .cpu() move the program; the integer dtypes are the contract,
        # so a conversion that would change any of them (.half(), .to(torch.float64)) is refused.
        def move(t: Tensor) -> Tensor:
            moved = fn(t)
            if moved.dtype != t.dtype:
                raise TypeError(f"a frozen integer model keeps its dtypes (the integer contract): converting "
                                f"a {t.dtype} constant to {moved.dtype} is not supported; move it with "
                                f".to(device) only")
            return moved

        self.runner = ProgramRunner(map_tensors(self.program, move), self.macs, self.controller_macs)
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor, widths: Optional[Tensor] = None) -> Tensor:
        """Logits for input codes x; a dynamic program takes `widths` [B, (T,) governed] in place
        of its controller's choice (a per-layer or per-token allocation made elsewhere)."""
        logits, self.last_bits, self.last_bitops = self.runner(x, widths)
        return logits

    def run_values(self, x: Tensor, given: Optional[dict] = None) -> tuple[Tensor, list]:
        """(logits, every value of the pass): `run_program_values` on this program."""
        return self.runner.values(x, given)

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file with the program (written atomically, with an integrity digest)."""
        model_file.save_frozen(path, clone_program(self.program, "cpu"), self.macs, self.controller_macs)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], mode: Optional[str] = None) -> "FrozenDQTModel":
        """Load a frozen model, or the frozen `mode` ("static" or "dynamic") of a DQTModel file."""
        return cls(*model_file.load_frozen(path, mode))


__all__ = ["FrozenDQTModel", "ProgramRunner", "run_program", "run_program_values", "run_controller",
           "bitops_from_bits", "check_input"]
