"""torchvision's classification models through `DQTModel.from_float`, integer-exact.

Each model (weights=None, 10 classes, a small input) is converted in dynamic mode, trains two
`dqt_loss` steps with the `dqt train` recipe's clipping, and its integer eval must equal the
frozen model's output bit for bit at static 8, 4 and 2 bits and in dynamic mode, on inputs
whose logits differ between samples. At both shift rules, the first step's gradients (before any
update) must be finite: the static DQT objective, static 2 bits and the controller's objective.
The models come from the installed torchvision files without importing the torchvision package
(see tests/zoo.py and docs/installation.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dqt_triton as dq
from tests.zoo import torchvision_builders

INPUT_SIZE = {"resnet18": 32, "resnet50": 64, "mobilenet_v2": 32, "vgg11_bn": 32, "squeezenet1_1": 64,
              "shufflenet_v2_x0_5": 64, "efficientnet_b0": 64, "densenet121": 64}
# SqueezeNet has no batch norm: untrained, its 2-bit activations die out and every sample gets
# the same logits. Exactness is still checked there; distinct logits cannot be asked for.
COLLAPSES = {("squeezenet1_1", 2)}
CONVERTED = sorted(INPUT_SIZE)


@pytest.fixture(scope="module")
def builders():
    return torchvision_builders()


@pytest.mark.slow
@pytest.mark.parametrize("name", CONVERTED)
def test_zoo_model_trains_and_eval_equals_freeze(builders, name):
    torch.manual_seed(0)
    size = INPUT_SIZE[name]
    # zero_init_residual (torchvision's option, as its training recipes use): an untrained deep
    # residual network otherwise grows its activations block by block until codes saturate.
    extra = {"zero_init_residual": True} if name.startswith("resnet") else {}
    float_model = builders[name](weights=None, num_classes=10, **extra)
    for m in float_model.modules():
        # A residual scale as a few hundred training steps leave it. Two steps from exactly zero
        # leave gamma ~1e-6 beside a beta of the same size: such a channel folds to a bias the
        # int32 accumulator cannot hold, which freezing refuses (test_nn's collapsed-scale test).
        last_bn = {"BasicBlock": "bn2", "Bottleneck": "bn3"}.get(type(m).__name__)
        if last_bn is not None:
            torch.nn.init.constant_(getattr(m, last_bn).weight, 0.05)
    for m in float_model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # running statistics = the mean over the steps seen: calibrated by two steps
    model = dq.DQTModel.from_float(float_model, (3, size, size), dynamic=True, candidate_bits=(2, 4, 8))
    gen = torch.Generator().manual_seed(0)
    # Samples of different brightness and contrast, so an untrained network still tells them apart.
    x = (torch.rand(3, 3, size, size, generator=gen) * torch.tensor([60.0, 160.0, 255.0]).view(3, 1, 1, 1)
         + torch.tensor([0.0, 40.0, 0.0]).view(3, 1, 1, 1)).clamp(0, 255).to(torch.uint8)
    y = torch.tensor([1, 5, 7])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    for _ in range(2):
        out = model.dqt_loss(x, y, alpha=1.0, beta=1.0, target_bitops=model.uniform_bitops(4), generator=gen)
        opt.zero_grad()
        out.loss.backward()
        assert bool(torch.isfinite(out.loss)), out
        assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    for mode in (8, 4, 2, "dynamic"):
        if mode == "dynamic":
            model.set_dynamic(True)
        else:
            model.set_bits(mode)
        logits = model(x)
        assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
        if (name, mode) not in COLLAPSES:
            assert not torch.equal(logits[0], logits[1]) or not torch.equal(logits[1], logits[2]), \
                f"{name} at {mode}: every sample got the same logits, the comparison would prove little"
        assert torch.equal(model.freeze()(x), logits), f"{name} at {mode}: frozen model differs from eval"


def test_the_zoo_is_complete():
    from tests.zoo import ZOO

    assert sorted(ZOO) == CONVERTED


def _first_step_gradients(model, x, y, loss_fn) -> list:
    """Names of the parameters whose gradient of one backward pass, before any update, is not finite."""
    model.zero_grad(set_to_none=True)
    loss_fn(model, x, y).backward()
    return [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]


# The step-0 gradient check: every converted model, both shift rules, a batch of 2 at the input
# size above. Floor-rule DenseNet-121 overflowed here (issue 26): at 2 bits the floor shift sends
# every unsigned master code below 64 to code 0, whole dense layers went dead, their constant
# output channels met the next batch norms (1 / sqrt(eps)), and the straight-through gradient
# carried that back through the dead codes; quant._IntLayer now passes none through them.
# CI runs DenseNet-121 with that rule only (its round rule takes as long); -m slow runs both.
FIRST_STEP_FAST = {"resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121"}


@pytest.mark.parametrize(("name", "rule"), [
    (n, r) if n in FIRST_STEP_FAST and (n, r) != ("densenet121", "round") else pytest.param(n, r, marks=pytest.mark.slow)
    for n in CONVERTED for r in ("floor", "round")])
def test_zoo_first_step_gradients_are_finite(builders, name, rule):
    torch.manual_seed(0)
    size = INPUT_SIZE[name]
    model = dq.DQTModel.from_float(builders[name](weights=None, num_classes=10), (3, size, size), dynamic=True,
                                   candidate_bits=(2, 4, 8), shift_rule=rule).train()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([3, 8])
    # The DQT objective at 8-bit static widths: the task pass, then the consistency passes at 8,
    # 4 and 2 bits, whose activation ranges the earlier passes calibrated (how the issue met it).
    model.set_bits(8)
    bad = _first_step_gradients(model, x, y, lambda m, a, b: m.dqt_loss(a, b, alpha=0.5, beta=2.0).loss)
    assert not bad, f"{name} ({rule}): non-finite gradients of the static DQT objective in {bad[:3]}"
    # Static 2 bits (the governed layers) on their own, and the controller's objective.
    model.set_bits(2)
    bad = _first_step_gradients(model, x, y, lambda m, a, b: F.cross_entropy(m(a), b))
    assert not bad, f"{name} ({rule}): non-finite gradients at static 2 bits in {bad[:3]}"
    model.set_dynamic(True)
    gen = torch.Generator().manual_seed(0)
    bad = _first_step_gradients(model, x, y, lambda m, a, b: m.dqt_loss(
        a, b, alpha=0.5, beta=2.0, target_bitops=m.uniform_bitops(4), generator=gen,
        gate_gradients="local").loss)  # the `dqt train` recipe's: two candidate passes per layer, not three
    assert not bad, f"{name} ({rule}): non-finite gradients of the dynamic DQT objective in {bad[:3]}"


@pytest.mark.parametrize("rule", ["floor", "round"])
@pytest.mark.parametrize("name", ["tinyvit", "char_transformer"])
def test_transformer_zoo_trains_and_eval_equals_freeze(name, rule):
    """The package's transformers (attention, softmax, LayerNorm, embeddings, GELU tables) in the
    zoo's check: dynamic conversion, two dqt_loss steps with finite values, eval == freeze at
    static 8, 4, 2 bits and dynamic, on logits that differ between samples."""
    from dqt_triton.transformers import CharTransformer, TinyViT

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    if name == "tinyvit":
        net, shape, scale = TinyViT(dim=16, depth=2, heads=2), (1, 8, 8), 1 / 255
        x = (torch.rand(4, 1, 8, 8, generator=gen) * torch.tensor([60.0, 120.0, 190.0, 255.0]).view(4, 1, 1, 1))
        x, y = x.to(torch.uint8), torch.randint(0, 10, (4,), generator=gen)
    else:
        net, shape, scale = CharTransformer(vocab=40, context=8, dim=12, depth=2, heads=2), (8,), 1.0
        seq = torch.randint(0, 40, (4, 9), generator=gen).to(torch.uint8)
        x, y = seq[:, :8], seq[:, 1:].long()
    model = dq.DQTModel.from_float(net, shape, candidate_bits=(2, 4, 8), dynamic=True, shift_rule=rule,
                                   input_scale=scale)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        loss = model.dqt_loss(x, y, alpha=1.0).loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for bits in (8, 4, 2, None):
        model.set_dynamic(bits is None)
        if bits is not None:
            model.set_bits(bits)
        logits = model(x)
        assert not torch.equal(logits[0], logits[1])
        assert torch.equal(model.freeze()(x), logits), (name, rule, bits)
