"""`DQTModel`: a float model turned into a nested-quantization model with a width controller.

Training mode runs the integer kernels with straight-through gradients (`dqt_triton.quant`);
eval mode and `freeze()` run the integer-only program (`compile` builds it, `runtime` runs
it): master codes in, batch norm folded into dyadic requantization, integer residual adds and
pooling, the controller in integers, one dequantization at the logits. Eval and frozen outputs
are the same integers by construction (one `run_program` executes both).

The pieces live beside it: conversion (`convert`), the controller (`controller`), the
objective (`objective`), calibration (`calibration`), the program (`program`, `compile`,
`runtime`) and the file format (`model_file`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from . import calibration, model_file, numerics
from .compile import compile_program
from .controller import BUDGET_LEVELS, Controller
from .convert import Architecture, ConvertConfig, config_of, convert, parse_bits
from .errors import CheckpointError, UnsupportedLayerError
from .objective import LossConfig, LossTerms, dqt_loss
from .program import IntegerProgram, clone_program
from .runtime import FrozenDQTModel, ProgramRunner, bitops_from_bits, check_input, chosen_bits
from .steps import KINDS, CodeValue, Parts, Step, TrainPass

log = logging.getLogger(__name__)

Tensor = torch.Tensor
BitsArg = Union[int, tuple[int, int], dict, Sequence]


class TrainOutput(NamedTuple):
    """One training-path forward."""

    logits: Tensor
    bits: Tensor  # [B, layers, (w, a)] chosen
    bitops: Tensor  # [B], detached
    soft_bitops: Optional[Tensor] = None  # [B] with gradients to the gates (dynamic pass)
    controller_logits: Optional[Tensor] = None  # [B, heads, candidates] (dynamic pass)


class DQTModel(nn.Module):
    """A float model converted for DQT: nested QAT in training, integer-only in eval.

    Use `DQTModel.from_float`. Inputs are master codes (uint8 by default) whose real value is
    ``code * input_scale``. After each forward, `last_bits` holds the (weight, activation) bits
    chosen per sample and layer ``[B, layers, 2]`` and `last_bitops` the BitOPs per sample.

    The first and last layers stay at `edge_bits` (8 by default); the other layers are
    *governed*: `set_bits(b)` puts them at b bits, and in dynamic mode the controller picks
    their widths per sample. `budget_code` (0 .. BUDGET_LEVELS-1, larger = more bits) is the
    deployment-time budget the controller is conditioned on (`calibrate_budget`).
    """

    def __init__(self, steps: list[Step], parts: Parts, controller: Optional[Controller], arch: Architecture) -> None:
        super().__init__()
        self.steps = steps
        self.layers, self.quantizers, self.extras = parts  # registered in this order: the parameters' order
        self.controller = controller
        self.arch = arch
        self.register_buffer("input_step", torch.tensor(float(arch.input_scale)))
        self.layer_names = [s.name for s in steps if s.kind == "layer"]
        self.governed = list(arch.governed)
        self.edge_bits = arch.edge_bits
        self.candidate_bits = tuple(arch.candidate_bits)
        self.shift_rule = arch.shift_rule
        self.tau = 1.0  # Gumbel-Softmax temperature (`anneal_temperature`)
        self.budget_code = BUDGET_LEVELS // 2
        self.static_bits = {n: (8, 8) for n in self.layer_names}
        self.dynamic = bool(arch.dynamic) and controller is not None
        self.last_bits = self.last_bitops = None  # Optional[Tensor]: the last forward's [B, layers, 2] and [B]
        self.policies: Optional[dict] = None  # calibrated width policies (`policy.PolicyTable.to_dict()`)
        self._compiled: Optional[tuple[tuple, ProgramRunner]] = None  # (what the program depends on, its runner)

    @property
    def parts(self) -> Parts:
        return Parts(self.layers, self.quantizers, self.extras)

    @classmethod
    def from_float(cls, model: nn.Module, input_shape: Sequence[int], config: Optional[ConvertConfig] = None, *,
                   bits: BitsArg = 8, dynamic: bool = False, input_scale: float = 1.0 / 255.0,
                   input_signed: bool = False, **options) -> "DQTModel":
        """Convert `model` (Conv2d/Linear + BatchNorm + ReLU, residual adds, pooling, flatten, ...).

        Args:
            model: the float model; its trained weights initialise the master weights.
            input_shape: one sample's shape without the batch, e.g. (3, 32, 32) or (64,).
            config: the quantization options (`ConvertConfig`); `options` override its fields
                (``candidate_bits``, ``shift_rule``, ``edge_bits``, ``bn_per_width``,
                ``controller_granularity``, ``controller_hidden``).
            bits: initial static widths (see `set_bits`).
            dynamic: start in dynamic mode (controller-chosen per-sample widths).
            input_scale: real value of one input code; input_signed: int8 instead of uint8 input.
        """
        cfg = config_of(ConvertConfig, config, **options)
        steps, parts, controller, arch = convert(model, input_shape, cfg, dynamic=dynamic, input_scale=input_scale,
                                                 input_signed=input_signed)
        dqt = cls(steps, parts, controller, arch).set_bits(bits).set_dynamic(dynamic)
        log.info("DQTModel: %d quantized layers (%d governed), %d residual adds, controller %s",
                 len(dqt.layer_names), len(dqt.governed), sum(s.kind == "add" for s in steps),
                 "none" if controller is None else f"{controller.hidden} hidden")
        return dqt

    # ------------------------------------------------------------------ widths and budgets

    def set_bits(self, bits: BitsArg) -> "DQTModel":
        """Static widths; switches the model to static mode. An int (weights = activations) or
        a (w, a) pair applies to the governed layers, the first and last keep `edge_bits`; a list
        (one entry per layer) or a dict (layer name -> entry) sets exactly the layers it names."""
        self.static_bits = parse_bits(bits, self.layer_names, self.governed, self.edge_bits, self.static_bits)
        self.dynamic = False
        return self

    def set_dynamic(self, enabled: bool = True) -> "DQTModel":
        """Let the controller choose per-sample widths of the governed layers (the other layers
        keep `edge_bits`); needs a model built with a controller."""
        if enabled and self.controller is None:
            raise ValueError("this DQTModel has no controller; build it with from_float(..., dynamic=True)")
        self.dynamic = enabled
        return self

    def set_budget(self, code: int) -> "DQTModel":
        """Deployment budget code for the controller: 0 (fewest bits) .. BUDGET_LEVELS - 1."""
        if not isinstance(code, int) or not 0 <= code < BUDGET_LEVELS:
            raise ValueError(f"budget code must be an int in [0, {BUDGET_LEVELS - 1}], got {code!r}")
        self.budget_code = code
        return self

    @contextlib.contextmanager
    def kept_mode(self) -> Iterator["DQTModel"]:
        """Restore the static widths, dynamic flag, budget code and train/eval mode afterwards."""
        was_training, dynamic, static, code = self.training, self.dynamic, dict(self.static_bits), self.budget_code
        try:
            yield self
        finally:
            self.static_bits, self.dynamic, self.budget_code = static, dynamic, code
            self.train(was_training)

    def calibrate_budget(self, x: Tensor, target_bitops: float, batch_size: int = 512) -> int:
        """Largest budget code whose mean BitOPs per sample on `x` (integer eval, dynamic mode)
        is at most `target_bitops`; sets and returns it (0 if even code 0 exceeds it)."""
        return calibration.calibrate_budget(self, x, target_bitops, batch_size)

    def recalibrate_norms(self, x: Tensor, bits: Optional[Sequence[int]] = None, batch_size: int = 256) -> list[int]:
        """Re-estimate each width's batch-norm statistics from inputs `x` (`calibration.recalibrate_norms`)."""
        return calibration.recalibrate_norms(self, x, bits, batch_size)

    def anneal_temperature(self, progress: float, start: float = 5.0, end: float = 0.5) -> float:
        """Set the Gumbel-Softmax temperature for training progress in [0, 1]: exponential
        decay from `start` to `end` (soft exploration first, near-argmax at the end)."""
        if not 0.0 <= progress <= 1.0 or start <= 0 or end <= 0:
            raise ValueError(f"need progress in [0, 1] and positive temperatures, got {progress}, {start}, {end}")
        self.tau = float(start * (end / start) ** progress)
        return self.tau

    def copy_width_norms(self, bits: int = numerics.MASTER_BITS) -> None:
        """Start every width's batch norm from the `bits` one (call after single-width warm-up)."""
        for layer in self.layers.values():
            layer.copy_width_norms(numerics.MASTER_BITS - bits)

    def fixed_macs(self) -> int:
        """One sample's MACs always at 8 x 8 bits: attention's products and, dynamic, the controller."""
        controller_macs = self.controller.macs() if self.dynamic and self.controller is not None else 0
        return controller_macs + self.arch.product_macs

    def bitops_per_sample(self, bits: Tensor) -> Tensor:
        """BitOPs per sample from chosen bits [B, (T,) layers, 2] (+ `fixed_macs` at 8x8 bits)."""
        return bitops_from_bits(bits, [self.arch.macs[n] for n in self.layer_names], self.fixed_macs())

    def uniform_bitops(self, bits: int) -> float:
        """BitOPs of one sample with the governed layers at `bits` and the edges at `edge_bits`
        (`set_bits(bits)`): the unit of budgets and of the "vs uniform 4" columns."""
        edge = self.edge_bits
        return float(sum(m * (bits * bits if n in self.governed or edge is None else edge * edge)
                         for n, m in self.arch.macs.items()) + 64 * self.arch.product_macs)

    def fixed_bits(self, force_bits: Optional[int] = None) -> dict:
        """(w, a) widths of every layer not chosen by the controller: the static widths, or with
        `force_bits` the governed layers at that width; the edge layers sit at `edge_bits`
        whenever the controller or `force_bits` sets the others (static_bits stays as set)."""
        if force_bits is None and not self.dynamic:
            return self.static_bits
        edge = self.edge_bits
        return {n: (edge, edge) if n not in self.governed and edge is not None
                else (force_bits,) * 2 if force_bits is not None else self.static_bits[n] for n in self.layer_names}

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor, widths: Optional[Tensor] = None) -> Tensor:
        """Logits for input codes x. Training: nested QAT; eval: the integer-only program. Dynamic:
        `widths` [B, (T,) governed] replace the controller's choice (`last_bitops` still counts it)."""
        if self.training:
            logits, self.last_bits, self.last_bitops = self.train_forward(x, force_widths=widths)[:3]
        else:
            logits, self.last_bits, self.last_bitops = self._runner()(x, widths)
        return logits

    def train_forward(self, x: Tensor, force_bits: Optional[int] = None, budget_codes: Optional[Tensor] = None,
                      gate_gradients: str = "all", record: Optional[dict] = None,
                      force_widths: Optional[Tensor] = None) -> TrainOutput:
        """The training path: integer layers with straight-through gradients, float batch norm.

        force_bits: every governed layer at that width (the consistency term's paths).
        force_widths: the controller's choice replaced by these widths, [B, (T,) governed] in the
            controller's shape (the consistency term's mixed passes).
        budget_codes: per-sample budget codes for the controller (default: `budget_code`).
        gate_gradients: how the task loss reaches the controller's gates (`quant.GATE_GRADIENTS`).
        record: layer names -> filled with (output, its error against 8 bits on the same input) (`TrainPass`).
        """
        check_input(self.arch.input_shape, self.arch.input_dtype, self.arch.input_scale, x)
        if x.shape[0] == 0:  # eval returns empty logits, as torch layers do; a training step has no batch statistics
            raise ValueError("a training batch needs at least one sample, got an empty batch (eval mode accepts one)")
        if force_widths is not None and (force_bits is not None or not self.dynamic):
            raise ValueError("force_widths replaces the controller's choice: it needs dynamic mode and no force_bits")
        fixed = self.fixed_bits(force_bits)
        dynamic = self.dynamic and force_bits is None
        tp = TrainPass(self.parts, self.shift_rule, self.candidate_bits, gate_gradients, fixed,
                       {n: i for i, n in enumerate(self.governed)} if dynamic else {}, record=record)
        source, choice = self.arch.controller_source, None
        values = [CodeValue(x.to(torch.float32), self.input_step, self.arch.input_dtype == "int8")]
        for step in self.steps:
            if dynamic and choice is None and len(values) > source:
                choice = (self._choose(values[source], fixed, budget_codes) if force_widths is None
                          else self.controller.forced(force_widths, len(self.governed)))
                tp.gates, tp.widths = choice.gates, choice.widths
            values.append(KINDS[step.kind].train(step, [values[i] for i in step.inputs], tp))
        if not any(step.geometry.get("final") for step in self.steps):
            raise UnsupportedLayerError("the model has no final layer")  # capture() guarantees one
        idx = torch.tensor([self.layer_names.index(n) for n in self.governed], device=x.device, dtype=torch.long)
        bits = chosen_bits(torch.tensor([fixed[n] for n in self.layer_names], device=x.device),
                           None if choice is None else choice.widths, idx, x.shape[0])
        bitops = self.bitops_per_sample(bits).detach()
        # the final layer's float logits, moved by any transpose or reshape after it
        return TrainOutput(values[-1].q, bits, bitops, *((choice.soft_bitops, choice.logits) if choice else ()))

    def _choose(self, source: CodeValue, fixed: dict, budget_codes: Optional[Tensor]):
        q = source.q
        if budget_codes is None:
            budget_codes = torch.full((q.shape[0],), self.budget_code, device=q.device)
        macs = torch.tensor([self.arch.macs[n] for n in self.governed], dtype=torch.float32, device=q.device)
        others = sum(self.arch.macs[n] * fixed[n][0] * fixed[n][1] for n in self.layer_names if n not in self.governed)
        return self.controller.choose(q, source.scale, source.signed, budget_codes, self.tau, self.candidate_bits,
                                      macs, others)

    def forward_at_bits(self, x: Tensor, bits: int) -> Tensor:
        """Training-path logits with every governed layer at `bits` (the consistency paths)."""
        return self.train_forward(x, force_bits=bits).logits

    @torch.no_grad()
    def simulated_forward(self, x: Tensor) -> Tensor:
        """The training-path computation on eval statistics (batch-norm running stats, frozen
        quantizer ranges, argmax controller): what training believes the model computes."""
        with self.kept_mode():
            self.train(False)
            return self.train_forward(x).logits

    def agreement(self, x: Tensor, batch_size: int = 256) -> float:
        """Top-1 agreement between `simulated_forward` and the integer-only eval on inputs x."""
        return calibration.agreement(self, x, batch_size)

    def dqt_loss(self, x: Tensor, target: Tensor, config: Optional[LossConfig] = None, *,
                 target_bitops: Optional[float] = None, imitation_data: Optional[tuple[Tensor, Tensor]] = None,
                 generator: Optional[torch.Generator] = None, **options) -> LossTerms:
        """The DQT objective (`objective.dqt_loss`): task + alpha * consistency + beta * budget +
        imitation, with the options of `config` (`LossConfig`) overridden by `options`.

        task: cross-entropy of the dynamic path (static mode: of the current widths).
        consistency: the sandwich of uniform widths, the widest on the labels, the others
            distilled from it, on the batch's first `consistency_share`.
        budget (dynamic mode with `target_bitops`, usually uniform-4 BitOPs): each sample draws
            a budget code and pays its price (`controller.budget_price`) per BitOP.
        imitation: the controller's logits learn each width's cost per sample.
        `imitation_data` (x, target): held-out samples for ``imitation_source="holdout"``.
        """
        cfg = config_of(LossConfig, config, **options)
        terms = dqt_loss(self, x, target, cfg, target_bitops=target_bitops, imitation_data=imitation_data,
                         generator=generator)
        self.last_bits, self.last_bitops = terms.bits, terms.bitops
        return terms

    # ------------------------------------------------------------------ integer program

    @torch.no_grad()
    def integer_program(self) -> IntegerProgram:
        """The integer program of the current mode, on the model's device; compiled again only
        when a parameter, buffer, width, budget or device changes (tensor version counters see
        optimizer steps and load_state_dict; `.to(device)` may keep a parameter's identity)."""
        return self._runner().program

    def _runner(self) -> ProgramRunner:
        allowed = getattr(self.controller, "allowed_bits", None)
        key = (self.dynamic, self.budget_code, allowed, tuple(self.static_bits.items()),
               tuple((id(t), t._version, t.device) for t in itertools.chain(self.parameters(), self.buffers())))
        if self._compiled is None or self._compiled[0] != key:
            self._compiled = (key, ProgramRunner(compile_program(self), self.arch.macs, self.fixed_macs()))
        return self._compiled[1]

    def freeze(self) -> FrozenDQTModel:
        """A snapshot of the integer-only model in its current mode (static widths or dynamic),
        on the model's device: a model trained on a GPU freezes into a GPU-resident program."""
        return FrozenDQTModel(clone_program(self.integer_program()), dict(self.arch.macs), self.fixed_macs())

    # ------------------------------------------------------------------ save / load

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file: architecture, master weights, quantizer scales, controller, budget code, the
        frozen integer programs of the current static widths and (with a controller) dynamic
        mode, and the calibrated width policies. Written atomically."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        static, dynamic = dict(self.static_bits), self.dynamic
        programs = {}
        with self.kept_mode():
            self.eval()
            self.dynamic = False  # the static program: the model's current static widths
            programs["static"] = clone_program(self.integer_program(), "cpu")
            if self.controller is not None:
                self.set_dynamic(True)
                programs["dynamic"] = clone_program(self.integer_program(), "cpu")
        model_file.save_model(path, model_file.SavedModel(self.arch.to_dict(), [s.spec() for s in self.steps], state,
                                                          programs, static, dynamic, self.budget_code, self.policies,
                                                          getattr(self.controller, "allowed_bits", None)))

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: str = "cpu") -> "DQTModel":
        """Rebuild a saved DQTModel (no code from the file is executed: weights_only loading)."""
        saved = model_file.load_model(path, map_location)
        try:
            arch = Architecture.from_dict(saved.config)
            parts, controller = arch.rebuild()
            model = cls([Step.from_spec(s) for s in saved.steps], parts, controller, arch)
            model.load_state_dict(saved.state_dict)
            model.set_bits(saved.static_bits)
            model.set_budget(saved.budget_code)
            if saved.dynamic:
                model.set_dynamic(True)
            model.policies = saved.policies
            if saved.allowed_bits is not None:
                controller.allow(saved.allowed_bits)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{os.fspath(path)} is not a valid DQTModel checkpoint: {exc}") from exc
        return model


__all__ = ["DQTModel", "FrozenDQTModel", "TrainOutput", "BitsArg"]
