"""The baselines DQT is compared with, built from the same networks and the same DQTModel.

- `DequantRequantDynamic`: dynamic precision the way earlier methods run it. The same
  controller (in floating point) picks a width per sample and layer; each layer keeps its
  8-bit master weights, dequantizes them and requantizes them to the chosen width on every
  call (two floating-point operations per element), fake-quantizes its input activations at
  that width, and runs the convolution in floating point.
- `torch_ao_int8`: post-training static int8 quantization with torch.ao (FX graph mode, the
  x86/fbgemm backend), the int8 CPU inference users already have.
- `torch_ao_fake_quant_qat`: a plain fake-quant QAT model (torch.ao `prepare_qat_fx`), the
  training step DQT's step is compared with.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dqt_triton import DQTModel, numerics
from dqt_triton.controller import budget_price


def _fake_quant(x: Tensor, step: Tensor, lo: int, hi: int) -> Tensor:
    return torch.clamp(torch.round(x / step), lo, hi) * step


class DequantRequantDynamic(nn.Module):
    """Float dynamic-precision inference of `model` (see the module docstring)."""

    def __init__(self, model: DQTModel) -> None:
        super().__init__()
        if model.controller is None:
            raise ValueError("DequantRequantDynamic needs a DQTModel built with dynamic=True")
        model = model.eval()
        self.steps = model.steps
        self.names = list(model.layer_names)
        self.candidate_bits = list(model.candidate_bits)
        self.input_step = float(model.input_step)
        self.governed = {n: i for i, n in enumerate(model.governed)}
        self.fixed_bits = {n: model.edge_bits or numerics.MASTER_BITS for n in self.names}
        self.source = model.arch.controller_source
        self.layers: dict[str, dict] = {}
        with torch.no_grad():
            for name in self.names:
                layer = model.layers[name]
                steps = layer.weight_scales().detach()
                scales, shifts = [], []
                for bn in layer.norms():  # one batch norm per weight shift (or one shared)
                    scale, shift = torch.ones_like(steps), torch.zeros_like(steps)
                    if layer.bias is not None:
                        shift = layer.bias.detach().clone()
                    if bn is not None:
                        inv = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                        scale, shift = inv, (shift - bn.running_mean) * inv + bn.bias.detach()
                    scales.append(scale)
                    shifts.append(shift)
                self.layers[name] = {"codes": layer.weight_codes().detach(),
                                     "steps": steps.view((-1,) + (1,) * (layer.weight.dim() - 1)),
                                     "scale": scales, "shift": shifts, "relu": layer.relu, "conv": layer.conv}
            # Step and sign of every value in the graph (index 0 is the input), as in DQT.
            self.value_scale = [float(model.input_step)]
            for step in self.steps:
                name = step.name
                if step.kind in ("layer", "add") and name in model.quantizers:
                    self.value_scale.append(float(model.quantizers[name].scale()))
                else:
                    self.value_scale.append(self.value_scale[step.inputs[0]])
            self.value_signed = list(model.arch.value_signed)
            ctrl = model.controller
            self.ctrl_pool = ctrl.pool
            self.ctrl_w1, self.ctrl_w2 = ctrl.fc1.weight.detach(), ctrl.fc2.weight.detach()
            self.ctrl_b1 = None if ctrl.fc1.bias is None else ctrl.fc1.bias.detach()
            self.ctrl_b2 = None if ctrl.fc2.bias is None else ctrl.fc2.bias.detach()
            self.ctrl_bn = copy.deepcopy(ctrl.fc1.bn).eval()
            self.num_layers, self.num_choices = ctrl.num_layers, ctrl.num_choices
            self.ctrl_offsets = ctrl.price_offsets(torch.tensor([budget_price(model.budget_code)])).detach()
        self.last_bits: Tensor | None = None

    def controller(self, x: Tensor) -> Tensor:
        """Chosen widths [B, governed layers] from the float controller (same price as DQT)."""
        h = x
        if self.ctrl_pool is not None:
            h = F.avg_pool2d(h, self.ctrl_pool)
        h = torch.relu(self.ctrl_bn(F.linear(h.flatten(1), self.ctrl_w1, self.ctrl_b1)))
        logits = F.linear(h, self.ctrl_w2, self.ctrl_b2).view(-1, self.num_layers, self.num_choices)
        table = torch.tensor(self.candidate_bits, device=x.device)
        return table[(logits - self.ctrl_offsets.to(x.device)).argmax(-1)]

    def _layer(self, name: str, x: Tensor, x_scale: float, x_signed: bool, widths: Tensor) -> Tensor:
        p = self.layers[name]
        out = None
        for bits in torch.unique(widths).tolist():
            k = numerics.MASTER_BITS - bits
            rows = (widths == bits).nonzero().flatten()
            # Dequantize the 8-bit master codes, requantize at `bits`: two float ops per element.
            w_step = p["steps"] * 2**k
            w = _fake_quant(p["codes"] * p["steps"], w_step, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            lo, hi = numerics.code_range(bits, x_signed)
            xq = _fake_quant(x[rows], torch.tensor(x_scale * 2**k, device=x.device), lo, hi)
            if p["conv"] is None:
                y = F.linear(xq, w)
            else:
                c = p["conv"]
                y = F.conv2d(xq, w, None, c["stride"], c["padding"], c["dilation"], c["groups"])
            view = (1, -1) + (1,) * (y.dim() - 2)
            y = y * p["scale"][k].view(view) + p["shift"][k].view(view)
            if p["relu"]:
                y = torch.relu(y)
            if out is None:
                out = y.new_empty((x.shape[0], *y.shape[1:]))
            out[rows] = y
        return out

    @torch.no_grad()
    def forward(self, codes: Tensor) -> Tensor:
        x = codes.to(torch.float32) * self.input_step
        widths = None
        values = [x]
        for step in self.steps:
            ins = [values[i] for i in step.inputs]
            kind = step.kind
            if kind == "layer":
                src, name = step.inputs[0], step.name
                if name in self.governed:
                    if widths is None:  # the controller reads the first layer's output, as in DQT
                        widths = self.controller(values[self.source])
                        self.last_bits = widths
                    chosen = widths[:, self.governed[name]]
                else:
                    chosen = torch.full((x.shape[0],), self.fixed_bits[name], device=x.device)
                out = self._layer(name, ins[0], self.value_scale[src], self.value_signed[src], chosen)
            elif kind == "add":
                out = ins[0] + ins[1]
                out = torch.relu(out) if step.relu else out
            elif kind == "relu":
                out = torch.relu(ins[0])
            elif kind == "maxpool":
                g = step.geometry
                out = F.max_pool2d(ins[0], g["kernel"], g["stride"], g["padding"], g["dilation"])
            elif kind == "avgpool":
                g = step.geometry
                out = (F.adaptive_avg_pool2d(ins[0], 1) if g.get("global")
                       else F.avg_pool2d(ins[0], g["kernel"], g["stride"], g["padding"]))
            elif kind == "flatten":
                out = ins[0].flatten(1)
            else:
                raise ValueError(f"unknown step kind {kind!r}")
            values.append(out)
        return values[-1]


def torch_ao_int8(net: nn.Module, input_shape, calibration: list[Tensor]) -> nn.Module:
    """torch.ao FX post-training static int8 model (x86/fbgemm), calibrated on `calibration`."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        prepared = prepare_fx(copy.deepcopy(net).eval(), get_default_qconfig_mapping("x86"),
                              (torch.zeros(1, *input_shape),))
        with torch.no_grad():
            for batch in calibration:
                prepared(batch)
        return convert_fx(prepared)


def torch_ao_fake_quant_qat(net: nn.Module, input_shape) -> nn.Module:
    """torch.ao FX fake-quant QAT model (8-bit, x86 qconfig), ready to train."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_qat_fx(copy.deepcopy(net).train(), get_default_qat_qconfig_mapping("x86"),
                              (torch.zeros(1, *input_shape),))
