"""Quantized modules of the DQT module layer.

- `ActQuantizer`: one learned master step size per activation tensor (LSQ gradients), with
  its range tracked by an exponential moving average for the first training batches
  (PACT-like clip at ``hi * step``; the EMA sets the initial clip).
- `DQTLinear`, `DQTConv2d`: a float layer with per-output-channel learned weight steps, an
  optional batch norm and ReLU. Training runs the integer kernels through
  `dqt_triton.quant.int_layer` with straight-through gradients; `integer_constants` folds the
  batch norm and produces the integer-only constants of docs/numerics.md.

With ``bn_per_width`` a layer holds one batch norm per weight shift (switchable batch norm, as
in Any-Precision DNN and slimmable networks): the statistics of a 2-bit path are not those of
an 8-bit one, and one shared set serves neither. Each is folded into its own row of the
layer's constant tables (``[8, N]``, row = weight shift), so the integer program stays exact.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

from . import numerics
from .errors import AccumulatorOverflowError
from .quant import int_layer, lsq_codes, lsq_grad_factor, scale_grad

Tensor = torch.Tensor


class ActQuantizer(nn.Module):
    """Master step size D of one activation tensor; codes are uint8 (`signed=False`) or int8.

    The clip is ``hi * D``. For the first `calibration_batches` training batches D follows an
    EMA of the observed range; after that it is learned (LSQ gradient through ``log D``).
    """

    def __init__(self, signed: bool, calibration_batches: int = 20, momentum: float = 0.1) -> None:
        super().__init__()
        self.signed = signed
        self.lo, self.hi = numerics.code_range(numerics.MASTER_BITS, signed)
        # Steps are learned as logarithms: Adam's roughly fixed-size updates then change a step
        # by a fraction of itself, whatever its magnitude (1e-4 for weights, 1e-1 for inputs).
        self.log_step = nn.Parameter(torch.tensor(0.0))
        self.calibration_batches = calibration_batches
        self.momentum = momentum
        self.register_buffer("running_range", torch.tensor(0.0))
        self.register_buffer("batches_seen", torch.tensor(0, dtype=torch.long))
        self.elements = 1  # elements per sample of the last input: LSQ's gradient scale

    def forward(self, x: Tensor) -> Tensor:
        """Master codes of x as a float tensor (LSQ straight-through gradients)."""
        if self.training and int(self.batches_seen) < self.calibration_batches:
            with torch.no_grad():
                observed = x.detach().abs().amax() if self.signed else x.detach().clamp_min(0).amax()
                if torch.distributed.is_initialized():  # every rank calibrates on the global batch's range
                    torch.distributed.all_reduce(observed, op=torch.distributed.ReduceOp.MAX)
                seen = int(self.batches_seen)
                self.running_range.copy_(observed if seen == 0 else
                                         (1 - self.momentum) * self.running_range + self.momentum * observed)
                # .data: the consistency term runs several forwards per step; an in-place
                # update visible to autograd would invalidate the earlier ones' graphs.
                self.log_step.data.copy_(torch.log((self.running_range / self.hi).clamp_min(1e-8)))
                self.batches_seen += 1
        self.elements = max(x[0].numel(), 1)
        return lsq_codes(x, self.scale(), self.lo, self.hi)

    def scale(self) -> Tensor:
        step = torch.exp(self.log_step)
        return scale_grad(step, lsq_grad_factor(self.elements, self.hi)) if self.training else step


_SHARED_CODES: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("dqt_shared_weight_codes",
                                                                            default=None)


@contextlib.contextmanager
def share_weight_codes() -> Iterator[None]:
    """Within the block, each layer quantizes its weights once and every forward pass reuses
    the codes (one autograd node, gradients summed there): a DQT objective runs the network at
    several widths on unchanged weights, and each pass would otherwise keep its own copy of
    every layer's codes and LSQ intermediates for backward. Parameters must not change inside
    the block."""
    token = _SHARED_CODES.set({})
    try:
        yield
    finally:
        _SHARED_CODES.reset(token)


@dataclass
class IntegerConstants:
    """What the integer-only pipeline needs for one conv/linear layer (docs/numerics.md 3.5)."""

    weight: Tensor  # int8 master codes, the module's weight layout
    bias: Tensor  # int32 master-unit bias, [N] or [8, N] (one row per weight shift)
    multiplier: Optional[Tensor]  # int32 [N] or [8, N] (requantizing layers)
    shift: Optional[Tensor]  # int32 [N] or [8, N]
    out_scale: Optional[Tensor]  # float32 [N] or [8, N] (the final, dequantizing layer)
    relu: bool
    out_dtype: torch.dtype


class _DQTLayer(nn.Module):
    """Common parts of DQTLinear and DQTConv2d."""

    conv: Optional[dict] = None

    def __init__(self, weight: Tensor, bias: Optional[Tensor], bn: Optional[nn.Module], relu: bool,
                 per_channel: bool = True, bn_per_width: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        # One batch norm per weight shift k = 8 - bits (index k), or one shared by all widths.
        self.width_bns = (nn.ModuleList(copy.deepcopy(bn) for _ in range(numerics.MAX_SHIFT + 1))
                          if bn_per_width and bn is not None else None)
        self.bn = None if self.width_bns is not None else bn
        self.relu = relu
        self.per_channel = per_channel
        w = self.weight.detach().flatten(1)
        w_max = w.abs().amax(dim=1) if per_channel else w.abs().amax().expand(w.shape[0])
        initial = (w_max / 127.0).clamp_min(1e-8).reshape(-1) if per_channel else (w_max[:1] / 127.0).clamp_min(1e-8)
        self.log_weight_step = nn.Parameter(torch.log(initial))

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def reduction_size(self) -> int:
        return self.weight[0].numel()

    def weight_scales(self) -> Tensor:
        """[N] positive per-output-channel steps (one shared value if not per channel)."""
        step = torch.exp(self.log_weight_step)
        if self.training:
            per_step = self.weight.numel() // step.numel()
            step = scale_grad(step, lsq_grad_factor(per_step, 127))
        return step if self.per_channel else step.expand(self.out_channels)

    def weight_codes(self) -> Tensor:
        """The master weight codes with LSQ gradients; computed once per layer inside
        `share_weight_codes` (every forward pass of one objective sees the same weights)."""
        shared = _SHARED_CODES.get()
        key = (id(self), torch.is_grad_enabled())
        if shared is not None and key in shared:
            return shared[key]
        view = (-1,) + (1,) * (self.weight.dim() - 1)
        codes = lsq_codes(self.weight, self.weight_scales().view(view), -128, 127)
        if shared is not None:
            shared[key] = codes
        return codes

    def norms(self) -> list[nn.Module]:
        """The batch norm of every weight shift (the shared one repeated if not per width)."""
        if self.width_bns is not None:
            return list(self.width_bns)
        return [self.bn] * (numerics.MAX_SHIFT + 1)

    def copy_width_norms(self, from_shift: int = 0) -> None:
        """Start every width's batch norm from the one of `from_shift` (after 8-bit warm-up)."""
        if self.width_bns is None:
            return
        source = self.width_bns[from_shift].state_dict()
        for k, bn in enumerate(self.width_bns):
            if k != from_shift:
                bn.load_state_dict(source)

    def _normalize(self, y: Tensor, weight_shift) -> Tensor:
        if self.width_bns is None:
            return self.bn(y) if self.bn is not None else y
        if not isinstance(weight_shift, torch.Tensor):
            return self.width_bns[int(weight_shift)](y)
        distinct = torch.unique(weight_shift)
        if distinct.numel() == 1:
            return self.width_bns[int(distinct)](y)
        # Mixed widths in one batch (the controller's choices): each row is normalized with its
        # width's running statistics, exactly what the integer program folds in.
        bns = self.width_bns
        k = weight_shift.long()
        view = (y.shape[0], -1) + (1,) * (y.dim() - 2)
        mean = torch.stack([bn.running_mean for bn in bns])[k].view(view)
        inv = torch.rsqrt(torch.stack([bn.running_var for bn in bns])[k] + bns[0].eps).view(view)
        y = (y - mean) * inv
        if bns[0].affine:
            y = y * torch.stack([bn.weight for bn in bns])[k].view(view) + torch.stack([bn.bias for bn in bns])[k].view(view)
        return y

    def forward_codes(self, q_x: Tensor, x_scale: Tensor, x_signed: bool, act_shift, weight_shift,
                      rule: str, gates: Optional[Tensor] = None, candidate_bits=(), where: str = "a layer",
                      gate_gradients: str = "all") -> Tensor:
        """Float output (bias, batch norm, ReLU applied) of the integer layer on codes q_x."""
        scale = (x_scale * self.weight_scales()).to(torch.float32)
        y = int_layer(q_x, self.weight_codes(), scale, act_shift=act_shift, weight_shift=weight_shift,
                      signed=x_signed, rule=rule, conv=self.conv, gates=gates, candidate_bits=candidate_bits,
                      where=where, gate_gradients=gate_gradients)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, *([1] * (y.dim() - 2)))
        y = self._normalize(y, weight_shift)
        return torch.relu(y) if self.relu else y

    @torch.no_grad()
    def integer_constants(self, x_scale: float, x_signed: bool, y_scale: Optional[float]) -> IntegerConstants:
        """Fold bias and batch norm (running statistics) into integer constants.

        With `y_scale` (the real value of one output code) the layer requantizes to master codes
        of its output quantizer; without, it dequantizes to float32 (the logits). With a batch norm per width, bias, multiplier,
        shift and out_scale are ``[8, N]`` tables (row = weight shift).
        """
        w_scales = self.weight_scales().double()
        view = (-1,) + (1,) * (self.weight.dim() - 1)
        codes = numerics.quantize(self.weight.detach(), w_scales.view(view).float(), signed=True).to(torch.int8)
        if not math.isfinite(x_scale):
            raise ValueError(f"{self.__class__.__name__}: the input step is not finite (training diverged?)")
        norms = list(self.width_bns) if self.width_bns is not None else [self.bn]
        folded = [self._fold(bn, x_scale * w_scales, x_signed, y_scale) for bn in norms]
        if len(folded) == 1:
            bias, mult, shift, out_scale = folded[0]
        else:
            bias, mult, shift, out_scale = (None if folded[0][i] is None else torch.stack([f[i] for f in folded])
                                            for i in range(4))
        if y_scale is None:
            return IntegerConstants(codes, bias, None, None, out_scale, self.relu, torch.float32)
        return IntegerConstants(codes, bias, mult, shift, None, self.relu, torch.uint8 if self.relu else torch.int8)

    def _fold(self, bn: Optional[nn.Module], scale: Tensor, x_signed: bool, y_scale: Optional[float]):
        """(bias int32, multiplier, shift, out_scale) of one batch norm; scale = D_x * D_w [N]."""
        bias = self.bias.detach().double() if self.bias is not None else torch.zeros_like(scale)
        if bn is not None:
            gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(scale)
            beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(scale)
            factor = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
            bias = factor * (bias - bn.running_mean.double()) + beta
            scale = scale * factor
        if not bool(torch.isfinite(scale).all() and torch.isfinite(bias).all()):
            raise ValueError(f"{self.__class__.__name__}: step sizes or batch-norm statistics are not finite "
                             "(training diverged?); cannot build integer constants")
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        bias_codes = torch.where(scale == 0, torch.zeros_like(bias), torch.round(bias / safe))
        budget = numerics.INT32_MAX - numerics.accumulator_bound(self.reduction_size(), x_signed)
        if bool((bias_codes.abs() > budget).any()):
            worst = int(bias_codes.abs().argmax())
            raise AccumulatorOverflowError(
                f"{self.__class__.__name__}: folded bias of channel {worst} is {int(bias_codes[worst])} accumulator "
                f"units, beyond the {budget} the int32 accumulator leaves for a bias (K={self.reduction_size()}); "
                "its batch-norm scale is nearly zero")
        if y_scale is None:
            return bias_codes.to(torch.int32), None, None, scale.float()
        pairs = [numerics.quantize_multiplier(float(r)) for r in (scale / y_scale).tolist()]
        multiplier = torch.tensor([m for m, _ in pairs], dtype=torch.int32, device=scale.device)
        shift = torch.tensor([s for _, s in pairs], dtype=torch.int32, device=scale.device)
        return bias_codes.to(torch.int32), multiplier, shift, None


