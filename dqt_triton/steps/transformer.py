"""Transformer steps: products of two activations (attention), softmax, LayerNorm, embeddings,
learned constants (position embeddings), scaling by a number and the mean over tokens
(docs/numerics.md section 10).

Their training paths produce exactly the integers of the integer program: the forward value is
the integer result (computed in torch on the float codes), and gradients flow through the float
operation it stands for (a straight-through estimate), with LSQ gradients to the output steps.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import numerics, ops
from ..nn import ActQuantizer
from ..ops_transformer import layernorm_codes, round_shift_codes, softmax_codes
from ..quant import lsq_codes, lsq_grad_factor, scale_grad
from .base import Build, Capture, CodeValue, Parts, Step, StepKind, TrainPass, on_device
from .constants import (
    DTYPES,
    AttentionProgram,
    LayerNormProgram,
    ProductProgram,
    SoftmaxProgram,
    TableProgram,
)

Tensor = torch.Tensor


def _exact(q_float: Tensor, q_int: Tensor) -> Tensor:
    """The integer result as the forward value, the float codes' gradients."""
    return q_float + (q_int.to(q_float.dtype) - q_float).detach()


def scaled_step(step, factor: float) -> Tensor:
    """A step times a positive number, in float32 on the training path and in the program alike."""
    return torch.as_tensor(step, dtype=torch.float32) * torch.tensor(factor, dtype=torch.float32)


# ----------------------------------------------------------------------------- products


def product_program(scale_a: float, scale_b: float, factor: float, scale_out: float, signed: bool,
                    b_token_axis: int) -> ProductProgram:
    """Requantization of a @ b * factor to the output step (section 4.1's (M, S))."""
    multiplier, shift = numerics.quantize_multiplier(scale_a * scale_b * factor / scale_out)
    return ProductProgram(multiplier, shift, "int8" if signed else "uint8", b_token_axis)


def train_product(a: CodeValue, b: CodeValue, factor: float, quant: ActQuantizer, b_token_axis: int) -> CodeValue:
    """a @ b * factor requantized to `quant`'s step, exactly as `int_bmm` (8-bit operands)."""
    y = torch.matmul(a.q * a.scale, b.q * b.scale) * factor
    q_lsq = quant(y)
    p = product_program(float(a.scale.detach()), float(b.scale.detach()), factor, float(quant.scale().detach()),
                        quant.signed, b_token_axis)
    with torch.no_grad():  # integer-valued operands: float64 sums are exact (|v| < 2^31)
        v = torch.matmul(a.q.double(), b.q.double()).long()
        q_int = round_shift_codes(v * p.multiplier, p.shift).clamp_(quant.lo, quant.hi)
    return CodeValue(_exact(q_lsq, q_int), quant.scale(), quant.signed)


def checked_constants(ctx, key: str, like: Tensor, check, *consts: Tensor) -> tuple[Tensor, ...]:
    """Program constants on `like`'s device, their values checked by `check` once, before they are
    first placed (kept in the runtime's cache): per call the ops then read nothing on the host."""
    key = f"{key}@{like.device}"
    placed = ctx.cache.get(key)
    if placed is None:
        check(*consts)
        placed = ctx.cache[key] = tuple(t.to(like.device) for t in consts)
    return placed


def run_product(a: Tensor, b: Tensor, p: ProductProgram) -> Tensor:
    return ops.int_bmm(a, b, b_token_axis=p.b_token_axis, multiplier=p.multiplier, shift=p.shift,
                       out_dtype=DTYPES[p.out_dtype])


def _token_axis_of(node: fx.Node) -> int:
    """-1 when b is a transpose of its last two axes (K^T: its tokens are columns), else -2."""
    if node.op == "call_method" and node.target == "transpose" or \
            node.op == "call_function" and node.target is torch.transpose:
        dims = sorted(int(d) for d in node.args[1:3])
        return -1 if dims in ([-2, -1], [2, 3]) else -2
    return -2


_MATMUL_FUNCS = (operator.matmul, torch.matmul, torch.bmm)


