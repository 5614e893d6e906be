"""`DQTModel`: a float model turned into a nested-quantization model with a width controller.

Training mode runs the integer kernels with straight-through gradients (`dqt_triton.quant`);
eval mode and `freeze()` run the integer-only program: master codes in, batch norm folded into
dyadic requantization, integer residual adds and pooling, the controller in integers, one
dequantization at the logits. Eval and frozen outputs are the same integers by construction
(one `run_program` executes both), and the tests hold them to exact equality after a save and
load round trip.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint, numerics, ops
from .errors import CheckpointError, UnsupportedLayerError
from .graph import capture
from .nn import ActQuantizer, DQTConv2d, DQTLinear, IntegerConstants, share_weight_codes
from .steps import KINDS, Build, CodeValue
from .steps.affine import extra_from_spec
from .steps.pool import avg_pool_codes as _avg_pool_codes
from .steps.layer import DTYPES as _DTYPES, layer_program as _layer_program, run_layer as _run_layer
from .quant import gumbel_hard

log = logging.getLogger(__name__)

Tensor = torch.Tensor
BitsArg = Union[int, tuple[int, int], dict, Sequence]
FORMAT = "dqt-triton-checkpoint"
FORMAT_VERSION = 3  # 2: per-width batch norm, governed layers, budget codes; 3: signed prices, 256 codes


def _check_bits(candidate_bits: Sequence[int]) -> tuple[int, ...]:
    bits = tuple(int(b) for b in candidate_bits)
    if not bits or len(set(bits)) != len(bits) or any(not 2 <= b <= numerics.MASTER_BITS for b in bits):
        raise ValueError(f"candidate bit-widths must be distinct integers in [2, {numerics.MASTER_BITS}], "
                         f"got {candidate_bits!r}")
    return tuple(sorted(bits))


class Controller(nn.Module):
    """Early features -> logits over the candidate widths per head, minus a price for bits.

    One head per governed layer ("layer" granularity) or one head whose width every governed
    layer takes ("sample" granularity, `num_layers` = 1).

    DQNet-style, the controller reads the codes of the first layer's output (or the network
    input when the first layer is governed too), average-pooled to at most 4x4 (integer
    pooling), flattened; Linear-BatchNorm-ReLU-Linear gives each governed layer's logits z over
    the candidate widths. The width chosen is the argmax of ``z - price * kappa[layer] *
    (bits / 4)^2``: `price` comes from the budget code (one model, a budget chosen at run time),
    kappa is learned per layer. The last layer shares one weight step across outputs, so its
    integer logits compare directly; the integer program subtracts the price as an int64 offset
    table and takes the argmax in integers.
    """

    def __init__(self, feature_shape: Sequence[int], num_layers: int, num_choices: int, hidden: int,
                 candidate_bits: Sequence[int] = ()) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.num_layers, self.num_choices, self.hidden = num_layers, num_choices, hidden
        self.pool = _controller_pool(self.feature_shape)
        fc1 = nn.Linear(_controller_features(self.feature_shape), hidden)
        # Default init: the shared weight step (clip) of fc2 is set from these weights, and a
        # small init would cap the logits' range for good.
        fc2 = nn.Linear(hidden, num_layers * num_choices)
        nn.init.zeros_(fc2.bias)
        # The batch norm keeps the hidden units inside their clip range: a saturated unit passes
        # no gradient, and without it the whole hidden layer saturated within an epoch.
        self.fc1 = DQTLinear.from_float(fc1, nn.BatchNorm1d(hidden), relu=True)
        self.fc2 = DQTLinear.from_float(fc2, per_channel=False)
        self.hidden_quant = ActQuantizer(signed=False)
        bits = torch.tensor([float(b) for b in candidate_bits] or [8.0] * num_choices)
        self.register_buffer("width_cost", (bits / 4.0) ** 2)
        self.log_kappa = nn.Parameter(torch.zeros(num_layers))

    def macs(self) -> int:
        return self.fc1.weight.numel() + self.fc2.weight.numel()

    def spec(self) -> dict:
        return {"feature_shape": list(self.feature_shape), "num_layers": self.num_layers,
                "num_choices": self.num_choices, "hidden": self.hidden}

    def price_offsets(self, price: Tensor) -> Tensor:
        """[B, layers, choices] amounts subtracted from the logits for per-sample prices [B]."""
        return price.view(-1, 1, 1) * torch.exp(self.log_kappa).view(1, -1, 1) * self.width_cost.view(1, 1, -1)

    def forward(self, q_feat: Tensor, feat_step: Tensor, feat_signed: bool, price: Tensor) -> Tensor:
        """Float logits net of the price, [B, layers, choices], from feature codes."""
        q = q_feat
        if self.pool is not None:
            q = _avg_pool_codes(q, self.pool, self.pool, (0, 0))
        h = self.fc1.forward_codes(q.flatten(1), feat_step, feat_signed, 0, 0, "floor")
        qh = self.hidden_quant(h)
        logits = self.fc2.forward_codes(qh, self.hidden_quant.positive_step(), False, 0, 0, "floor")
        return logits.view(-1, self.num_layers, self.num_choices) - self.price_offsets(price)

    @torch.no_grad()
    def program(self, feat_step: float, feat_signed: bool, price: float) -> dict:
        h_step = float(self.hidden_quant.positive_step())
        fc2 = _raw_constants(self.fc2, h_step)
        logit_unit = h_step * float(self.fc2.weight_steps()[0])  # real value of one int32 logit unit
        price_t = torch.tensor([float(price)], device=self.log_kappa.device)
        offsets = torch.round(self.price_offsets(price_t)[0].double() / logit_unit)
        if not bool(torch.isfinite(offsets).all()) or float(offsets.abs().max()) > 2.0**62:
            raise ValueError(f"controller price offsets are not representable (price {price}, logit unit "
                             f"{logit_unit}); training diverged?")
        return {"pool": list(self.pool) if self.pool else None,
                "fc1": _layer_program(self.fc1.integer_constants(feat_step, feat_signed, h_step), None),
                "fc2": _layer_program(fc2, None), "price_offsets": offsets.to(torch.int64),
                "num_layers": self.num_layers, "num_choices": self.num_choices}


CONTROLLER_GRANULARITIES = ("layer", "sample")
IMITATION_SOURCES = ("holdout", "sandwich", "teacher")
BUDGET_LEVELS = 256  # budget codes 0 (largest price, fewest bits) .. 255 (most negative price, most bits)
PRICE_LIMIT = 10.0  # |price| (loss per uniform-4 BitOPs) at the two ends of the code range
PRICE_CURVE = 12.0  # sinh spacing: log-spaced over ~5 decades on each side of zero


def budget_price(code):
    """Price of a budget code (a float, or a tensor of codes), decreasing in the code.

    ``PRICE_LIMIT * sinh(a t) / sinh(a)`` with ``t = 1 - 2 code / (BUDGET_LEVELS - 1)``: codes
    below the middle put a positive price on bits (log-spaced from 10 down to ~1e-5), codes above
    it a negative one (bits are rewarded), so the run-time budget reaches from the narrowest to
    the widest candidate instead of stopping at whatever the bare logits prefer.
    """
    if isinstance(code, torch.Tensor):  # float64 like the scalar path, then float32
        t = 1.0 - 2.0 * code.to(torch.float64) / (BUDGET_LEVELS - 1)
        return (PRICE_LIMIT * torch.sinh(PRICE_CURVE * t) / math.sinh(PRICE_CURVE)).to(torch.float32)
    t = 1.0 - 2.0 * code / (BUDGET_LEVELS - 1)
    return PRICE_LIMIT * math.sinh(PRICE_CURVE * t) / math.sinh(PRICE_CURVE)


def _controller_pool(shape: tuple[int, ...]) -> Optional[tuple[int, int]]:
    if len(shape) == 3:
        return max(shape[1] // 4, 1), max(shape[2] // 4, 1)
    return None


def _controller_features(shape: tuple[int, ...]) -> int:
    pool = _controller_pool(shape)
    if pool is not None:
        return shape[0] * (shape[1] // pool[0]) * (shape[2] // pool[1])
    return int(math.prod(shape))


def _raw_constants(layer: DQTLinear, x_step: float) -> IntegerConstants:
    """Integer logits of the controller: raw accumulator plus bias, one shared scale."""
    c = layer.integer_constants(x_step, False, None)
    return IntegerConstants(c.weight, c.bias, None, None, None, False, torch.int32)


def _device_tensor(cache: dict, key: str, make) -> Tensor:
    """A constant of the program made once per device (not a host-to-device copy per call)."""
    t = cache.get(key)
    if t is None:
        t = cache[key] = make()
    return t


def run_controller(p: dict, x: Tensor, cache: Optional[dict] = None) -> Tensor:
    """Integer controller on feature codes x: chosen candidate index [B, governed layers]
    (first maximum of the int32 logits minus the price offsets)."""
    cache = {} if cache is None else cache
    q = x
    if p["pool"] is not None:
        q = ops.int_avg_pool2d(q, tuple(p["pool"]))
    q = q.flatten(1)
    h = _run_layer(p["fc1"], q, 0, 0, "floor", cache, "controller.fc1")
    logits = _run_layer(p["fc2"], h, 0, 0, "floor", cache, "controller.fc2").view(-1, p["num_layers"],
                                                                                  p["num_choices"])
    offsets = _device_tensor(cache, "controller.price_offsets", lambda: p["price_offsets"].to(x.device))
    return (logits.to(torch.int64) - offsets).argmax(dim=-1)


def bitops_from_bits(bits: Tensor, macs: Union[list[int], Tensor], controller_macs: int = 0) -> Tensor:
    """BitOPs per sample: sum over layers of MACs x weight bits x activation bits, for chosen
    bits [B, layers, (w, a)], plus the controller's MACs at 8 x 8 bits. `macs` may be a float64
    tensor already on the bits' device."""
    macs_t = macs if isinstance(macs, Tensor) else torch.tensor(macs, dtype=torch.float64, device=bits.device)
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