class DQTLinear(_DQTLayer):
    """Linear layer with learned nested quantization (weights [N, K], K-contiguous)."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bn: Optional[nn.Module] = None, relu: bool = False,
                   per_channel: bool = True, bn_per_width: bool = False) -> "DQTLinear":
        return cls(linear.weight, linear.bias, bn, relu, per_channel, bn_per_width)

    def macs_per_sample(self, out_shape) -> int:
        """One sample's MACs: the weights once per token ([T, N] outputs) or once ([N])."""
        return self.weight.numel() * math.prod(int(s) for s in out_shape[:-1])


class DQTConv2d(_DQTLayer):
    """Conv2d with learned nested quantization; geometry as in `nn.Conv2d` (zero padding)."""

    def __init__(self, weight, bias, bn, relu, stride, padding, dilation, groups, per_channel: bool = True,
                 bn_per_width: bool = False):
        super().__init__(weight, bias, bn, relu, per_channel, bn_per_width)
        self.conv = {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation),
                     "groups": int(groups)}

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bn: Optional[nn.Module] = None, relu: bool = False,
                   bn_per_width: bool = False) -> "DQTConv2d":
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"DQTConv2d supports numeric zero padding only, got padding={conv.padding!r}, "
                             f"padding_mode={conv.padding_mode!r}")
        return cls(conv.weight, conv.bias, bn, relu, conv.stride, conv.padding, conv.dilation, conv.groups,
                   bn_per_width=bn_per_width)

    def macs_per_sample(self, out_shape) -> int:
        return self.weight.numel() * int(out_shape[-1]) * int(out_shape[-2])


def layer_spec(layer: _DQTLayer) -> dict:
    """What rebuilds `layer` without its weights (a checkpoint's ``layer_specs`` entry)."""
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


def layer_from_spec(spec: dict) -> _DQTLayer:
    """An untrained layer of a `layer_spec` (the state dict fills its weights)."""
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