class MatmulKind(StepKind):
    """a @ b of two values (attention's Q K^T and P V): `int_bmm`, requantized to a learned step."""

    kind = "matmul"
    program_key = "ops"
    constants_type = ProductProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, _MATMUL_FUNCS, ("matmul", "bmm"))

    def capture(self, node: fx.Node, cap: Capture) -> None:
        if len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in node.args):
            cap.reject(node, "only the product of two tensors is supported")
            return
        shapes = [cap.shape(a) for a in node.args]
        if any(s is None or len(s) < 3 for s in shapes):
            cap.reject(node, "a product of two activations needs batched operands [B, ..., M, K] @ [B, ..., K, N] "
                             "(and the model's input shape)")
            return
        inputs = [cap.source(node, a) for a in node.args]
        if None not in inputs:  # one sample's MACs: every leading axis but the batch, M, K, N
            macs = math.prod(shapes[0][1:]) * shapes[1][-1]
            cap.emit(Step(self.kind, inputs, f"matmul{len(cap.steps)}",
                          geometry={"b_token_axis": _token_axis_of(node.args[1]), "macs": macs}), node)

    def build(self, step: Step, b: Build) -> bool:
        signed = any(b.signed[i] for i in step.inputs)
        b.quantizers[step.name] = ActQuantizer(signed=signed)
        return signed

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        return train_product(ins[0], ins[1], 1.0, tp.parts.quantizers[step.name], step.geometry["b_token_axis"])

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        quant = parts.quantizers[step.name]
        out_scale = float(quant.scale())
        return product_program(in_scales[0], in_scales[1], 1.0, out_scale, quant.signed,
                               step.geometry["b_token_axis"]), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: ProductProgram, ctx) -> Tensor:
        return run_product(ins[0], ins[1], consts)


# ----------------------------------------------------------------------------- scaling by a number


class ScaleKind(StepKind):
    """x * c or x / c by a positive number (attention's 1 / sqrt(d)): the codes stay, the step
    becomes D * c. No arithmetic on codes at all."""

    kind = "scale"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        if not cap.calls(node, (operator.mul, operator.truediv, torch.mul, torch.div), ("mul", "div")):
            return False
        args = list(node.args)
        return len(args) == 2 and sum(isinstance(a, fx.Node) and not cap.is_static(a) for a in args) == 1

    def capture(self, node: fx.Node, cap: Capture) -> None:
        tensor = next(a for a in node.args if isinstance(a, fx.Node) and not cap.is_static(a))
        number = next(a for a in node.args if a is not tensor)
        if isinstance(number, fx.Node):
            number = cap.examples[number][1]
        divide = node.target in (operator.truediv, torch.div, "div")
        if divide and node.args[0] is not tensor:
            cap.reject(node, "a number divided by a tensor is not a scaling")
            return
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number) \
                or number <= 0:
            cap.reject(node, f"only scaling by a positive finite number is supported, got {number!r}")
            return
        src = cap.source(node, tensor)
        if src is not None:
            cap.emit(Step(self.kind, [src], geometry={"factor": 1.0 / number if divide else float(number)}), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        return CodeValue(q, scaled_step(scale, step.geometry["factor"]).to(q.device), signed)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        return None, float(scaled_step(in_scales[0], step.geometry["factor"]))

    def run(self, step: Step, ins: list[Tensor], consts, ctx) -> Tensor:
        return ins[0]


# ----------------------------------------------------------------------------- softmax


def train_softmax(x: CodeValue, causal: bool) -> CodeValue:
    """Softmax codes of step 1/255, exactly `int_softmax`'s, with float softmax gradients."""
    q, scale, _ = x
    real = q * scale
    if causal:
        M, N = q.shape[-2:]
        keep = torch.arange(N, device=q.device)[None, :] <= torch.arange(M, device=q.device)[:, None] + (N - M)
        real = real.masked_fill(~keep, float("-inf"))
    p_float = torch.softmax(real, dim=-1) * numerics.SOFTMAX_OUT
    table = numerics.softmax_table(float(scale.detach())).to(q.device)
    with torch.no_grad():
        p_int = softmax_codes(q.detach().long(), table, causal)
    step = torch.tensor(numerics.SOFTMAX_STEP, dtype=torch.float32, device=q.device)
    return CodeValue(_exact(p_float, p_int), step, False)


def _softmax_dim(node: fx.Node) -> Optional[int]:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dim if isinstance(dim, int) else None


class SoftmaxKind(StepKind):
    """F.softmax / torch.softmax / x.softmax over the last axis: `int_softmax`, uint8 codes of step 1/255."""

    kind = "softmax"
    program_key = "ops"
    constants_type = SoftmaxProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return cap.calls(node, (F.softmax, torch.softmax), ("softmax",)) or isinstance(cap.module(node), nn.Softmax)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        dim = m.dim if m is not None else _softmax_dim(node)
        shape = cap.shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if shape is None or dim is None or int(dim) % len(shape) != len(shape) - 1:
            cap.reject(node, f"only softmax over the last axis is supported, got dim={dim!r}")
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], f"softmax{len(cap.steps)}", geometry={"causal": False}), node)

    def build(self, step: Step, b: Build) -> bool:
        return False

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        return train_softmax(ins[0], step.geometry["causal"])

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        return SoftmaxProgram(numerics.softmax_table(in_scales[0]), step.geometry["causal"]), numerics.SOFTMAX_STEP

    def run(self, step: Step, ins: list[Tensor], consts: SoftmaxProgram, ctx) -> Tensor:
        table, = checked_constants(ctx, f"{step.name}.table", ins[0], ops.check_softmax_table, consts.table)
        return ops.run_softmax(ins[0], table, causal=consts.causal)