def _check_finite_float_model(model: nn.Module, input_scale) -> None:
    """Refuse NaN/inf at the boundary, where the cause is still visible."""
    if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) or not math.isfinite(input_scale) \
            or input_scale <= 0:
        raise ValueError(f"input_scale must be a finite positive number (the real value of one input code), "
                         f"got {input_scale!r}")
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"the float model's {kind} {name!r} has {bad} non-finite value(s) (NaN or inf); "
                                 "a diverged or damaged float model cannot be converted")


def _check_nonempty(x: Tensor) -> None:
    # Eval returns empty logits for an empty batch, as torch layers do; a training step has no
    # batch statistics and no loss to take from zero samples.
    if x.shape[0] == 0:
        raise ValueError("a training batch needs at least one sample, got an empty batch (eval mode accepts one)")


class _RunPass:
    """What the step kinds' `run` share during one `run_program` call."""

    def __init__(self, program: dict, x: Tensor, cache: dict) -> None:
        self.program, self.x, self.cache = program, x, cache
        self.rule = program["shift_rule"]
        self.fixed = {n: tuple(b) for n, b in program["static_bits"].items()}
        self.governed = {n: i for i, n in enumerate(program["governed"])} if program["dynamic"] else {}
        self.widths: Optional[Tensor] = None  # [B, governed], once the controller has run
        self.values: list[Tensor] = []

    def shifts(self, name: str):
        """(activation shift, weight shift) of layer `name`: per sample for a governed layer
        (the controller runs on its source value when the first governed layer needs it)."""
        if name in self.governed:
            if self.widths is None:
                p = self.program
                choice = run_controller(p["controller"], self.values[p["controller_source"]], self.cache)
                candidates = _device_tensor(self.cache, "candidate_bits",
                                            lambda: torch.tensor(p["candidate_bits"], device=self.x.device))
                self.widths = candidates[choice]
                if self.widths.shape[1] != len(self.governed):  # one head for every governed layer
                    self.widths = self.widths.expand(-1, len(self.governed))
            k = numerics.MASTER_BITS - self.widths[:, self.governed[name]]
            return k, k
        wb, ab = self.fixed[name]
        return numerics.MASTER_BITS - ab, numerics.MASTER_BITS - wb


