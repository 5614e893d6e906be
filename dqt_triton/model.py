"""`DQTModel`: a float model turned into a nested-quantization model with a width controller.

Training mode runs the integer kernels with straight-through gradients (`dqt_triton.quant`);
eval mode and `freeze()` run the integer-only program: master codes in, batch norm folded into
dyadic requantization, integer residual adds and pooling, the controller in integers, one
dequantization at the logits. Eval and frozen outputs are the same integers by construction
(one `run_program` executes both), and the tests hold them to exact equality after a save and
load round trip.
"""

from __future__ import annotations

import copy
import io
import itertools
import logging
import math
import os
import zipfile
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import numerics, ops
from .errors import CheckpointError, UnsupportedLayerError
from .graph import Step, capture
from .nn import ActQuantizer, DQTConv2d, DQTLinear, IntegerConstants
from .quant import gumbel_hard

log = logging.getLogger(__name__)

Tensor = torch.Tensor
BitsArg = Union[int, tuple[int, int], dict, Sequence]
FORMAT = "dqt-triton-checkpoint"
FORMAT_VERSION = 1
_DTYPES = {"uint8": torch.uint8, "int8": torch.int8, "int32": torch.int32, "float32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def _check_bits(candidate_bits: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(int(b) for b in candidate_bits)
    if not bits or len(set(bits)) != len(bits) or any(not 2 <= b <= numerics.MASTER_BITS for b in bits):
        raise ValueError(f"candidate bit-widths must be distinct integers in [2, {numerics.MASTER_BITS}], "
                         f"got {candidate_bits!r}")
    return tuple(sorted(bits))


def _avg_pool_codes(q: Tensor, kernel, stride, padding) -> Tensor:
    """Integer average pool floor((sum + c//2) / c) on float codes, mean-pool gradients."""
    count = kernel[0] * kernel[1]
    mean = F.avg_pool2d(q, kernel, stride, padding, count_include_pad=True)
    sums = F.avg_pool2d(q.detach().double(), kernel, stride, padding, count_include_pad=True, divisor_override=1)
    exact = torch.floor((sums + count // 2) / count).to(q.dtype)
    return mean + (exact - mean).detach()


class Controller(nn.Module):
    """Input -> per-layer logits over the candidate widths (about 1% of the backbone).

    Image inputs are average-pooled to at most 4x4 (integer pooling), flattened, then
    Linear-ReLU-Linear; flat inputs go straight to the linear layers. The last layer shares one
    weight step across outputs, so its integer logits compare directly (argmax in integers).
    """

    def __init__(self, input_shape: Sequence[int], num_layers: int, num_choices: int, hidden: int) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_layers, self.num_choices, self.hidden = num_layers, num_choices, hidden
        if len(self.input_shape) == 3:
            C, H, W = self.input_shape
            self.pool = (max(H // 4, 1), max(W // 4, 1))
            features = C * (H // self.pool[0]) * (W // self.pool[1])
        else:
            self.pool = None
            features = int(math.prod(self.input_shape))
        fc1 = nn.Linear(features, hidden)
        fc2 = nn.Linear(hidden, num_layers * num_choices)
        nn.init.zeros_(fc2.bias)
        nn.init.normal_(fc2.weight, std=0.01)
        self.fc1 = DQTLinear.from_float(fc1, relu=True)
        self.fc2 = DQTLinear.from_float(fc2, per_channel=False)
        self.hidden_quant = ActQuantizer(signed=False)

    def macs(self) -> int:
        return self.fc1.weight.numel() + self.fc2.weight.numel()

    def spec(self) -> dict:
        return {"input_shape": list(self.input_shape), "num_layers": self.num_layers,
                "num_choices": self.num_choices, "hidden": self.hidden}

    def forward(self, q_in: Tensor, in_step: Tensor, in_signed: bool) -> Tensor:
        """Float logits [B, layers, choices] from the input codes (training path)."""
        q = q_in
        if self.pool is not None:
            q = _avg_pool_codes(q, self.pool, self.pool, (0, 0))
        q = q.flatten(1)
        h = self.fc1.forward_codes(q, in_step, in_signed, 0, 0, "floor")
        qh = self.hidden_quant(h)
        logits = self.fc2.forward_codes(qh, self.hidden_quant.positive_step(), False, 0, 0, "floor")
        return logits.view(-1, self.num_layers, self.num_choices)

    @torch.no_grad()
    def program(self, in_step: float, in_signed: bool) -> dict:
        h_step = float(self.hidden_quant.positive_step())
        return {"pool": list(self.pool) if self.pool else None,
                "fc1": _layer_program(self.fc1.integer_constants(in_step, in_signed, h_step), None),
                "fc2": _layer_program(_raw_constants(self.fc2, h_step), None),
                "num_layers": self.num_layers, "num_choices": self.num_choices}


def _raw_constants(layer: DQTLinear, x_step: float) -> IntegerConstants:
    """Integer logits of the controller: raw accumulator plus bias, one shared scale."""
    c = layer.integer_constants(x_step, False, None)
    return IntegerConstants(c.weight, c.bias, None, None, None, False, torch.int32)


def _layer_program(c: IntegerConstants, conv: Optional[dict]) -> dict:
    # Conv weights in channels_last: both backends read [Cout, KH, KW, C/g] without a copy.
    weight = c.weight.contiguous(memory_format=torch.channels_last) if conv else c.weight
    return {"weight": weight, "bias": c.bias, "multiplier": c.multiplier, "shift": c.shift,
            "out_scale": c.out_scale, "relu": c.relu, "out_dtype": _DTYPE_NAMES[c.out_dtype],
            "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in conv.items()} if conv else None}


def _run_layer(p: dict, x: Tensor, act_shift, weight_shift, rule: str) -> Tensor:
    # Program weights are frozen snapshots, so the CPU path may keep their shifted copies.
    kwargs = dict(act_shift=act_shift, weight_shift=weight_shift, bias=p["bias"], relu=p["relu"], shift_rule=rule,
                  cache_weight=True)
    if p["multiplier"] is not None:
        kwargs.update(multiplier=p["multiplier"].to(x.device), shift=p["shift"].to(x.device),
                      out_dtype=_DTYPES[p["out_dtype"]])
    elif p["out_scale"] is not None:
        kwargs.update(out_scale=p["out_scale"].to(x.device))
    kwargs["bias"] = kwargs["bias"].to(x.device)
    weight = p["weight"].to(x.device)
    if p["conv"] is None:
        return ops.int_matmul(x, weight, **kwargs)
    conv = p["conv"]
    return ops.int_conv2d(x, weight, stride=tuple(conv["stride"]), padding=tuple(conv["padding"]),
                          dilation=tuple(conv["dilation"]), groups=conv["groups"], **kwargs)


def run_controller(p: dict, x: Tensor) -> Tensor:
    """Integer controller: chosen candidate index [B, layers] (first maximum of int32 logits)."""
    q = x
    if p["pool"] is not None:
        q = ops.int_avg_pool2d(q, tuple(p["pool"]))
    q = q.reshape(q.shape[0], -1)
    h = _run_layer(p["fc1"], q, 0, 0, "floor")
    logits = _run_layer(p["fc2"], h, 0, 0, "floor")
    return logits.view(-1, p["num_layers"], p["num_choices"]).argmax(dim=-1)


def bitops_from_bits(bits: Tensor, macs: list[int], controller_macs: int = 0) -> Tensor:
    """BitOPs per sample: sum over layers of MACs x weight bits x activation bits, for chosen
    bits [B, layers, (w, a)], plus the controller's MACs at 8 x 8 bits."""
    macs_t = torch.tensor(macs, dtype=torch.float64, device=bits.device)
    return (bits[..., 0].double() * bits[..., 1].double() * macs_t).sum(dim=1) + controller_macs * 64


def _check_input(program: dict, x: Tensor) -> None:
    want = _DTYPES[program["input_dtype"]]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"DQTModel input must be a tensor of {program['input_dtype']} codes, got {type(x).__name__}")
    if x.dtype != want:
        raise TypeError(f"DQTModel input must be {program['input_dtype']} codes (real value = code * input_scale "
                        f"{program['input_scale']}), got dtype {x.dtype}")
    if tuple(x.shape[1:]) != tuple(program["input_shape"]) or x.dim() != len(program["input_shape"]) + 1:
        raise ValueError(f"DQTModel input must have shape [batch, {', '.join(map(str, program['input_shape']))}], "
                         f"got {tuple(x.shape)}")


def run_program(program: dict, x: Tensor) -> tuple[Tensor, Tensor]:
    """The integer-only forward pass: (float32 logits, chosen bits [B, layers])."""
    _check_input(program, x)
    rule = program["shift_rule"]
    names = program["layer_names"]
    B = x.shape[0]
    if program["dynamic"]:
        choice = run_controller(program["controller"], x)
        bits_table = torch.tensor(program["candidate_bits"], device=x.device)
        widths = bits_table[choice]  # [B, layers]; weights and activations share the width
        shifts = {n: (numerics.MASTER_BITS - widths[:, i],) * 2 for i, n in enumerate(names)}
        chosen = torch.stack([widths, widths], dim=-1)
    else:
        static = program["static_bits"]
        shifts = {n: (numerics.MASTER_BITS - static[n][1], numerics.MASTER_BITS - static[n][0]) for n in names}
        chosen = torch.tensor([static[n] for n in names], device=x.device).expand(B, -1, -1)
    values = [x]
    for step in program["steps"]:
        ins = [values[i] for i in step["inputs"]]
        kind = step["kind"]
        if kind == "layer":
            act_shift, weight_shift = shifts[step["name"]]
            out = _run_layer(program["layers"][step["name"]], ins[0], act_shift, weight_shift, rule)
        elif kind == "add":
            a = program["adds"][step["name"]]
            out = ops.int_add(ins[0], ins[1], k1=a["k1"], k2=a["k2"], k3=a["k3"], shift=a["shift"], relu=a["relu"])
        elif kind == "relu":
            out = ins[0].clamp_min(0).to(torch.uint8)
        elif kind == "maxpool":
            g = step["geometry"]
            out = ops.int_max_pool2d(ins[0], tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"]),
                                     tuple(g["dilation"]))
        elif kind == "avgpool":
            g = step["geometry"]
            if g.get("global"):
                out = ops.int_avg_pool2d(ins[0], tuple(ins[0].shape[2:]))
            else:
                out = ops.int_avg_pool2d(ins[0], tuple(g["kernel"]), tuple(g["stride"]), tuple(g["padding"]))
        elif kind == "flatten":
            out = ins[0].reshape(ins[0].shape[0], -1)
        else:
            raise CheckpointError(f"unknown step kind {kind!r} in the integer program")
        values.append(out)
    return values[-1], chosen


class DQTModel(nn.Module):
    """A float model converted for DQT: nested QAT in training, integer-only in eval.

    Use `DQTModel.from_float`. Inputs are master codes (uint8 by default) whose real value is
    ``code * input_scale``. After each forward, `last_bits` holds the (weight, activation) bits
    chosen per sample and layer ``[B, layers, 2]`` and `last_bitops` the BitOPs per sample.
    """

    def __init__(self, steps: list[dict], layers: nn.ModuleDict, quantizers: nn.ModuleDict,
                 controller: Optional[Controller], config: dict) -> None:
        super().__init__()
        self.steps = steps
        self.layers = layers
        self.quantizers = quantizers
        self.controller = controller
        self.config = config
        self.register_buffer("input_step", torch.tensor(float(config["input_scale"])))
        self.layer_names = [s["name"] for s in steps if s["kind"] == "layer"]
        self.candidate_bits = tuple(config["candidate_bits"])
        self.shift_rule = config["shift_rule"]
        self.tau = 1.0
        self.static_bits = {n: (8, 8) for n in self.layer_names}
        self.dynamic = bool(config["dynamic"]) and controller is not None
        self.last_bits: Optional[Tensor] = None
        self.last_bitops: Optional[Tensor] = None
        self._program_cache: Optional[tuple[tuple, dict]] = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_float(
        cls,
        model: nn.Module,
        input_shape: Sequence[int],
        *,
        bits: BitsArg = 8,
        candidate_bits: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
        dynamic: bool = False,
        shift_rule: str = "floor",
        input_scale: float = 1.0 / 255.0,
        input_signed: bool = False,
        controller_hidden: Optional[int] = None,
    ) -> "DQTModel":
        """Convert `model` (Conv2d/Linear + BatchNorm + ReLU, residual adds, pooling, flatten).

        Args:
            model: the float model; its trained weights initialise the master weights.
            input_shape: one sample's shape without the batch, e.g. (3, 32, 32) or (64,).
            bits: static widths: an int (weights = activations), a (w, a) pair, a list with one
                entry per layer, or a dict layer name -> entry (see `layer_names`).
            candidate_bits: the widths the controller (and the consistency term) choose from.
            dynamic: start in dynamic mode (controller-chosen per-sample widths).
            shift_rule: "floor" (the paper's) or "round"; training and inference share it.
            input_scale: real value of one input code; input_signed: int8 instead of uint8 input.
            controller_hidden: hidden units of the controller (default: about 1% of parameters).
        """
        numerics.check_shift_rule(shift_rule)
        cands = _check_bits(candidate_bits)
        input_shape = tuple(int(s) for s in input_shape)
        steps = capture(model)
        shapes, in_shapes = _layer_shapes(model, steps, input_shape)
        layers, quantizers = nn.ModuleDict(), nn.ModuleDict()
        signed = [input_signed]
        macs, elements = {}, {}
        for step in steps:
            src = step.inputs[0]
            if step.kind == "layer":
                float_layer, bn = step.fused["layer"], step.fused["bn"]
                bn_copy = copy.deepcopy(bn) if bn is not None else None
                if isinstance(float_layer, nn.Conv2d):
                    layer = DQTConv2d.from_float(float_layer, bn_copy, step.relu)
                else:
                    layer = DQTLinear.from_float(float_layer, bn_copy, step.relu)
                numerics.check_accumulator(layer.reduction_size(), signed[src], 0, step.name)
                layers[step.name] = layer
                macs[step.name] = layer.macs_per_sample(shapes[step.name])
                elements[step.name] = {"weights": layer.weight.numel(), "inputs": math.prod(in_shapes[step.name]),
                                       "outputs": math.prod(shapes[step.name])}
                if not step.geometry["final"]:
                    quantizers[step.name] = ActQuantizer(signed=not step.relu)
                signed.append(not step.relu)
            elif step.kind == "add":
                quantizers[step.name] = ActQuantizer(signed=not step.relu)
                signed.append(not step.relu)
            elif step.kind == "relu":
                signed.append(False)
            else:
                signed.append(signed[src])
        n_layers = len(layers)
        backbone_params = sum(p.numel() for p in layers.parameters())
        controller = None
        if dynamic or controller_hidden is not None:
            features = _controller_features(input_shape)
            hidden = controller_hidden or max(4, round(0.01 * backbone_params / (features + n_layers * len(cands))))
            controller = Controller(input_shape, n_layers, len(cands), hidden)
        config = {
            "input_shape": list(input_shape), "input_scale": float(input_scale),
            "input_dtype": "int8" if input_signed else "uint8", "candidate_bits": list(cands),
            "shift_rule": shift_rule, "dynamic": bool(dynamic), "macs": macs, "elements": elements,
            "controller": controller.spec() if controller is not None else None,
            "layer_specs": {n: _layer_spec(l) for n, l in layers.items()},
            "quantizer_signed": {n: q.signed for n, q in quantizers.items()},
            "value_signed": signed,
        }
        dqt = cls([s.spec() for s in steps], layers, quantizers, controller, config)
        dqt.set_bits(bits)
        dqt.set_dynamic(dynamic)
        log.info("DQTModel: %d quantized layers, %d residual adds, controller %s", n_layers,
                 sum(s.kind == "add" for s in steps), "none" if controller is None else f"{controller.hidden} hidden")
        return dqt

    # ------------------------------------------------------------------ widths

    def set_bits(self, bits: BitsArg) -> "DQTModel":
        """Static widths (see `from_float`); switches the model to static mode."""
        names = self.layer_names
        if isinstance(bits, dict):
            unknown = set(bits) - set(names)
            if unknown:
                raise ValueError(f"unknown layer names {sorted(unknown)}; layers are {names}")
            entries = [bits.get(n, self.static_bits[n]) for n in names]
        elif isinstance(bits, (list, tuple)) and len(bits) == len(names) and not (
                len(bits) == 2 and all(isinstance(b, int) for b in bits) and len(names) != 2):
            entries = list(bits)
        else:
            entries = [bits] * len(names)
        parsed = {}
        for name, entry in zip(names, entries):
            pair = (entry, entry) if isinstance(entry, int) else tuple(entry)
            if len(pair) != 2 or any(not isinstance(b, int) or not 2 <= b <= numerics.MASTER_BITS for b in pair):
                raise ValueError(f"bits for layer {name} must be an int or (weight, activation) pair in "
                                 f"[2, {numerics.MASTER_BITS}], got {entry!r}")
            parsed[name] = pair
        self.static_bits = parsed
        self.dynamic = False
        return self

    def set_dynamic(self, enabled: bool = True) -> "DQTModel":
        """Let the controller choose per-sample widths (needs a model built with a controller)."""
        if enabled and self.controller is None:
            raise ValueError("this DQTModel has no controller; build it with from_float(..., dynamic=True)")
        self.dynamic = enabled
        return self

    def anneal_temperature(self, progress: float, start: float = 5.0, end: float = 0.5) -> float:
        """Set the Gumbel-Softmax temperature for training progress in [0, 1]: exponential
        decay from `start` to `end` (soft exploration first, near-argmax at the end)."""
        if not 0.0 <= progress <= 1.0 or start <= 0 or end <= 0:
            raise ValueError(f"need progress in [0, 1] and positive temperatures, got {progress}, {start}, {end}")
        self.tau = float(start * (end / start) ** progress)
        return self.tau

    def bitops_per_sample(self, bits: Tensor) -> Tensor:
        """BitOPs per sample from chosen bits [B, layers, 2] (+ the controller at 8x8 bits)."""
        controller_macs = self.controller.macs() if self.dynamic and self.controller is not None else 0
        return bitops_from_bits(bits, [self.config["macs"][n] for n in self.layer_names], controller_macs)

    def uniform_bitops(self, bits: int) -> float:
        """BitOPs of one sample with every layer at `bits` (the budget unit of `--budget`)."""
        return float(sum(self.config["macs"].values()) * bits * bits)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """Logits for input codes x. Training: nested QAT; eval: the integer-only program."""
        if not self.training:
            logits, chosen = run_program(self.integer_program(), x)
            self.last_bits = chosen
            self.last_bitops = self.bitops_per_sample(chosen)
            return logits
        _check_input(self.config, x)
        return self._train_forward(x)

    def _train_forward(self, x: Tensor, force_bits: Optional[int] = None) -> Tensor:
        q_in = x.to(torch.float32)
        in_step = self.input_step
        B = x.shape[0]
        gates = None
        if self.dynamic and force_bits is None:
            logits = self.controller(q_in, in_step, self.config["input_dtype"] == "int8")
            if not bool(torch.isfinite(logits).all()):
                raise FloatingPointError("the controller produced non-finite logits (NaN/inf): training has diverged; "
                                         "lower the learning rate or clip gradients (TrainConfig.clip)")
            gates = gumbel_hard(logits, self.tau, training=self.training)  # [B, L, J]
            bits_table = torch.tensor(self.candidate_bits, dtype=torch.float32, device=x.device)
            chosen_bits = (gates.detach() * bits_table).sum(-1).round().long()  # [B, L]
            soft_bits_sq = (gates * bits_table**2).sum(-1)  # straight-through, for the budget
            macs = torch.tensor([self.config["macs"][n] for n in self.layer_names], dtype=torch.float32,
                                device=x.device)
            self.soft_bitops = (soft_bits_sq * macs).sum(1) + self.controller.macs() * 64
            self.last_bits = torch.stack([chosen_bits, chosen_bits], dim=-1)
        else:
            if force_bits is not None:
                table = {n: (force_bits, force_bits) for n in self.layer_names}
            else:
                table = self.static_bits
            self.last_bits = torch.tensor([table[n] for n in self.layer_names], device=x.device).expand(B, -1, -1)
            self.soft_bitops = None
        self.last_bitops = self.bitops_per_sample(self.last_bits).detach()
        values: list[tuple[Tensor, Tensor, bool]] = [(q_in, in_step, self.config["input_dtype"] == "int8")]
        layer_index = {n: i for i, n in enumerate(self.layer_names)}
        for step in self.steps:
            q, step_size, signed = values[step["inputs"][0]]
            kind = step["kind"]
            if kind == "layer":
                i = layer_index[step["name"]]
                layer = self.layers[step["name"]]
                if gates is not None:
                    k = numerics.MASTER_BITS - self.last_bits[:, i, 0]
                    y = layer.forward_codes(q, step_size, signed, k, k, self.shift_rule, gates[:, i, :],
                                            self.candidate_bits)
                else:
                    wb, ab = (force_bits, force_bits) if force_bits is not None else self.static_bits[step["name"]]
                    y = layer.forward_codes(q, step_size, signed, numerics.MASTER_BITS - ab,
                                            numerics.MASTER_BITS - wb, self.shift_rule)
                if step["geometry"].get("final"):
                    return y
                quant = self.quantizers[step["name"]]
                values.append((quant(y), quant.positive_step(), quant.signed))
            elif kind == "add":
                qb, step_b, _ = values[step["inputs"][1]]
                y = q * step_size + qb * step_b
                if step["relu"]:
                    y = torch.relu(y)
                quant = self.quantizers[step["name"]]
                values.append((quant(y), quant.positive_step(), quant.signed))
            elif kind == "relu":
                values.append((q.clamp_min(0), step_size, False))
            elif kind == "maxpool":
                g = step["geometry"]
                values.append((F.max_pool2d(q, g["kernel"], g["stride"], g["padding"], g["dilation"]), step_size, signed))
            elif kind == "avgpool":
                g = step["geometry"]
                kernel = tuple(q.shape[2:]) if g.get("global") else tuple(g["kernel"])
                stride = kernel if g.get("global") else tuple(g["stride"])
                padding = (0, 0) if g.get("global") else tuple(g["padding"])
                values.append((_avg_pool_codes(q, kernel, stride, padding), step_size, signed))
            elif kind == "flatten":
                values.append((q.flatten(1), step_size, signed))
        raise UnsupportedLayerError("the model has no final layer")  # capture() guarantees one

    @torch.no_grad()
    def simulated_forward(self, x: Tensor) -> Tensor:
        """The training-path computation on eval statistics (batch-norm running stats, frozen
        quantizer ranges, argmax controller): what training believes the model computes.
        Compare with the integer eval (`agreement`)."""
        _check_input(self.config, x)
        was_training = self.training
        self.train(False)
        try:
            return self._train_forward(x)
        finally:
            self.train(was_training)

    @torch.no_grad()
    def agreement(self, x: Tensor, batch_size: int = 256) -> float:
        """Top-1 agreement between `simulated_forward` and the integer-only eval on inputs x."""
        was_training = self.training
        self.eval()
        same = 0
        try:
            for chunk in x.split(batch_size):
                same += int((self.simulated_forward(chunk).argmax(1) == self(chunk).argmax(1)).sum())
        finally:
            self.train(was_training)
        return same / max(len(x), 1)

    def forward_at_bits(self, x: Tensor, bits: int) -> Tensor:
        """Training-path logits with every layer at `bits` (the consistency term's paths)."""
        _check_input(self.config, x)
        return self._train_forward(x, force_bits=bits)

    # ------------------------------------------------------------------ objective

    def dqt_loss(self, x: Tensor, target: Tensor, *, alpha: float = 1.0, beta: float = 0.0,
                 target_bitops: Optional[float] = None) -> dict:
        """Task loss + alpha * mean task loss over every candidate width + beta * budget term.

        The budget term is ``(mean BitOPs / target - 1)^2`` over the controller's per-sample
        choices (straight-through); it applies in dynamic mode with a target.
        """
        logits = self(x)
        task = F.cross_entropy(logits, target)
        bitops_now = self.last_bitops
        soft = getattr(self, "soft_bitops", None)
        consistency = torch.zeros((), device=logits.device)
        if alpha > 0:
            consistency = torch.stack([F.cross_entropy(self.forward_at_bits(x, b), target)
                                       for b in self.candidate_bits]).mean()
        budget = torch.zeros((), device=logits.device)
        if beta > 0 and soft is not None and target_bitops:
            budget = (soft.mean() / target_bitops - 1.0) ** 2
        total = task + alpha * consistency + beta * budget
        self.last_bitops = bitops_now
        return {"loss": total, "task": task.detach(), "consistency": consistency.detach(),
                "budget": budget.detach(), "logits": logits.detach()}

    # ------------------------------------------------------------------ integer program

    @torch.no_grad()
    def integer_program(self) -> dict:
        """Integer constants of every layer, cached while no parameter, buffer or width changes
        (tensor version counters see optimizer steps and load_state_dict)."""
        key = (self.dynamic, tuple(self.static_bits.items()),
               tuple((id(t), t._version) for t in itertools.chain(self.parameters(), self.buffers())))
        if self._program_cache is not None and self._program_cache[0] == key:
            return self._program_cache[1]
        value_step = [float(self.input_step)]
        program_layers, adds = {}, {}
        for step in self.steps:
            src = step["inputs"][0]
            x_step, x_signed = value_step[src], self.config["value_signed"][src]
            if step["kind"] == "layer":
                layer = self.layers[step["name"]]
                final = step["geometry"].get("final")
                out_step = None if final else float(self.quantizers[step["name"]].positive_step())
                program_layers[step["name"]] = _layer_program(layer.integer_constants(x_step, x_signed, out_step),
                                                              layer.conv)
                value_step.append(out_step if out_step is not None else float("nan"))
            elif step["kind"] == "add":
                quant = self.quantizers[step["name"]]
                out_step = float(quant.positive_step())
                c = numerics.add_constants(x_step, value_step[step["inputs"][1]], out_step)
                adds[step["name"]] = {"k1": c.k1, "k2": c.k2, "k3": c.k3, "shift": c.shift, "relu": step["relu"]}
                value_step.append(out_step)
            else:
                value_step.append(x_step)
        program = {
            "steps": self.steps, "layers": program_layers, "adds": adds, "layer_names": list(self.layer_names),
            "shift_rule": self.shift_rule, "candidate_bits": list(self.candidate_bits),
            "input_shape": list(self.config["input_shape"]), "input_dtype": self.config["input_dtype"],
            "input_scale": self.config["input_scale"], "dynamic": self.dynamic,
            "static_bits": {n: list(b) for n, b in self.static_bits.items()},
            "controller": self.controller.program(float(self.input_step), self.config["input_dtype"] == "int8")
            if self.dynamic else None,
        }
        self._program_cache = (key, program)
        return program

    def freeze(self) -> "FrozenDQTModel":
        """A snapshot of the integer-only model in its current mode (static widths or dynamic)."""
        return FrozenDQTModel(_clone_program(self.integer_program()), dict(self.config["macs"]),
                              self.controller.macs() if self.dynamic else 0)

    # ------------------------------------------------------------------ save / load

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file: architecture, master weights, step sizes, controller, and the frozen
        integer programs of static 8-bit and (if present) dynamic mode. Written atomically."""
        was_training, static, dynamic = self.training, dict(self.static_bits), self.dynamic
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        self.eval()
        programs = {}
        try:
            self.dynamic = False
            programs["static"] = _clone_program(self.integer_program())
            if self.controller is not None:
                self.set_dynamic(True)
                programs["dynamic"] = _clone_program(self.integer_program())
        finally:
            self.static_bits, self.dynamic = static, dynamic
            self.train(was_training)
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config, "steps": self.steps,
                   "state_dict": state, "programs": programs, "static_bits": {n: list(b) for n, b in static.items()},
                   "dynamic": dynamic}
        _atomic_save(payload, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location: str = "cpu") -> "DQTModel":
        """Rebuild a saved DQTModel (no code from the file is executed: weights_only loading)."""
        payload = _load_payload(path, map_location)
        try:
            config, steps = payload["config"], payload["steps"]
            layers = nn.ModuleDict({n: _layer_from_spec(s) for n, s in config["layer_specs"].items()})
            quantizers = nn.ModuleDict({n: ActQuantizer(signed) for n, signed in config["quantizer_signed"].items()})
            controller = None
            if config["controller"] is not None:
                c = config["controller"]
                controller = Controller(c["input_shape"], c["num_layers"], c["num_choices"], c["hidden"])
            model = cls(steps, layers, quantizers, controller, config)
            model.load_state_dict(payload["state_dict"])
            model.set_bits({n: tuple(b) for n, b in payload["static_bits"].items()})
            if payload["dynamic"]:
                model.set_dynamic(True)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{os.fspath(path)} is not a valid DQTModel checkpoint: {exc}") from exc
        return model


class FrozenDQTModel(nn.Module):
    """The integer-only model: `forward(codes)` returns float32 logits; no float weights."""

    def __init__(self, program: dict, macs: dict, controller_macs: int = 0) -> None:
        super().__init__()
        self.program = program
        self.macs = macs
        self.controller_macs = controller_macs
        self.last_bits: Optional[Tensor] = None
        self.last_bitops: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        logits, chosen = run_program(self.program, x)
        self.last_bits = chosen
        self.last_bitops = bitops_from_bits(chosen, [self.macs[n] for n in self.program["layer_names"]],
                                            self.controller_macs)
        return logits

    def save(self, path: Union[str, os.PathLike]) -> None:
        _atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "frozen": self.program, "macs": self.macs,
                      "controller_macs": self.controller_macs}, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], mode: Optional[str] = None) -> "FrozenDQTModel":
        """Load a frozen model, or the frozen `mode` ("static" or "dynamic") of a DQTModel file."""
        payload = _load_payload(path, "cpu")
        try:
            if "frozen" in payload:
                return cls(payload["frozen"], payload["macs"], payload["controller_macs"])
            chosen = mode or ("dynamic" if payload["dynamic"] else "static")
            program = payload["programs"][chosen]
            ctrl = payload["config"]["controller"]
            ctrl_macs = 0
            if chosen == "dynamic" and ctrl is not None:
                ctrl_macs = sum(program["controller"][k]["weight"].numel() for k in ("fc1", "fc2"))
            return cls(program, payload["config"]["macs"], ctrl_macs)
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{os.fspath(path)} has no frozen program {mode!r}: {exc}") from exc


# ---------------------------------------------------------------------- helpers


def _controller_features(input_shape: tuple[int, ...]) -> int:
    if len(input_shape) == 3:
        C, H, W = input_shape
        ph, pw = max(H // 4, 1), max(W // 4, 1)
        return C * (H // ph) * (W // pw)
    return int(math.prod(input_shape))


def _layer_spec(layer: nn.Module) -> dict:
    bn = layer.bn
    return {
        "type": "conv" if isinstance(layer, DQTConv2d) else "linear",
        "weight_shape": list(layer.weight.shape), "bias": layer.bias is not None, "relu": layer.relu,
        "per_channel": layer.per_channel,
        "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.conv.items()} if layer.conv else None,
        "bn": None if bn is None else {"dim": 2 if isinstance(bn, nn.BatchNorm2d) else 1, "eps": bn.eps,
                                       "momentum": bn.momentum, "affine": bn.affine},
    }


def _layer_from_spec(spec: dict) -> nn.Module:
    weight = torch.zeros(spec["weight_shape"])
    bias = torch.zeros(spec["weight_shape"][0]) if spec["bias"] else None
    bn = None
    if spec["bn"] is not None:
        cls = nn.BatchNorm2d if spec["bn"]["dim"] == 2 else nn.BatchNorm1d
        bn = cls(spec["weight_shape"][0], eps=spec["bn"]["eps"], momentum=spec["bn"]["momentum"],
                 affine=spec["bn"]["affine"])
    if spec["type"] == "conv":
        c = spec["conv"]
        return DQTConv2d(weight, bias, bn, spec["relu"], c["stride"], c["padding"], c["dilation"], c["groups"],
                         spec["per_channel"])
    return DQTLinear(weight, bias, bn, spec["relu"], spec["per_channel"])


def _layer_shapes(model: nn.Module, steps: list[Step], input_shape) -> tuple[dict, dict]:
    """Output and input shapes of every conv/linear layer for one sample (a float forward with hooks)."""
    shapes, in_shapes, hooks = {}, {}, []

    def record(name):
        def hook(mod, inp, out):
            shapes[name] = tuple(out.shape[1:])
            in_shapes[name] = tuple(inp[0].shape[1:])
        return hook

    for step in steps:
        if step.kind == "layer":
            hooks.append(step.fused["layer"].register_forward_hook(record(step.name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    except Exception as exc:
        raise ValueError(f"the float model does not accept input_shape {tuple(input_shape)}: {exc}") from exc
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return shapes, in_shapes


def _clone_program(program: dict) -> dict:
    def clone(obj):
        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu().clone()
        if isinstance(obj, dict):
            return {k: clone(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clone(v) for v in obj]
        return obj

    return clone(program)


def _atomic_save(payload: dict, path: Union[str, os.PathLike]) -> None:
    """Write to a temporary file and rename, so an interrupted save never clobbers a good file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def _load_payload(path: Union[str, os.PathLike], map_location) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, io.UnsupportedOperation, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or not a torch checkpoint: {exc}") from exc
    except Exception as exc:  # pickle.UnpicklingError for foreign objects under weights_only
        raise CheckpointError(f"{path} cannot be loaded safely (weights_only): {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dqt-triton checkpoint (format tag missing)")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this dqt-triton reads "
                              f"{FORMAT_VERSION}")
    return payload


__all__ = ["DQTModel", "FrozenDQTModel", "Controller", "run_program"]