class AttentionKind(StepKind):
    """F.scaled_dot_product_attention(q, k, v[, is_causal]) as two products and a softmax:
    scores = q @ k^T * scale requantized to a learned step, their integer softmax, then p @ v
    requantized to another."""

    kind = "attention"
    program_key = "ops"
    constants_type = AttentionProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return node.op == "call_function" and node.target is F.scaled_dot_product_attention

    def capture(self, node: fx.Node, cap: Capture) -> None:
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        args = {**dict(zip(names, node.args)), **node.kwargs}
        if args.get("attn_mask") is not None or args.get("enable_gqa"):
            cap.reject(node, "attn_mask and enable_gqa are unsupported; a causal mask is is_causal=True")
            return
        shapes = [cap.shape(args[n]) if isinstance(args.get(n), fx.Node) else None for n in names[:3]]
        if any(s is None for s in shapes):
            cap.reject(node, "attention needs the model's input shape to be resolved")
            return
        scale = args.get("scale")
        scale = 1.0 / math.sqrt(shapes[0][-1]) if scale is None else float(scale)
        inputs = [cap.source(node, args[n]) for n in names[:3]]
        if None not in inputs:  # dropout_p is ignored: training does not drop (as nn.Dropout, NoOpKind)
            (*heads, T, d), S, dv = shapes[0][1:], shapes[1][-2], shapes[2][-1]
            macs = math.prod(heads) * T * S * (d + dv)  # one sample's q k^T and p v
            cap.emit(Step(self.kind, inputs, f"attn{len(cap.steps)}",
                          geometry={"causal": bool(args.get("is_causal", False)), "scale": scale, "macs": macs}),
                     node)

    def build(self, step: Step, b: Build) -> bool:
        b.quantizers[step.name + "_scores"] = ActQuantizer(signed=True)
        b.quantizers[step.name] = ActQuantizer(signed=True)
        return True

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, k, v = ins
        kt = CodeValue(k.q.transpose(-2, -1), k.scale, k.signed)
        scores = train_product(q, kt, step.geometry["scale"], tp.parts.quantizers[step.name + "_scores"], -1)
        p = train_softmax(scores, step.geometry["causal"])
        return train_product(p, v, 1.0, tp.parts.quantizers[step.name], -2)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        sq, out = parts.quantizers[step.name + "_scores"], parts.quantizers[step.name]
        s_scale, out_scale = float(sq.scale()), float(out.scale())
        scores = product_program(in_scales[0], in_scales[1], step.geometry["scale"], s_scale, True, -1)
        softmax = SoftmaxProgram(numerics.softmax_table(s_scale), step.geometry["causal"])
        output = product_program(numerics.SOFTMAX_STEP, in_scales[2], 1.0, out_scale, True, -2)
        return AttentionProgram(scores, softmax, output), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: AttentionProgram, ctx) -> Tensor:
        q, k, v = ins
        scores = run_product(q, k.transpose(-2, -1), consts.scores)
        table, = checked_constants(ctx, f"{step.name}.table", q, ops.check_softmax_table, consts.softmax.table)
        p = ops.run_softmax(scores, table, causal=consts.softmax.causal)
        return run_product(p, v, consts.output)


# ----------------------------------------------------------------------------- LayerNorm