def run_program(program: dict, x: Tensor, cache: Optional[dict] = None) -> tuple[Tensor, Tensor]:
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


def run_program_values(program: dict, x: Tensor, cache: Optional[dict] = None,
                       given: Optional[dict] = None) -> tuple[Tensor, Tensor, list]:
    """`run_program`, also returning every value of the pass (index 0 the input, i + 1 the
    output codes of step i). `given` maps value indices to codes already computed for the same
    inputs (a cheaper pass's values that this program would compute identically: see
    `policy.reusable_values`); those steps are not run again."""
    _check_input(program, x)
    cache = {} if cache is None else cache
    given = given or {}
    names = program["layer_names"]
    B = x.shape[0]
    fixed = {n: tuple(b) for n, b in program["static_bits"].items()}
    run = _RunPass(program, x, cache)
    values = run.values
    values.append(x)
    for index, step in enumerate(program["steps"]):
        if index + 1 in given:
            values.append(given[index + 1])
            continue
        kind = KINDS.get(step["kind"])
        if kind is None:
            raise CheckpointError(f"unknown step kind {step['kind']!r} in the integer program")
        consts = program[kind.program_key][step["name"]] if kind.program_key else None
        values.append(kind.run(step, [values[i] for i in step["inputs"]], consts, run))
    widths = run.widths
    fixed_bits = _device_tensor(cache, "fixed_bits", lambda: torch.tensor([fixed[n] for n in names], device=x.device))
    chosen = fixed_bits.expand(B, -1, -1).clone()
    if widths is not None:
        idx = _device_tensor(cache, "governed_index", lambda: torch.tensor([names.index(n) for n in program["governed"]],
                                                                           device=x.device))
        chosen[:, idx] = widths.unsqueeze(-1).expand(-1, -1, 2)
    return values[-1], chosen, values


class _TrainPass:
    """What the step kinds' `train` share during one training-path forward."""

    def __init__(self, model: "DQTModel", fixed: dict, governed: dict) -> None:
        self.model, self.fixed, self.governed = model, fixed, governed
        self.gates: Optional[Tensor] = None  # [B, governed, candidates], once the controller has run
        self.widths: Optional[Tensor] = None


