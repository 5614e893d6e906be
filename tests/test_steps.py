"""The step kinds added for the torchvision zoo, in a model small enough for every backend:
ReLU6 / Hardtanh clamps, ceil-mode max pool, channel concatenation, adaptive average pooling,
the spatial mean, and an output that is not a layer. Integer eval == frozen == reloaded, and
the reference, cpu and Triton backends give the same integers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dqt_triton as dq
from dqt_triton import numerics


class ZooOps(nn.Module):
    """Every new step kind; `pooled_output` ends SqueezeNet-style (ReLU, pool, flatten)."""

    def __init__(self, pooled_output: bool) -> None:
        super().__init__()
        self.pooled_output = pooled_output
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.left = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Hardtanh(0.0, 4.0))
        self.mix = nn.Sequential(nn.Conv2d(12, 10, 1), nn.ReLU())
        self.fc = nn.Linear(10, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = F.adaptive_avg_pool2d(x, (3, 2))
        x = self.mix(x)
        if self.pooled_output:
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x.mean((2, 3)))


def train_small(module: nn.Module, input_shape: tuple, mode: str, seed: int = 0):
    """Convert `module`, train it six dqt_loss steps, and leave it in eval at `mode` ("8", "4",
    "2" or "dynamic"). Inputs differ in brightness per sample, so that even 2-bit activations
    tell the samples apart."""
    torch.manual_seed(seed)
    model = dq.DQTModel.from_float(module, input_shape, candidate_bits=(2, 4, 8), dynamic=mode == "dynamic")
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(4, *input_shape, generator=gen) * torch.tensor([40.0, 100.0, 180.0, 255.0]).view(4, 1, 1, 1)).to(
        torch.uint8)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(6):
        out = model.dqt_loss(x, y, alpha=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    if mode != "dynamic":
        model.set_bits(int(mode))
    return model, x


def build(pooled_output: bool, mode: str):
    torch.manual_seed(0)
    return train_small(ZooOps(pooled_output), (3, 9, 9), mode)


def assert_eval_equals_frozen_reloaded_and_reference(model, x, tmp_path) -> None:
    """The integer eval on distinct logits == frozen == saved and reloaded == the reference backend."""
    logits = model(x)
    assert logits.shape == (4, 10) and logits.dtype == torch.float32
    assert not all(torch.equal(logits[0], row) for row in logits[1:]), "samples must differ for the comparison to mean anything"
    assert torch.equal(model.freeze()(x), logits)
    model.save(tmp_path / "m.pt")
    assert torch.equal(dq.DQTModel.load(tmp_path / "m.pt").eval()(x), logits)
    with dq.use_backend("reference"):
        assert torch.equal(model.freeze()(x), logits)


def assert_triton_gives_the_same_integers(model, x) -> None:
    """The frozen model on the Triton backend (the interpreter on CPU) == the CPU eval, on 2 samples."""
    from tests.kernels.device import DEVICE

    x = x[:2]
    logits = model(x)
    with dq.use_backend("triton"):
        got = model.freeze()(x.to(DEVICE))
    assert torch.equal(got.cpu(), logits)


def test_capture_records_the_new_step_kinds():
    steps = [s.kind for s in build(True, "8")[0].steps]
    assert steps.count("cat") == 1 and steps.count("avgpool") == 2 and steps[-1] == "dequant"
    steps = [s.kind for s in build(False, "8")[0].steps]
    assert steps[-3:] == ["avgpool", "flatten", "layer"]  # x.mean((2, 3)): the global pool, flattened
    model = build(False, "8")[0]
    clamps = [s.geometry.get("clamp_max") for s in model.steps if s.kind == "layer"]
    assert clamps[:3] == [6.0, None, 4.0]
    program = model.integer_program().layers
    caps = [program[n].clamp_max for n in model.layer_names[:3]]
    assert caps[1] is None and all(isinstance(c, int) and 0 <= c <= 255 for c in (caps[0], caps[2]))


@pytest.mark.parametrize("mode", ["8", "4", "2", "dynamic"])
@pytest.mark.parametrize("pooled_output", [False, True])
def test_eval_equals_frozen_and_reloaded_and_every_cpu_backend(pooled_output, mode, tmp_path):
    assert_eval_equals_frozen_reloaded_and_reference(*build(pooled_output, mode), tmp_path)


@pytest.mark.interpreter
@pytest.mark.parametrize("pooled_output", [False, True])
def test_triton_backend_gives_the_same_integers(pooled_output):
    assert_triton_gives_the_same_integers(*build(pooled_output, "dynamic"))


@pytest.mark.parametrize("backend", ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_rescale_to_the_same_step_is_the_identity_and_otherwise_rounds(backend):
    from tests.kernels.device import on_device

    codes = torch.arange(-128, 128, dtype=torch.int32).to(torch.int8)
    c = numerics.rescale_constants(0.037, 0.037)
    assert (c.k1, c.k2, c.k3) == (1 << c.shift, 0, 0)
    dev = on_device(codes) if backend == "triton" else codes
    same = dq.int_add(dev, dev, k1=c.k1, k2=0, k3=0, shift=c.shift, backend=backend).cpu()
    assert torch.equal(same, codes)
    c = numerics.rescale_constants(0.05, 0.02)  # 2.5x: the oracle rounds code * 2.5 half up, then clamps
    half = dq.int_add(dev, dev, k1=c.k1, k2=0, k3=0, shift=c.shift, backend=backend).cpu()
    want = torch.floor(codes.double() * 2.5 + 0.5).clamp(-128, 127).to(torch.int8)
    assert torch.equal(half, want)


def test_unsupported_variants_of_the_new_ops_are_named():
    class CatRows(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.cat([x, x], 0))

    with pytest.raises(dq.UnsupportedLayerError, match="only concatenation along channels"):
        dq.DQTModel.from_float(CatRows(), (4,))
    with pytest.raises(dq.UnsupportedLayerError, match="Hardtanh"):
        dq.DQTModel.from_float(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Hardtanh(-1.0, 1.0), nn.Flatten(),
                                             nn.Linear(2 * 4 * 4, 2)), (1, 4, 4))


# ----------------------------------------------------------------------------- lookup tables


@pytest.mark.parametrize("backend", ["reference", "cpu", pytest.param("triton", marks=pytest.mark.interpreter)])
@pytest.mark.parametrize(("x_dtype", "t_dtype"), [(torch.int8, torch.uint8), (torch.uint8, torch.int8),
                                                  (torch.int8, torch.int8)])
def test_int_lut_equals_indexing_on_every_backend(backend, x_dtype, t_dtype):
    from tests.kernels.device import on_device

    gen = torch.Generator().manual_seed(5)
    lo = -128 if x_dtype == torch.int8 else 0
    x = torch.randint(lo, lo + 256, (3, 5, 7, 2), generator=gen).to(x_dtype).permute(0, 3, 1, 2)  # not contiguous
    x[0, 0, 0, :2] = torch.tensor([lo, lo + 255], dtype=x_dtype)  # both ends of the table
    tlo = -128 if t_dtype == torch.int8 else 0
    table = torch.randint(tlo, tlo + 256, (256,), generator=gen).to(t_dtype)
    want = table[x.long() - lo]  # the oracle: torch indexing
    got = dq.int_lut(on_device(x), on_device(table), backend=backend).cpu() if backend == "triton" else \
        dq.int_lut(x, table, backend=backend)
    assert got.dtype == t_dtype and torch.equal(got, want)


def test_int_lut_refuses_a_bad_table():
    x = torch.zeros(4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="256 entries"):
        dq.int_lut(x, torch.zeros(255, dtype=torch.uint8))
    with pytest.raises(TypeError, match="table"):
        dq.int_lut(x, torch.zeros(256, dtype=torch.int32))


@pytest.mark.parametrize("function", sorted(numerics.LUT_FUNCTIONS))
@pytest.mark.parametrize("in_signed", [False, True])
def test_lut_table_is_the_rounded_function_of_each_code(function, in_signed):
    out_signed = function not in ("sigmoid", "hardsigmoid")
    table = numerics.lut_table(function, 0.05, in_signed, 0.01, out_signed)
    lo = -128 if in_signed else 0
    fn = {"silu": lambda v: v / (1 + math.exp(-v)), "sigmoid": lambda v: 1 / (1 + math.exp(-v)),
          "hardswish": lambda v: v * min(max(v + 3, 0), 6) / 6, "hardsigmoid": lambda v: min(max(v / 6 + 0.5, 0), 1),
          "gelu": lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))),
          "gelu_tanh": lambda v: 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3))),
          "tanh": math.tanh}[function]
    hi_out, lo_out = (127, -128) if out_signed else (255, 0)
    want = [min(max(math.floor(fn((lo + i) * 0.05) / 0.01 + 0.5), lo_out), hi_out) for i in range(256)]
    # float64 math in two libraries may differ in the last bit; a code sitting exactly on a
    # rounding boundary is the only place that could show, so compare with that in mind
    near_tie = [abs(fn((lo + i) * 0.05) / 0.01 + 0.5 - round(fn((lo + i) * 0.05) / 0.01 + 0.5)) < 1e-9
                for i in range(256)]
    mismatched = [i for i in range(256) if int(table[i]) != want[i] and not near_tie[i]]
    assert not mismatched, mismatched


# ----------------------------------------------------------------------------- shuffle, SE, LUT model


def stochastic_depth(x: torch.Tensor, p: float, mode: str, training: bool = True) -> torch.Tensor:
    """Stands where torchvision.ops.stochastic_depth stands (fx-wrapped, called by name);
    drops the branch for the whole batch with probability p in training."""
    if not training or p == 0.0:
        return x
    return x * (torch.rand(()) >= p).to(x.dtype) / (1 - p)


torch.fx.wrap("stochastic_depth")


class ShuffleSE(nn.Module):
    """ShuffleNet's split / concat / channel shuffle and EfficientNet's SiLU, squeeze-excitation
    product and stochastic depth, at a size every backend runs in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.SiLU())
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4), nn.ReLU())
        self.se_reduce, self.se_expand = nn.Conv2d(8, 2, 1), nn.Conv2d(2, 8, 1)
        self.act, self.gate = nn.SiLU(), nn.Sigmoid()
        self.head = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x):
        x = self.stem(x)
        x1, x2 = x.chunk(2, dim=1)
        x = torch.cat((x1, self.branch(x2)), dim=1)
        b, c, h, w = x.size()
        x = torch.transpose(x.view(b, 2, c // 2, h, w), 1, 2).contiguous().view(b, -1, h, w)  # channel shuffle
        scale = self.gate(self.se_expand(self.act(self.se_reduce(F.adaptive_avg_pool2d(x, 1)))))
        x = x + stochastic_depth(scale * x, 0.2, "row", self.training)
        return self.fc(F.hardswish(self.head(x)).mean([2, 3]))


def build_shuffle_se(mode: str):
    torch.manual_seed(0)
    return train_small(ShuffleSE(), (3, 6, 6), mode)


def test_shuffle_and_squeeze_excitation_capture():
    kinds = [s.kind for s in build_shuffle_se("8")[0].steps]
    for kind, count in (("slice", 2), ("cat", 1), ("reshape", 2), ("permute", 1), ("lut", 4), ("mul", 1), ("add", 1)):
        assert kinds.count(kind) == count, (kind, kinds)
    assert "split" not in kinds and "noop" not in kinds


@pytest.mark.parametrize("mode", ["8", "4", "2", "dynamic"])
def test_shuffle_and_squeeze_excitation_eval_equals_frozen_and_reloaded(mode, tmp_path):
    assert_eval_equals_frozen_reloaded_and_reference(*build_shuffle_se(mode), tmp_path)


@pytest.mark.interpreter
def test_shuffle_and_squeeze_excitation_on_triton():
    assert_triton_gives_the_same_integers(*build_shuffle_se("dynamic"))


# ----------------------------------------------------------------------------- standalone batch norm


class DenseLike(nn.Module):
    """DenseNet's pre-activation layers: BN -> ReLU -> conv on a concatenation, a transition,
    and a final BN before the pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.norm1, self.conv1 = nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1)
        self.norm2, self.conv2 = nn.BatchNorm2d(10), nn.Conv2d(10, 4, 1)
        self.norm3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([x, self.conv1(F.relu(self.norm1(x)))], 1)
        y = self.conv2(torch.relu(self.norm2(x)))
        x = torch.cat([y, y], 1)  # so that norm3 follows no convolution, as DenseNet's norm5
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm3(x)), (1, 1)), 1))


def build_dense(mode: str):
    torch.manual_seed(0)
    return train_small(DenseLike(), (3, 6, 6), mode)


@pytest.mark.parametrize("mode", ["8", "2", "dynamic"])
def test_standalone_batch_norm_eval_equals_frozen_and_reloaded(mode, tmp_path):
    model, x = build_dense(mode)
    assert [s.kind for s in model.steps].count("affine") == 3
    assert_eval_equals_frozen_reloaded_and_reference(model, x, tmp_path)


@pytest.mark.interpreter
def test_standalone_batch_norm_on_triton():
    assert_triton_gives_the_same_integers(*build_dense("dynamic"))


@pytest.mark.parametrize("relu", [False, True])
def test_affine_constants_are_the_oracle_conv_and_track_the_float_batch_norm(relu):
    """The step's integer output is tests/oracle.py's depthwise conv with its constants (exact),
    and those constants compute the float batch norm to within one output code."""
    from dqt_triton.steps.affine import affine_constants
    from tests import oracle

    gen = torch.Generator().manual_seed(11)
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5, generator=gen) * 3)
        bn.running_var.copy_(torch.rand(5, generator=gen) * 4 + 0.1)
        bn.weight.copy_(torch.randn(5, generator=gen))  # includes negative gammas
        bn.bias.copy_(torch.randn(5, generator=gen))
    in_step, out_step = 0.04, 0.03
    p = affine_constants(bn, in_step, out_step, relu)
    bn = bn.double()
    x = torch.randint(-128, 128, (3, 5, 4, 4), generator=gen).to(torch.int8)
    got = dq.int_conv2d(x, p.weight, groups=5, bias=p.bias, multiplier=p.multiplier, shift=p.shift,
                        relu=relu)
    spec = dict(bias=p.bias, mode="requant", multiplier=p.multiplier, rshift=p.shift, scale=torch.zeros(5),
                relu=relu, out_dtype=torch.uint8 if relu else torch.int8)
    zero = torch.zeros(3, dtype=torch.long)
    assert torch.equal(got, oracle.conv2d(x, p.weight, zero, zero, "floor", spec, (1, 1), (0, 0), (1, 1), 5))
    real = bn(x.double() * in_step).detach()
    if relu:
        real = real.clamp_min(0)
    want = (real / out_step).round().clamp(0 if relu else -128, 255 if relu else 127)
    assert float((got.double() - want).abs().max()) <= 1.0