class LayerNormKind(StepKind):
    """nn.LayerNorm over the last axis: `int_layernorm` with gamma, beta and the output step folded."""

    kind = "layernorm"
    program_key = "ops"
    constants_type = LayerNormProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), nn.LayerNorm)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        if len(m.normalized_shape) != 1:
            cap.reject(node, f"only LayerNorm over the last axis is supported, got {tuple(m.normalized_shape)}")
            return
        if not 1 <= m.normalized_shape[0] <= numerics.LN_MAX_CHANNELS:
            cap.reject(node, f"LayerNorm over more than {numerics.LN_MAX_CHANNELS} channels")
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], f"ln{len(cap.steps)}", fused={"norm": m}), node)

    def build(self, step: Step, b: Build) -> bool:
        norm = step.fused["norm"]
        copy = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                            bias=norm.bias is not None)
        copy.load_state_dict(norm.state_dict())
        b.extras[step.name] = copy
        b.extra_specs[step.name] = {"type": "layernorm", "channels": norm.normalized_shape[0], "eps": norm.eps,
                                    "affine": norm.elementwise_affine, "bias": norm.bias is not None}
        b.quantizers[step.name] = ActQuantizer(signed=True)
        return True

    @staticmethod
    def _constants(norm: nn.LayerNorm, in_scale: float, out_scale: float) -> numerics.LayerNormConstants:
        return numerics.layernorm_constants(norm.weight, norm.bias, norm.normalized_shape[0], in_scale, out_scale,
                                            norm.eps)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, _ = ins[0]
        norm, quant = tp.parts.extras[step.name], tp.parts.quantizers[step.name]
        q_lsq = quant(F.layer_norm(q * scale, norm.normalized_shape, norm.weight, norm.bias, norm.eps))
        c = self._constants(norm, float(scale.detach()), float(quant.scale().detach()))
        with torch.no_grad():
            q_int = layernorm_codes(q.detach().long(), c.mult.to(q.device), c.offset.to(q.device), c.shift,
                                    c.eps_units).clamp_(quant.lo, quant.hi)
        return CodeValue(_exact(q_lsq, q_int), quant.scale(), True)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        quant = parts.quantizers[step.name]
        out_scale = float(quant.scale())
        c = self._constants(parts.extras[step.name], in_scales[0], out_scale)
        return LayerNormProgram(c.mult, c.offset, c.shift, c.eps_units, "int8"), out_scale

    def run(self, step: Step, ins: list[Tensor], consts: LayerNormProgram, ctx) -> Tensor:
        x = ins[0]
        mult, offset = checked_constants(ctx, f"{step.name}.norm", x, ops.check_layernorm_constants, consts.mult,
                                         consts.offset)
        return ops.run_layernorm(x, mult, offset, shift=consts.shift, eps_units=consts.eps_units,
                                 out_dtype=DTYPES[consts.out_dtype])


# ----------------------------------------------------------------------------- tables


