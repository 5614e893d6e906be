"""The step kinds added for the torchvision zoo, in a model small enough for every backend:
ReLU6 / Hardtanh clamps, ceil-mode max pool, channel concatenation, adaptive average pooling,
the spatial mean, and an output that is not a layer. Integer eval == frozen == reloaded, and
the reference, cpu and Triton backends give the same integers."""

from __future__ import annotations

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


def build(pooled_output: bool, mode: str, seed: int = 0):
    torch.manual_seed(seed)
    model = dq.DQTModel.from_float(ZooOps(pooled_output), (3, 9, 9), candidate_bits=(2, 4, 8),
                                   dynamic=mode == "dynamic")
    gen = torch.Generator().manual_seed(seed)
    # Different brightness per sample, so that even 2-bit activations tell the samples apart.
    x = (torch.rand(4, 3, 9, 9, generator=gen) * torch.tensor([40.0, 100.0, 180.0, 255.0]).view(4, 1, 1, 1)).to(
        torch.uint8)
    y = torch.randint(0, 10, (4,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(6):
        out = model.dqt_loss(x, y, alpha=1.0)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    if mode != "dynamic":
        model.set_bits(int(mode))
    return model, x


def test_capture_records_the_new_step_kinds():
    steps = [s["kind"] for s in build(True, "8")[0].steps]
    assert steps.count("cat") == 1 and steps.count("avgpool") == 2 and steps[-1] == "dequant"
    steps = [s["kind"] for s in build(False, "8")[0].steps]
    assert steps[-3:] == ["avgpool", "flatten", "layer"]  # x.mean((2, 3)): the global pool, flattened
    model = build(False, "8")[0]
    clamps = [s["geometry"].get("clamp_max") for s in model.steps if s["kind"] == "layer"]
    assert clamps[:3] == [6.0, None, 4.0]
    program = model.integer_program()["layers"]
    caps = [program[n].get("clamp_max") for n in model.layer_names[:3]]
    assert caps[1] is None and all(isinstance(c, int) and 0 <= c <= 255 for c in (caps[0], caps[2]))


@pytest.mark.parametrize("mode", ["8", "4", "2", "dynamic"])
@pytest.mark.parametrize("pooled_output", [False, True])
def test_eval_equals_frozen_and_reloaded_and_every_cpu_backend(pooled_output, mode, tmp_path):
    model, x = build(pooled_output, mode)
    logits = model(x)
    assert logits.shape == (4, 10) and logits.dtype == torch.float32
    assert not all(torch.equal(logits[0], row) for row in logits[1:]), "samples must differ for the comparison to mean anything"
    assert torch.equal(model.freeze()(x), logits)
    model.save(tmp_path / "m.pt")
    assert torch.equal(dq.DQTModel.load(tmp_path / "m.pt").eval()(x), logits)
    with dq.use_backend("reference"):
        assert torch.equal(model.freeze()(x), logits)


@pytest.mark.interpreter
@pytest.mark.parametrize("pooled_output", [False, True])
def test_triton_backend_gives_the_same_integers(pooled_output):
    from tests.kernels.device import DEVICE

    model, x = build(pooled_output, "dynamic")
    x = x[:2]
    logits = model(x)
    with dq.use_backend("triton"):
        got = model.freeze()(x.to(DEVICE))
    assert torch.equal(got.cpu(), logits)


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