class DQTModel(nn.Module):
    """A float model converted for DQT: nested QAT in training, integer-only in eval.

    Use `DQTModel.from_float`. Inputs are master codes (uint8 by default) whose real value is
    ``code * input_scale``. After each forward, `last_bits` holds the (weight, activation) bits
    chosen per sample and layer ``[B, layers, 2]`` and `last_bitops` the BitOPs per sample.

    The first and last layers stay at `edge_bits` (8 by default, the LSQ/DQNet/HAWQ convention);
    the other layers are *governed*: `set_bits(b)` puts them at b bits, and in dynamic mode the
    controller picks their widths per sample. `budget_code` (0 .. BUDGET_LEVELS-1, larger = more
    bits) is the deployment-time budget the controller is conditioned on; `calibrate_budget`
    finds the code that meets a BitOPs target.
    """

    def __init__(self, steps: list[dict], layers: nn.ModuleDict, quantizers: nn.ModuleDict,
                 controller: Optional[Controller], config: dict, extras: Optional[nn.ModuleDict] = None) -> None:
        super().__init__()
        self.steps = steps
        self.layers = layers
        self.quantizers = quantizers
        self.extras = extras if extras is not None else nn.ModuleDict()  # steps' other modules (a standalone BN)
        self.controller = controller
        self.config = config
        self.register_buffer("input_step", torch.tensor(float(config["input_scale"])))
        self.layer_names = [s["name"] for s in steps if s["kind"] == "layer"]
        self.governed = list(config["governed"])
        self.edge_bits = config["edge_bits"]
        self.candidate_bits = tuple(config["candidate_bits"])
        self.shift_rule = config["shift_rule"]
        self.tau = 1.0
        # Training-path choice, not saved: how the task loss reaches the controller's gates
        # (quant.GATE_GRADIENTS; "all" costs one candidate pass per width per governed layer, "local" two).
        self.gate_gradients = "all"
        self.budget_code = BUDGET_LEVELS // 2
        self.static_bits = {n: (8, 8) for n in self.layer_names}
        self.dynamic = bool(config["dynamic"]) and controller is not None
        self.last_bits: Optional[Tensor] = None
        self.last_bitops: Optional[Tensor] = None
        self.soft_bitops: Optional[Tensor] = None
        self.controller_logits: Optional[Tensor] = None
        # Calibrated width policies (`policy.PolicyTable.to_dict()`), saved with the checkpoint.
        self.policies: Optional[dict] = None
        self._program_cache: Optional[tuple[tuple, dict]] = None
        # (program, {device: run_program cache}): layers validated and placed per device once.
        self._run_caches: tuple[Optional[dict], dict] = (None, {})

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
        shift_rule: str = "round",
        input_scale: float = 1.0 / 255.0,
        input_signed: bool = False,
        controller_hidden: Optional[int] = None,
        edge_bits: Optional[int] = 8,
        bn_per_width: bool = True,
        controller_granularity: str = "layer",
    ) -> "DQTModel":
        """Convert `model` (Conv2d/Linear + BatchNorm + ReLU, residual adds, pooling, flatten).

        Args:
            model: the float model; its trained weights initialise the master weights.
            input_shape: one sample's shape without the batch, e.g. (3, 32, 32) or (64,).
            bits: static widths: an int (weights = activations), a (w, a) pair, a list with one
                entry per layer, or a dict layer name -> entry (see `layer_names`).
            candidate_bits: the widths the controller (and the consistency term) choose from.
            dynamic: start in dynamic mode (controller-chosen per-sample widths).
            shift_rule: "round" (default, see the README's evidence) or "floor" (the paper's);
                training and inference share it.
            input_scale: real value of one input code; input_signed: int8 instead of uint8 input.
            controller_hidden: hidden units of the controller (default: about 1% of parameters).
            edge_bits: width of the first and last layers, which the controller does not govern;
                None governs every layer.
            bn_per_width: one batch norm per width (switchable batch norm), folded into per-width
                integer constants; False shares one batch norm across widths.
            controller_granularity: "layer", the controller picks a width per governed layer and
                sample; "sample", one width per sample for every governed layer (the input picks
                one of the uniform widths the consistency term trains).
        """
        numerics.check_shift_rule(shift_rule)
        cands = _check_bits(candidate_bits)
        if controller_granularity not in CONTROLLER_GRANULARITIES:
            raise ValueError(f"controller_granularity must be one of {CONTROLLER_GRANULARITIES}, "
                             f"got {controller_granularity!r}")
        _check_finite_float_model(model, input_scale)
        if edge_bits is not None and not (isinstance(edge_bits, int) and 2 <= edge_bits <= numerics.MASTER_BITS):
            raise ValueError(f"edge_bits must be None or an int in [2, {numerics.MASTER_BITS}], got {edge_bits!r}")
        input_shape = tuple(int(s) for s in input_shape)
        steps = capture(model, input_shape)
        build = Build(bn_per_width, nn.ModuleDict(), nn.ModuleDict(), signed=[input_signed])
        for step in steps:
            build.signed.append(KINDS[step.kind].build(step, build))
        layers, quantizers, signed, macs, elements = (build.layers, build.quantizers, build.signed, build.macs,
                                                     build.elements)
        names = [s.name for s in steps if s.kind == "layer"]
        edges = {names[0], names[-1]} if edge_bits is not None else set()
        governed = [n for n in names if n not in edges]
        # DQNet-style early features: the first layer's output when it is not governed.
        first_step = next(i for i, s in enumerate(steps) if s.kind == "layer")
        source = first_step + 1 if edge_bits is not None and len(names) > 1 else 0
        feature_shape = steps[first_step].fused["out_shape"] if source else input_shape
        backbone_params = sum(p.numel() for p in layers.parameters())
        controller = None
        if dynamic or controller_hidden is not None:
            if not governed:
                raise ValueError(f"the model has {len(names)} layers and edge_bits={edge_bits} fixes the first and "
                                 "last: no layer is left for the controller; pass edge_bits=None")
            features = _controller_features(feature_shape)
            hidden = controller_hidden or max(8, round(0.01 * backbone_params / (features + len(governed) * len(cands))))
            heads = 1 if controller_granularity == "sample" else len(governed)
            controller = Controller(feature_shape, heads, len(cands), hidden, cands)
        config = {
            "input_shape": list(input_shape), "input_scale": float(input_scale),
            "input_dtype": "int8" if input_signed else "uint8", "candidate_bits": list(cands),
            "shift_rule": shift_rule, "dynamic": bool(dynamic), "macs": macs, "elements": elements,
            "controller": controller.spec() if controller is not None else None,
            "layer_specs": {n: _layer_spec(l) for n, l in layers.items()},
            "quantizer_signed": {n: q.signed for n, q in quantizers.items()},
            "value_signed": signed, "edge_bits": edge_bits, "governed": governed, "controller_source": source,
        }
        config["extra_specs"] = build.extra_specs
        dqt = cls([s.spec() for s in steps], layers, quantizers, controller, config, build.extras)
        dqt.set_bits(bits)
        dqt.set_dynamic(dynamic)
        log.info("DQTModel: %d quantized layers (%d governed), %d residual adds, controller %s", len(names),
                 len(governed), sum(s.kind == "add" for s in steps),
                 "none" if controller is None else f"{controller.hidden} hidden")
        return dqt

    # ------------------------------------------------------------------ widths

    def set_bits(self, bits: BitsArg) -> "DQTModel":
        """Static widths (see `from_float`); switches the model to static mode.

        An int or a (w, a) pair applies to the governed layers; the first and last layers keep
        `edge_bits`. A list (one entry per layer) or a dict (layer name -> entry) sets exactly
        the layers it names, edges included.
        """
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
            edge = self.edge_bits
            entries = [bits if n in self.governed or edge is None else edge for n in names]
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

    @torch.no_grad()
    def calibrate_budget(self, x: Tensor, target_bitops: float, batch_size: int = 512) -> int:
        """Largest budget code whose mean BitOPs per sample on `x` (integer eval, dynamic mode)
        is at most `target_bitops`; sets and returns it (0 if even code 0 exceeds it)."""
        was_training, dynamic, code = self.training, self.dynamic, self.budget_code
        self.eval()
        self.set_dynamic(True)

        def mean_bitops(c: int) -> float:
            self.budget_code = c
            total = 0.0
            for chunk in x.split(batch_size):
                self(chunk)
                total += float(self.last_bitops.sum())
            return total / max(len(x), 1)

        # Bisection: a lower price moves each layer's argmax of (logit - price * cost) to costlier
        # widths only, so BitOPs never fall as the code grows.
        lo, hi = 0, BUDGET_LEVELS - 1
        if mean_bitops(hi) <= target_bitops:
            lo = hi
        else:
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if mean_bitops(mid) <= target_bitops:
                    lo = mid
                else:
                    hi = mid
        self.budget_code = lo
        self.dynamic = dynamic
        self.train(was_training)
        return lo

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

    def width_norm_layers(self) -> list[nn.Module]:
        """The governed layers that hold a batch norm per width (``bn_per_width``)."""
        return [self.layers[n] for n in self.governed if getattr(self.layers[n], "width_bns", None) is not None]

    @torch.no_grad()
    def recalibrate_norms(self, x: Tensor, bits: Optional[Sequence[int]] = None, batch_size: int = 256) -> list[int]:
        """Re-estimate each width's batch-norm statistics from inputs `x`, as deployed.

        For every width b (default: every candidate), the governed layers' batch norms of
        weight shift 8 - b forget their running statistics and take the exact average over `x`
        of the batch statistics of uniform b-bit forward passes (each batch normalized with its
        own statistics, as in training; slimmable networks' post-training calibration). Only the
        statistics change: weights, steps, affine parameters, the controller and the edge layers'
        norms stay as they are. Needs ``bn_per_width``; returns the widths recalibrated.
        """
        _check_input(self.config, x)
        _check_nonempty(x)
        widths = list(self.candidate_bits if bits is None else bits)
        for b in widths:
            if b not in self.candidate_bits:
                raise ValueError(f"recalibrate_norms: {b} bits is not a candidate width {self.candidate_bits}")
        layers = self.width_norm_layers()
        if not layers:
            raise ValueError("recalibrate_norms: no governed layer has a batch norm per width (bn_per_width)")
        was_training = self.training
        self.train(False)
        try:
            with share_weight_codes():
                for b in widths:
                    norms = [layer.width_bns[numerics.MASTER_BITS - b] for layer in layers]
                    momenta = [bn.momentum for bn in norms]
                    for bn in norms:
                        bn.reset_running_stats()
                        bn.momentum = None  # cumulative average over the batches
                        bn.train(True)
                    try:
                        for chunk in x.split(batch_size):
                            self._train_forward(chunk, force_bits=b)
                    finally:
                        for bn, momentum in zip(norms, momenta):
                            bn.momentum = momentum
                            bn.train(False)
        finally:
            self.train(was_training)
        return widths

    def bitops_per_sample(self, bits: Tensor) -> Tensor:
        """BitOPs per sample from chosen bits [B, layers, 2] (+ the controller at 8x8 bits)."""
        controller_macs = self.controller.macs() if self.dynamic and self.controller is not None else 0
        return bitops_from_bits(bits, [self.config["macs"][n] for n in self.layer_names], controller_macs)

    def uniform_bitops(self, bits: int) -> float:
        """BitOPs of one sample with the governed layers at `bits` and the edges at `edge_bits`
        (`set_bits(bits)`): the unit of budgets and of the "vs uniform 4" columns."""
        macs = self.config["macs"]
        edge = self.edge_bits
        return float(sum(m * (bits * bits if n in self.governed or edge is None else edge * edge)
                         for n, m in macs.items()))

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """Logits for input codes x. Training: nested QAT; eval: the integer-only program."""
        if not self.training:
            program = self.integer_program()
            if self._run_caches[0] is not program:  # a rebuilt program: its layers are prepared anew
                self._run_caches = (program, {})
            device = x.device if isinstance(x, Tensor) else None
            cache = self._run_caches[1].setdefault(device, {})
            logits, chosen = run_program(program, x, cache)
            self.last_bits = chosen
            controller_macs = self.controller.macs() if self.dynamic and self.controller is not None else 0
            macs = _device_tensor(cache, "macs", lambda: torch.tensor(
                [self.config["macs"][n] for n in self.layer_names], dtype=torch.float64, device=chosen.device))
            self.last_bitops = bitops_from_bits(chosen, macs, controller_macs)
            return logits
        _check_input(self.config, x)
        _check_nonempty(x)
        return self._train_forward(x)

    def _fixed_bits(self, force_bits: Optional[int] = None) -> dict:
        """(w, a) widths of every layer not chosen by the controller: the static widths, or with
        `force_bits` the governed layers at that width; the edge layers sit at `edge_bits`
        whenever the controller or `force_bits` sets the others (static_bits stays as set)."""
        if force_bits is None and not self.dynamic:
            return self.static_bits
        edge = self.edge_bits
        return {n: (edge, edge) if n not in self.governed and edge is not None
                else (force_bits,) * 2 if force_bits is not None else self.static_bits[n] for n in self.layer_names}

    def _controller_choice(self, source: tuple, budget_codes: Optional[Tensor]):
        q, step_size, signed = source
        B = q.shape[0]
        if budget_codes is None:
            budget_codes = torch.full((B,), self.budget_code, device=q.device)
        logits = self.controller(q, step_size, signed, budget_price(budget_codes).to(q.device))
        self.controller_logits = logits
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the controller produced non-finite logits (NaN/inf): training has diverged; "
                                     "lower the learning rate or clip gradients (TrainConfig.clip)")
        gates = gumbel_hard(logits, self.tau, training=self.training)  # [B, heads, J]
        if gates.shape[1] != len(self.governed):  # one head ("sample" granularity) sets every governed layer
            gates = gates.expand(-1, len(self.governed), -1)
        table = torch.tensor(self.candidate_bits, dtype=torch.float32, device=q.device)
        widths = (gates.detach() * table).sum(-1).round().long()
        macs = torch.tensor([self.config["macs"][n] for n in self.governed], dtype=torch.float32, device=q.device)
        others = self._fixed_bits()
        fixed = sum(self.config["macs"][n] * others[n][0] * others[n][1] for n in self.layer_names
                    if n not in self.governed)
        # Straight-through BitOPs for the budget term (governed layers only carry gradients).
        self.soft_bitops = ((gates * table**2).sum(-1) * macs).sum(1) + fixed + self.controller.macs() * 64
        return gates, widths

    def _train_forward(self, x: Tensor, force_bits: Optional[int] = None,
                       budget_codes: Optional[Tensor] = None) -> Tensor:
        """The training path: integer layers with straight-through gradients, float batch norm.

        force_bits: every governed layer at that width (the consistency term's paths).
        budget_codes: per-sample budget codes for the controller (default: `budget_code`).
        """
        q_in = x.to(torch.float32)
        B = x.shape[0]
        fixed = self._fixed_bits(force_bits)
        dynamic = self.dynamic and force_bits is None
        governed = {n: i for i, n in enumerate(self.governed)} if dynamic else {}
        source = self.config["controller_source"]
        self.soft_bitops = None
        tp = _TrainPass(self, fixed, governed)
        values = [CodeValue(q_in, self.input_step, self.config["input_dtype"] == "int8")]
        for step in self.steps:
            if dynamic and tp.gates is None and len(values) > source:
                tp.gates, tp.widths = self._controller_choice(values[source], budget_codes)
            out = KINDS[step["kind"]].train(step, [values[i] for i in step["inputs"]], tp)
            if step["geometry"].get("final"):
                self._record_bits(fixed, tp.widths, B, x.device)
                return out.q
            values.append(out)
        raise UnsupportedLayerError("the model has no final layer")  # capture() guarantees one

    def _record_bits(self, fixed: dict, widths: Optional[Tensor], B: int, device) -> None:
        bits = torch.tensor([fixed[n] for n in self.layer_names], device=device).expand(B, -1, -1).clone()
        if widths is not None:
            idx = torch.tensor([self.layer_names.index(n) for n in self.governed], device=device)
            bits[:, idx] = widths.unsqueeze(-1).expand(-1, -1, 2)
        self.last_bits = bits
        self.last_bitops = self.bitops_per_sample(bits).detach()

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
        """Training-path logits with every governed layer at `bits` (the consistency paths)."""
        _check_input(self.config, x)
        return self._train_forward(x, force_bits=bits)

    # ------------------------------------------------------------------ objective

    def dqt_loss(self, x: Tensor, target: Tensor, *, alpha: float = 1.0, beta: float = 0.0,
                 target_bitops: Optional[float] = None, distill: bool = True,
                 sampled_widths: Optional[int] = 1, imitation: float = 1.0, imitation_samples: int = 16,
                 imitation_data: Optional[tuple[Tensor, Tensor]] = None, imitation_mode: str = "expected",
                 consistency_samples: Optional[int] = None, imitation_source: str = "sandwich",
                 generator: Optional[torch.Generator] = None) -> dict:
        """The DQT objective: task + alpha * consistency + beta * budget + imitation term.

        task: cross-entropy of the dynamic path (static mode: of the current widths).
        consistency: over a set S of uniform widths: the widest candidate (cross-entropy on the
            labels, the teacher) and the others, each distilled from the teacher's detached
            predictions (KL; cross-entropy with ``distill=False``), averaged over S. S is every
            candidate with ``sampled_widths=None``, else the sandwich rule: widest, narrowest and
            `sampled_widths` random others. With `consistency_samples` n, the term sees only the
            batch's first n samples (batches are shuffled): each width's pass then costs n / B of
            a full one, the dynamic path still learns from the whole batch.
        budget (dynamic mode with ``target_bitops``, the BitOPs unit, usually uniform 4-bit):
            each sample draws a budget code c and pays its price (`budget_price`: positive below the
            middle code, negative above, code 0 the largest) times BitOPs / target_bitops; the controller sees the
            same price as an offset on its logits. One model learns every budget;
            `calibrate_budget` picks one at deployment.
        imitation (dynamic mode, with the budget term): the controller's logits learn what each
            width costs each sample, its loss plus the price of its BitOPs
            (`imitation_mode="expected"`, a centred regression: the argmax estimates the width of
            least expected cost; `"best"`, cross-entropy towards each sample's cheapest width).
            This is the per-input signal that makes the controller spend bits where the loss
            needs them; the gate gradients of the task term refine it per layer. Where the
            losses come from (`imitation_source`):
            "sandwich" (default): the per-sample losses the consistency term's widths already
            computed (the batch's first `consistency_samples` samples, training statistics),
            over those widths only; no extra pass.
            "teacher": the same passes, each width's per-sample divergence (KL) from the widest
            width's predictions instead of its loss on the labels.
            "holdout": forward passes at every candidate width (no gradient, deployed
            statistics) on `imitation_data` (x, target), ideally held out of the task and
            consistency terms (on memorised samples every width is right), else on the
            batch's first `imitation_samples` samples. Needed with alpha = 0.
        """
        with share_weight_codes():  # every pass below sees the same weights: quantize them once
            return self._dqt_loss(x, target, alpha=alpha, beta=beta, target_bitops=target_bitops, distill=distill,
                                  sampled_widths=sampled_widths, imitation=imitation,
                                  imitation_samples=imitation_samples, imitation_data=imitation_data,
                                  imitation_mode=imitation_mode, consistency_samples=consistency_samples,
                                  imitation_source=imitation_source, generator=generator)

    def _dqt_loss(self, x: Tensor, target: Tensor, *, alpha, beta, target_bitops, distill, sampled_widths, imitation,
                  imitation_samples, imitation_data, imitation_mode, consistency_samples, imitation_source,
                  generator) -> dict:
        if imitation_source not in IMITATION_SOURCES:
            raise ValueError(f"imitation_source must be one of {IMITATION_SOURCES}, got {imitation_source!r}")
        budget_codes = None
        dynamic = self.dynamic and self.controller is not None
        if dynamic and beta > 0 and target_bitops and imitation > 0 and imitation_source != "holdout" and alpha <= 0:
            raise ValueError(f"imitation_source={imitation_source!r} learns from the consistency term's widths: "
                             "it needs alpha > 0 (or imitation_source='holdout')")
        if dynamic and beta > 0 and target_bitops:
            budget_codes = torch.randint(0, BUDGET_LEVELS, (x.shape[0],), generator=generator).to(x.device)
        _check_input(self.config, x)
        _check_nonempty(x)
        logits = self._train_forward(x, budget_codes=budget_codes)
        bitops_now, bits_now, soft = self.last_bitops, self.last_bits, self.soft_bitops
        controller_logits = self.controller_logits if dynamic else None
        task = F.cross_entropy(logits, target)
        if not bool(torch.isfinite(task)):
            raise FloatingPointError("non-finite task loss of the dynamic/static path: training has diverged")
        zero = torch.zeros((), device=logits.device)
        consistency, budget, imitate = zero, zero, zero
        if alpha > 0:
            if consistency_samples is not None and consistency_samples < 1:
                raise ValueError(f"consistency_samples must be at least 1, got {consistency_samples}")
            n = x.shape[0] if consistency_samples is None else min(consistency_samples, x.shape[0])
            consistency, sandwich_losses = self._consistency(x[:n], target[:n], distill, sampled_widths, generator)
        if budget_codes is not None and soft is not None:
            lam = budget_price(budget_codes).to(soft.device)
            budget = (lam * soft / target_bitops).mean()
            if imitation > 0 and controller_logits is not None:
                if imitation_source in ("sandwich", "teacher"):
                    per_width = sandwich_losses[0 if imitation_source == "sandwich" else 1]
                    logits_i, lam_i = controller_logits[:n], lam[:n]
                elif imitation_data is not None:
                    xi, yi = imitation_data
                    codes = torch.randint(0, BUDGET_LEVELS, (xi.shape[0],), generator=generator).to(xi.device)
                    _check_input(self.config, xi)
                    self._train_forward(xi, budget_codes=codes)
                    logits_i, lam_i = self.controller_logits, budget_price(codes).to(soft.device)
                else:
                    sub = slice(0, min(imitation_samples, x.shape[0]))
                    xi, yi, logits_i, lam_i = x[sub], target[sub], controller_logits[sub], lam[sub]
                if imitation_source == "holdout":
                    per_width = self._losses_per_width(xi, yi)
                imitate = self._imitation_loss(logits_i, per_width, lam_i, target_bitops, imitation_mode)
        total = task + alpha * consistency + beta * budget + imitation * imitate
        self.last_bitops, self.last_bits = bitops_now, bits_now
        return {"loss": total, "task": task.detach(), "consistency": consistency.detach(),
                "budget": budget.detach(), "imitation": imitate.detach(), "logits": logits.detach()}

    @torch.no_grad()
    def _losses_per_width(self, x: Tensor, target: Tensor) -> dict:
        """Per-sample cross-entropy at every candidate width, as deployed (running statistics,
        learned ranges): what each width would cost each sample."""
        was_training = self.training
        self.train(False)
        try:
            return {b: F.cross_entropy(self._train_forward(x, force_bits=b), target, reduction="none")
                    for b in self.candidate_bits}
        finally:
            self.train(was_training)

    def _imitation_loss(self, controller_logits: Tensor, per_width: dict, lam: Tensor, unit: float,
                        mode: str = "expected") -> Tensor:
        """Teach the controller each sample's cost of every width, CE_b + lambda * BitOPs(uniform b) / unit.

        "expected": every governed layer's logits (net of the price) regress the negated costs,
        both centred over the widths (Huber): the argmax then estimates the width of least
        expected cost, and where the controller cannot tell inputs apart it settles on the width
        best on average instead of betting on the likeliest best one. "best": cross-entropy
        against each sample's cheapest width (argmin).
        """
        widths = sorted(per_width)
        losses = torch.stack([per_width[b] for b in widths], dim=1)  # [B, |S|]
        cost = torch.tensor([self.uniform_bitops(b) / unit for b in widths], device=losses.device)
        index = torch.tensor([self.candidate_bits.index(b) for b in widths], device=losses.device)
        total = losses + lam[:, None] * cost
        L = controller_logits.shape[1]
        if mode == "best":
            target = index[total.argmin(1)]  # candidate index of each best width
            return F.cross_entropy(controller_logits.reshape(-1, controller_logits.shape[-1]),
                                   target.repeat_interleave(L))
        if mode != "expected":
            raise ValueError(f"imitation_mode must be 'expected' or 'best', got {mode!r}")
        want = -(total - total.mean(1, keepdim=True))  # [B, |S|]
        got = controller_logits[:, :, index]  # [B, L, |S|]
        got = got - got.mean(2, keepdim=True)
        return F.huber_loss(got, want[:, None, :].expand_as(got), delta=1.0)

    def _consistency(self, x: Tensor, target: Tensor, distill: bool, sampled_widths: Optional[int],
                     generator: Optional[torch.Generator]) -> tuple[Tensor, dict]:
        """Mean consistency loss over the width set S, and each width's detached per-sample
        cross-entropy on the labels (what `imitation_source="sandwich"` learns from)."""
        cands = list(self.candidate_bits)
        widths = cands[::-1]
        if sampled_widths is not None and len(cands) > 2 + sampled_widths:
            middle = cands[1:-1]
            pick = torch.randperm(len(middle), generator=generator)[:sampled_widths].tolist()
            widths = [cands[-1]] + sorted((middle[i] for i in pick), reverse=True) + [cands[0]]
        teacher = None
        losses, per_sample, drift = [], {}, {}
        for b in widths:
            out = self.forward_at_bits(x, b)
            per_sample[b] = F.cross_entropy(out.detach(), target, reduction="none")
            drift[b] = (torch.zeros_like(per_sample[b]) if teacher is None else
                        F.kl_div(F.log_softmax(out.detach(), 1), F.log_softmax(teacher, 1), log_target=True,
                                 reduction="none").sum(1))
            if teacher is None or not distill:
                loss = F.cross_entropy(out, target)
                teacher = out.detach() if teacher is None else teacher
            else:
                loss = F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher, 1), log_target=True,
                                reduction="batchmean")
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"non-finite consistency loss at {b} bits: training has diverged")
            losses.append(loss)
        return torch.stack(losses).mean(), (per_sample, drift)

    # ------------------------------------------------------------------ integer program

    @torch.no_grad()
    def integer_program(self) -> dict:
        """Integer constants of every layer, on the model's device, cached while no parameter,
        buffer, width, budget or device changes (tensor version counters see optimizer steps and
        load_state_dict; `.to(device)` may keep a parameter's identity and version)."""
        key = (self.dynamic, self.budget_code, tuple(self.static_bits.items()),
               tuple((id(t), t._version, t.device) for t in itertools.chain(self.parameters(), self.buffers())))
        if self._program_cache is not None and self._program_cache[0] == key:
            return self._program_cache[1]
        value_step = [float(self.input_step)]
        signed = self.config["value_signed"]
        tables: dict[str, dict] = {"layers": {}, "adds": {}, "ops": {}}
        for step in self.steps:
            kind = KINDS[step["kind"]]
            ins = step["inputs"]
            consts, out_step = kind.constants(step, [value_step[i] for i in ins], [signed[i] for i in ins], self)
            if kind.program_key is not None:
                tables[kind.program_key][step["name"]] = consts
            value_step.append(out_step)
        source = self.config["controller_source"]
        program = {
            "steps": self.steps, **tables, "layer_names": list(self.layer_names),
            "governed": list(self.governed), "shift_rule": self.shift_rule, "candidate_bits": list(self.candidate_bits),
            "input_shape": list(self.config["input_shape"]), "input_dtype": self.config["input_dtype"],
            "input_scale": self.config["input_scale"], "dynamic": self.dynamic,
            "static_bits": {n: list(b) for n, b in self._fixed_bits().items()}, "controller_source": source,
            "controller": self.controller.program(value_step[source], self.config["value_signed"][source],
                                                  budget_price(self.budget_code)) if self.dynamic else None,
        }
        self._program_cache = (key, program)
        return program

    def freeze(self) -> "FrozenDQTModel":
        """A snapshot of the integer-only model in its current mode (static widths or dynamic),
        on the model's device: a model trained on a GPU freezes into a GPU-resident program."""
        return FrozenDQTModel(_clone_program(self.integer_program(), device=None), dict(self.config["macs"]),
                              self.controller.macs() if self.dynamic else 0)

    # ------------------------------------------------------------------ save / load

    def save(self, path: Union[str, os.PathLike]) -> None:
        """One file: architecture, master weights, step sizes, controller, budget code, and the
        frozen integer programs of the current static widths and (if present) dynamic mode, and the
        calibrated width policies (`policies`). Written atomically."""
        was_training, static, dynamic = self.training, dict(self.static_bits), self.dynamic
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        self.eval()
        programs = {}
        try:
            self.dynamic = False  # the static program: the model's current static widths
            programs["static"] = _clone_program(self.integer_program(), device="cpu")
            if self.controller is not None:
                self.set_dynamic(True)
                programs["dynamic"] = _clone_program(self.integer_program(), device="cpu")
        finally:
            self.static_bits, self.dynamic = static, dynamic
            self.train(was_training)
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config, "steps": self.steps,
                   "state_dict": state, "programs": programs, "static_bits": {n: list(b) for n, b in static.items()},
                   "dynamic": dynamic, "budget_code": self.budget_code}
        if self.policies is not None:
            payload["policies"] = self.policies
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
                if c["num_layers"] not in (1, len(config["governed"])):
                    raise ValueError(f"the controller has {c['num_layers']} heads for {len(config['governed'])} "
                                     "governed layers (expected 1 or one per layer)")
                controller = Controller(c["feature_shape"], c["num_layers"], c["num_choices"], c["hidden"],
                                        config["candidate_bits"])
            extras = nn.ModuleDict({n: extra_from_spec(s) for n, s in config.get("extra_specs", {}).items()})
            model = cls(steps, layers, quantizers, controller, config, extras)
            model.load_state_dict(payload["state_dict"])
            model.set_bits({n: tuple(b) for n, b in payload["static_bits"].items()})
            model.set_budget(payload["budget_code"])
            if payload["dynamic"]:
                model.set_dynamic(True)
            model.policies = payload.get("policies")  # absent in checkpoints written before policies
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
        self._run_caches: dict = {}  # device -> run_program cache (layers validated and placed once)
        self.last_bits: Optional[Tensor] = None
        self.last_bitops: Optional[Tensor] = None

    @property
    def device(self) -> torch.device:
        """Where the program's constants live (a call on another device places a copy once)."""
        return _program_device(self.program)

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

        self.program = _map_program(self.program, move)
        self._run_caches = {}
        return super()._apply(fn, recurse)

    def forward(self, x: Tensor) -> Tensor:
        device = x.device if isinstance(x, Tensor) else None
        cache = self._run_caches.setdefault(device, {})
        logits, chosen = run_program(self.program, x, cache)
        self.last_bits = chosen
        macs = _device_tensor(cache, "macs", lambda: torch.tensor(
            [self.macs[n] for n in self.program["layer_names"]], dtype=torch.float64, device=chosen.device))
        self.last_bitops = bitops_from_bits(chosen, macs, self.controller_macs)
        return logits

    def run_values(self, x: Tensor, given: Optional[dict] = None) -> tuple[Tensor, list]:
        """(logits, every value of the pass): `run_program_values` on this program."""
        device = x.device if isinstance(x, Tensor) else None
        cache = self._run_caches.setdefault(device, {})
        logits, _, values = run_program_values(self.program, x, cache, given)
        return logits, values

    def save(self, path: Union[str, os.PathLike]) -> None:
        _atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "frozen": _clone_program(self.program, "cpu"),
                      "macs": self.macs,
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


