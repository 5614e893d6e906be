"""The width controller (DQNet-style) and the budget codes it is conditioned on.

Training uses `Controller` (float forward on codes, Gumbel gates); `Controller.program`
compiles it to a `program.ControllerProgram` that `runtime.run_controller` executes in integers.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from .nn import ActQuantizer, DQTLinear, IntegerConstants
from .program import ControllerProgram
from .quant import gumbel_hard
from .steps.layer import layer_program
from .steps.pool import avg_pool_codes

Tensor = torch.Tensor
GRANULARITIES = ("layer", "sample", "token", "token-shared")
BUDGET_LEVELS = 256  # budget codes 0 (largest price, fewest bits) .. 255 (most negative price, most bits)
PRICE_LIMIT = 10.0  # |price| (loss per uniform-4 BitOPs) at the two ends of the code range
PRICE_CURVE = 12.0  # sinh spacing: log-spaced over ~5 decades on each side of zero
# Offset (in logit units) that keeps an excluded width from ever winning: int32 logits differ by
# less than 2^32, and int64 holds the difference.
EXCLUDED_OFFSET = 2**40


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


def feature_pool(shape: Sequence[int], per_token: bool = False) -> Optional[tuple[int, int]]:
    """The average-pooling window that brings [C, H, W] features to at most 4x4 (None for vectors
    and for token features)."""
    if len(shape) == 3 and not per_token:
        return max(shape[1] // 4, 1), max(shape[2] // 4, 1)
    return None


def feature_count(shape: Sequence[int], per_token: bool = False) -> int:
    """Inputs of the controller's first layer for features of `shape` (one token's [T, D]: D)."""
    if per_token:
        return int(shape[-1])
    pool = feature_pool(shape)
    if pool is not None:
        return shape[0] * (shape[1] // pool[0]) * (shape[2] // pool[1])
    return int(math.prod(shape))


class Gates(NamedTuple):
    """One controller decision on the training path."""

    logits: Tensor  # [B, heads, candidates] ([B, T, heads, candidates] per token), net of the price
    gates: Tensor  # [B, (T,) governed, candidates] hard one-hot (straight-through in training)
    widths: Tensor  # [B, (T,) governed] chosen bits
    soft_bitops: Tensor  # [B] BitOPs with gradients to the gates (the budget term's)


class Controller(nn.Module):
    """Early features -> logits over the candidate widths per head, minus a price for bits.

    One head per governed layer ("layer" granularity) or one head whose width every governed
    layer takes ("sample" granularity, `num_layers` = 1). With `per_token` ("token" granularity)
    the controller reads each token's features [D] of a token sequence [B, T, D] and chooses every
    governed layer's width for each token (the rows of a Linear are tokens); "token-shared" has
    one head per token, whose width every governed layer takes (a smaller controller).

    DQNet-style, the controller reads the codes of the first layer's output (or the network
    input when the first layer is governed too), average-pooled to at most 4x4 (integer
    pooling), flattened; Linear-BatchNorm-ReLU-Linear gives each governed layer's logits z over
    the candidate widths. The width chosen is the argmax of ``z - price * kappa[layer] *
    (bits / 4)^2``: `price` comes from the budget code (one model, a budget chosen at run time),
    kappa is learned per layer. The last layer shares one weight scale across outputs, so its
    integer logits compare directly; the integer program subtracts the price as an int64 offset
    table and takes the argmax in integers.
    """

    def __init__(self, feature_shape: Sequence[int], num_layers: int, num_choices: int, hidden: int,
                 candidate_bits: Sequence[int] = (), per_token: bool = False) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.num_layers, self.num_choices, self.hidden = num_layers, num_choices, hidden
        self.per_token = bool(per_token)
        if self.per_token and len(self.feature_shape) != 2:
            raise ValueError(f"a per-token controller reads token sequences [T, D], got features {self.feature_shape}")
        self.tokens = self.feature_shape[0] if self.per_token else 1
        self.pool = feature_pool(self.feature_shape, self.per_token)
        fc1 = nn.Linear(feature_count(self.feature_shape, self.per_token), hidden)
        # Default init: the shared weight scale (clip) of fc2 is set from these weights, and a
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
        self.candidate_bits = tuple(int(b) for b in candidate_bits)
        self.allowed_bits: Optional[tuple[int, ...]] = None  # the widths it may pick at deployment (None: all)

    def allow(self, bits: Optional[Sequence[int]]) -> None:
        """Let the controller pick only `bits` (a non-empty subset of the candidates; None: all of
        them), a deployment setting (`calibration.calibrate_widths`): the others get an offset no
        logit can beat, in the training path and the integer program alike."""
        if bits is not None:
            bits = tuple(sorted({int(b) for b in bits}))
            if not bits or not set(bits) <= set(self.candidate_bits):
                raise ValueError(f"allowed widths must be a non-empty subset of the candidates "
                                 f"{list(self.candidate_bits)}, got {list(bits)}")
            if bits == self.candidate_bits:
                bits = None
        self.allowed_bits = bits

    def _excluded(self) -> Optional[Tensor]:
        """[choices] bool, True for the widths `allow` excludes (None: none is)."""
        if self.allowed_bits is None:
            return None
        return torch.tensor([b not in self.allowed_bits for b in self.candidate_bits], device=self.log_kappa.device)

    def logit_unit(self) -> float:
        """The real value of one int32 logit of the integer program."""
        return float(self.hidden_quant.scale()) * float(self.fc2.weight_scales()[0])

    def macs(self) -> int:
        """One sample's MACs (once per token with per-token widths)."""
        return (self.fc1.weight.numel() + self.fc2.weight.numel()) * self.tokens

    def spec(self) -> dict:
        spec = {"feature_shape": list(self.feature_shape), "num_layers": self.num_layers,
                "num_choices": self.num_choices, "hidden": self.hidden}
        if self.per_token:
            spec["per_token"] = True
        return spec

    def price_offsets(self, price: Tensor) -> Tensor:
        """[B, layers, choices] amounts subtracted from the logits for per-sample prices [B]."""
        return price.view(-1, 1, 1) * torch.exp(self.log_kappa).view(1, -1, 1) * self.width_cost.view(1, 1, -1)

    def forward(self, q_feat: Tensor, feat_scale: Tensor, feat_signed: bool, price: Tensor) -> Tensor:
        """Float logits net of the price, [B, layers, choices], from feature codes."""
        q = q_feat
        if self.pool is not None:
            q = avg_pool_codes(q, self.pool, self.pool, (0, 0))
        rows = q.reshape(-1, q.shape[-1]) if self.per_token else q.flatten(1)  # a row per token, or per sample
        h = self.fc1.forward_codes(rows, feat_scale, feat_signed, 0, 0, "floor")
        qh = self.hidden_quant(h)
        logits = self.fc2.forward_codes(qh, self.hidden_quant.scale(), False, 0, 0, "floor")
        offsets = self.price_offsets(price)
        excluded = self._excluded()
        if excluded is not None:
            offsets = offsets + excluded.to(offsets.dtype) * (EXCLUDED_OFFSET * self.logit_unit())
        if self.per_token:
            return logits.view(q.shape[0], q.shape[1], self.num_layers, self.num_choices) - offsets.unsqueeze(1)
        return logits.view(-1, self.num_layers, self.num_choices) - offsets

    def choose(self, q_feat: Tensor, feat_scale: Tensor, feat_signed: bool, budget_codes: Tensor, tau: float,
               candidate_bits: Sequence[int], governed_macs: Tensor, fixed_bitops: float) -> Gates:
        """The training path's choice for every governed layer: Gumbel gates at temperature
        `tau` (argmax in eval), the widths they pick and the straight-through BitOPs of the
        choice (`governed_macs` [governed] float32; `fixed_bitops`: the other layers')."""
        logits = self(q_feat, feat_scale, feat_signed, budget_price(budget_codes).to(q_feat.device))
        if not bool(torch.isfinite(logits).all()):
            raise FloatingPointError("the controller produced non-finite logits (NaN/inf): training has diverged; "
                                     "lower the learning rate or clip gradients (TrainConfig.clip)")
        gates = gumbel_hard(logits, tau, training=self.training)  # [B, (T,) heads, J]
        governed = governed_macs.shape[0]
        if gates.shape[-2] != governed:  # one head ("sample" granularity) sets every governed layer
            gates = gates.expand(*gates.shape[:-2], governed, -1)
        table = torch.tensor(candidate_bits, dtype=torch.float32, device=q_feat.device)
        widths = (gates.detach() * table).sum(-1).round().long()
        # per token, each token carries 1/T of a layer's MACs
        cost = (gates * table**2).sum(-1) * (governed_macs / self.tokens)
        soft = cost.flatten(1).sum(1) + fixed_bitops + self.macs() * 64
        return Gates(logits, gates, widths, soft)

    def forced(self, widths: Tensor, governed: int) -> Gates:
        """The choice of given widths [B, (T,) governed] instead of the controller's (no logits,
        no gradients to gates): `DQTModel.train_forward(force_widths=...)`."""
        shape = (*((self.tokens,) if self.per_token else ()), governed)
        if widths.dim() != len(shape) + 1 or tuple(widths.shape[1:]) != shape:
            raise ValueError(f"force_widths must have shape [batch, {', '.join(map(str, shape))}] (batch, "
                             f"{'tokens, ' if self.per_token else ''}governed layers), got {list(widths.shape)}")
        table = torch.tensor(self.candidate_bits, device=widths.device)
        hit = widths.long().unsqueeze(-1) == table
        if not bool(hit.any(-1).all()):
            raise ValueError(f"force_widths holds widths outside the candidates {list(self.candidate_bits)}")
        return Gates(None, hit.to(torch.float32), widths.long(), None)

    @torch.no_grad()
    def program(self, feat_scale: float, feat_signed: bool, price: float) -> ControllerProgram:
        """The controller's integer constants at budget price `price` (`budget_price`)."""
        h_scale = float(self.hidden_quant.scale())
        c = self.fc2.integer_constants(h_scale, False, None)
        fc2 = IntegerConstants(c.weight, c.bias, None, None, None, False, torch.int32)  # raw int32 logits
        logit_unit = self.logit_unit()
        price_t = torch.tensor([float(price)], device=self.log_kappa.device)
        offsets = torch.round(self.price_offsets(price_t)[0].double() / logit_unit)
        if not bool(torch.isfinite(offsets).all()) or float(offsets.abs().max()) > 2.0**61:
            raise ValueError(f"controller price offsets are not representable (price {price}, logit unit "
                             f"{logit_unit}); training diverged?")
        excluded = self._excluded()
        if excluded is not None:
            offsets = offsets + excluded.double() * EXCLUDED_OFFSET
        return ControllerProgram(list(self.pool) if self.pool else None,
                                 layer_program(self.fc1.integer_constants(feat_scale, feat_signed, h_scale), None),
                                 layer_program(fc2, None), offsets.to(torch.int64), self.num_layers, self.num_choices,
                                 self.per_token)

    @classmethod
    def from_spec(cls, spec: dict, candidate_bits: Sequence[int], governed: int) -> "Controller":
        """An untrained controller of the saved `spec` (weights come from the state dict)."""
        if spec["num_layers"] not in (1, governed):
            raise ValueError(f"the controller has {spec['num_layers']} heads for {governed} governed layers "
                             "(expected 1 or one per layer)")
        return cls(spec["feature_shape"], spec["num_layers"], spec["num_choices"], spec["hidden"], candidate_bits,
                   spec.get("per_token", False))


__all__ = ["Controller", "Gates", "budget_price", "BUDGET_LEVELS", "EXCLUDED_OFFSET", "GRANULARITIES", "feature_pool",
           "feature_count"]