class CodeTable(nn.Module):
    """A learned float table held as int8 codes of one learned step (LSQ): token embeddings, or a
    constant added to the activations (position embeddings)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(value.detach().clone().float())
        largest = float(value.detach().abs().max()) if value.numel() else 1.0
        self.log_step = nn.Parameter(torch.tensor(math.log(max(largest, 1e-8) / 127)))

    def step(self) -> Tensor:
        step = torch.exp(self.log_step)
        return scale_grad(step, lsq_grad_factor(self.weight.numel(), 127)) if self.training else step

    def codes(self) -> Tensor:
        """Float int8 codes with LSQ gradients."""
        return lsq_codes(self.weight, self.step(), -128, 127)


def _table_build(step: Step, b: Build, value: Tensor) -> None:
    b.extras[step.name] = CodeTable(value)
    b.extra_specs[step.name] = {"type": "table", "shape": list(value.shape)}


def _table_constants(parts: Parts, name: str) -> tuple[TableProgram, float]:
    table = parts.extras[name]
    return TableProgram(table.codes().detach().to(torch.int8)), float(table.step())


class EmbeddingKind(StepKind):
    """nn.Embedding on the network's input (token ids as uint8 codes, at most 256 tokens):
    `int_embedding` of a learned int8 table."""

    kind = "embedding"
    program_key = "ops"
    constants_type = TableProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return isinstance(cap.module(node), nn.Embedding)

    def capture(self, node: fx.Node, cap: Capture) -> None:
        m = cap.module(node)
        if m.max_norm is not None or m.num_embeddings > 256:
            cap.reject(node, "embeddings need at most 256 tokens (ids are 8-bit codes) and no max_norm")
            return
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src], f"emb{len(cap.steps)}", fused={"weight": m.weight}), node)

    def build(self, step: Step, b: Build) -> bool:
        _table_build(step, b, step.fused["weight"])
        return True

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        table = tp.parts.extras[step.name]
        return CodeValue(table.codes()[ins[0].q.detach().long()], table.step(), True)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        return _table_constants(parts, step.name)

    def run(self, step: Step, ins: list[Tensor], consts: TableProgram, ctx) -> Tensor:
        return ops.int_embedding(ins[0], on_device(consts.codes, ins[0], ctx, f"{step.name}.codes"))


class ParamKind(StepKind):
    """A learned tensor the model reads (`self.pos`, a get_attr node): int8 codes of a learned
    step, the same for every sample (a leading axis of 1 is the batch's)."""

    kind = "param"
    program_key = "ops"
    constants_type = TableProgram

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return node.op == "get_attr"

    def capture(self, node: fx.Node, cap: Capture) -> None:
        owner, value = cap.modules[""], None
        try:
            value = owner.get_parameter(node.target)
        except AttributeError:
            pass
        if value is None or value.dim() < 1:
            cap.reject(node, "only learned tensors (nn.Parameter, at least 1-D) are supported as constants")
            return
        per_sample = value[0] if value.shape[0] == 1 and value.dim() > 1 else value
        cap.emit(Step(self.kind, [0], f"param{len(cap.steps)}", fused={"value": per_sample}), node)

    def build(self, step: Step, b: Build) -> bool:
        _table_build(step, b, step.fused["value"])
        return True

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        table = tp.parts.extras[step.name]
        codes = table.codes()
        return CodeValue(codes.expand(ins[0].q.shape[0], *codes.shape), table.step(), True)

    def constants(self, step: Step, in_scales: list[float], in_signed: list[bool], parts: Parts):
        return _table_constants(parts, step.name)

    def run(self, step: Step, ins: list[Tensor], consts: TableProgram, ctx) -> Tensor:
        codes = on_device(consts.codes, ins[0], ctx, f"{step.name}.codes")
        return codes.expand(ins[0].shape[0], *codes.shape)


# ----------------------------------------------------------------------------- mean over tokens


class TokenMeanKind(StepKind):
    """x.mean(1) of token sequences [B, T, D]: the integer average of section 6 over the tokens."""

    kind = "tokenmean"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        if not cap.calls(node, (torch.mean,), ("mean",)) or not isinstance(node.args[0], fx.Node):
            return False
        shape = cap.shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        return shape is not None and len(shape) == 3 and isinstance(dim, int) and dim % 3 == 1 and not keepdim

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src = cap.source(node, node.args[0])
        if src is not None:
            cap.emit(Step(self.kind, [src]), node)

    def train(self, step: Step, ins: list[CodeValue], tp: TrainPass) -> CodeValue:
        q, scale, signed = ins[0]
        tokens = q.shape[1]
        mean = q.mean(1)
        exact = torch.floor((q.detach().sum(1) + tokens // 2) / tokens)
        return CodeValue(mean + (exact - mean).detach(), scale, signed)

    def run(self, step: Step, ins: list[Tensor], consts, ctx) -> Tensor:
        x = ins[0]
        return ops.int_adaptive_avg_pool2d(x.transpose(1, 2).unsqueeze(-1), 1).flatten(1)


class ExpandKind(StepKind):
    """x.expand(B, ...) that only repeats a value over the batch, which the integer program's
    constants already are: an alias."""

    kind = "noop"

    def match(self, node: fx.Node, cap: Capture) -> bool:
        return node.op == "call_method" and node.target == "expand"

    def capture(self, node: fx.Node, cap: Capture) -> None:
        src = cap.source(node, node.args[0])
        if src is None:
            return
        step = cap.steps[src - 1] if src else None
        if step is None or step.kind != "param" or tuple(cap.shape(node)[1:]) != tuple(step.fused["value"].shape):
            cap.reject(node, "only expanding a learned constant over the batch is supported")
            return
        cap.alias(node, src)


def extra_module(spec: dict) -> Optional[nn.Module]:
    """The untrained extra module of a transformer step's spec (`steps.affine.extra_from_spec`)."""
    if spec.get("type") == "layernorm":
        return nn.LayerNorm(spec["channels"], eps=spec["eps"], elementwise_affine=spec["affine"], bias=spec["bias"])
    if spec.get("type") == "table":
        return CodeTable(torch.zeros(spec["shape"]))
    return None