def _layer_spec(layer: nn.Module) -> dict:
    bn = layer.bn if layer.width_bns is None else layer.width_bns[0]
    return {
        "type": "conv" if isinstance(layer, DQTConv2d) else "linear",
        "weight_shape": list(layer.weight.shape), "bias": layer.bias is not None, "relu": layer.relu,
        "per_channel": layer.per_channel,
        "conv": {k: list(v) if isinstance(v, tuple) else v for k, v in layer.conv.items()} if layer.conv else None,
        "bn": None if bn is None else {"dim": 2 if isinstance(bn, nn.BatchNorm2d) else 1, "eps": bn.eps,
                                       "momentum": bn.momentum, "affine": bn.affine},
        "bn_per_width": layer.width_bns is not None,
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
                         spec["per_channel"], spec["bn_per_width"])
    return DQTLinear(weight, bias, bn, spec["relu"], spec["per_channel"], spec["bn_per_width"])


def _map_program(obj, fn):
    """An integer program (nested dicts and lists) with `fn` applied to every tensor in it."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_program(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_program(v, fn) for v in obj]
    return obj


def program_tensors(obj) -> Iterator[Tensor]:
    """Every tensor of an integer program, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from program_tensors(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from program_tensors(v)


def _clone_program(program: dict, device: Optional[Union[str, torch.device]]) -> dict:
    """A deep copy of an integer program, on `device` (None: each tensor stays where it is)."""
    return _map_program(program, lambda t: t.detach().clone() if device is None else t.detach().to(device, copy=True))


def _program_device(program: dict) -> torch.device:
    first = next(program_tensors(program), None)
    return torch.device("cpu") if first is None else first.device


def _atomic_save(payload: dict, path: Union[str, os.PathLike]) -> None:
    """Write with an integrity digest to a temporary file and rename (`checkpoint.save_file`)."""
    checkpoint.save_file(payload, path)


def _load_payload(path: Union[str, os.PathLike], map_location) -> dict:
    path = os.fspath(path)
    payload = checkpoint.load_file(path, map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dqt-triton model checkpoint (format tag missing)")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, this dqt-triton reads "
                              f"{FORMAT_VERSION}")
    return payload


__all__ = ["DQTModel", "FrozenDQTModel", "Controller", "run_program", "run_program_values", "budget_price",
           "BUDGET_LEVELS"]
