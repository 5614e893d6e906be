"""Transformers through DQT: capture, training with dqt_loss, eval == frozen == reloaded at
static widths and per-sample dynamic widths, the new steps' training paths returning the
integer program's codes, and precise errors for what does not convert."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dqt_triton as dq
from dqt_triton.compile import compile_program
from dqt_triton.runtime import ProgramRunner
from dqt_triton.steps import KINDS, CodeValue, TrainPass
from dqt_triton.transformers import CharTransformer, TinyViT
from tests.test_steps import assert_triton_gives_the_same_integers

NEW_KINDS = ("matmul", "scale", "softmax", "attention", "layernorm", "embedding", "param", "tokenmean")


def vit() -> TinyViT:
    return TinyViT(dim=16, depth=1, heads=2)


def char_lm() -> CharTransformer:
    return CharTransformer(vocab=40, context=8, dim=12, depth=1, heads=2)


def batch(name: str, gen: torch.Generator):
    """Four inputs that differ per sample (brightness for images) and their targets."""
    if name == "vit":
        x = (torch.rand(4, 1, 8, 8, generator=gen) * torch.tensor([40.0, 100.0, 180.0, 255.0]).view(4, 1, 1, 1))
        return x.to(torch.uint8), torch.randint(0, 10, (4,), generator=gen)
    seq = torch.randint(0, 40, (4, 9), generator=gen).to(torch.uint8)
    return seq[:, :8], seq[:, 1:].long()


def trained(name: str, mode: str, steps: int = 4):
    """Convert, train `steps` dqt_loss steps, and leave in eval at `mode` ("8", "4", "2", "dynamic":
    per governed layer, "token": per governed layer and token, "token-shared": per token for
    every governed layer)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    float_model, shape = (vit(), (1, 8, 8)) if name == "vit" else (char_lm(), (8,))
    dynamic = mode in ("dynamic", "token", "token-shared")
    model = dq.DQTModel.from_float(float_model, shape, candidate_bits=(2, 4, 8), dynamic=dynamic,
                                   input_scale=1.0 if name == "lm" else 1.0 / 255,
                                   controller_granularity=mode if mode.startswith("token") else "layer")
    x, y = batch(name, gen)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        out = model.dqt_loss(x, y, alpha=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    if not dynamic:
        model.set_bits(int(mode))
    return model, x


def test_capture_records_the_transformer_steps():
    kinds = {name: {s.kind for s in dq.DQTModel.from_float(m, shape, input_scale=1.0).steps}
             for name, m, shape in (("vit", vit(), (1, 8, 8)), ("lm", char_lm(), (8,)))}
    assert {"matmul", "scale", "softmax", "layernorm", "param", "tokenmean", "lut", "add"} <= kinds["vit"]
    assert {"attention", "layernorm", "embedding", "param", "add", "permute"} <= kinds["lm"]


@pytest.mark.parametrize("mode", ["8", "4", "2", "dynamic", "token", "token-shared"])
@pytest.mark.parametrize("name", ["vit", "lm"])
def test_eval_equals_frozen_and_reloaded(name, mode, tmp_path):
    model, x = trained(name, mode)
    logits = model(x)
    assert not torch.equal(logits[0], logits[1]), "samples must differ for the comparison to mean anything"
    assert torch.equal(model.freeze()(x), logits)
    model.save(tmp_path / "m.pt")
    assert torch.equal(dq.DQTModel.load(tmp_path / "m.pt").eval()(x), logits)
    with dq.use_backend("reference"):
        assert torch.equal(model.freeze()(x), logits)
    if mode.startswith("token"):  # a width per governed layer and token, or per token
        tokens = x.shape[1] if name == "lm" else 16
        assert model.last_bits.shape == (4, tokens, len(model.layer_names), 2)
        governed = model.last_bits[:, :, [model.layer_names.index(n) for n in model.governed], 0]
        assert (mode == "token-shared") == bool((governed == governed[..., :1]).all())


@pytest.mark.parametrize("name", ["vit", "lm"])
def test_widths_per_token_are_priced_per_token(name):
    """BitOPs with a width per token: each token carries 1/T of a layer's MACs at its own width,
    the edges at 8 bits, the controller once per token and attention's products at 8 x 8 (their
    MACs counted at capture); the integer eval reports the
    same BitOPs as the training path, and tokens of one sample get different widths."""
    model, x = trained(name, "token")
    model(x)
    bits, bitops = model.last_bits, model.last_bitops
    T = bits.shape[1]
    macs = torch.tensor([model.arch.macs[n] for n in model.layer_names], dtype=torch.float64)
    fixed = model.controller.macs() + model.arch.product_macs  # the controller and attention's products at 8 x 8
    want = (bits[..., 0].double() * bits[..., 1].double() * macs / T).sum((1, 2)) + fixed * 64
    assert torch.equal(bitops, want)
    assert model.controller.macs() == T * (model.controller.fc1.weight.numel() + model.controller.fc2.weight.numel())
    heads, head_dim = 2, (16 if name == "vit" else 12) // 2
    assert model.arch.product_macs == heads * T * T * 2 * head_dim  # one block: q k^T and p v
    governed = [model.layer_names.index(n) for n in model.governed]
    assert any(len(torch.unique(bits[b, :, g, 0])) > 1 for b in range(bits.shape[0]) for g in governed)
    with torch.no_grad():
        out = model.train_forward(x)
    assert out.bits.shape == bits.shape


@pytest.mark.parametrize("mode", ["token", "token-shared"])
@pytest.mark.parametrize("name", ["vit", "lm"])
def test_forced_widths_run_the_deployed_integer_program(name, mode):
    """`model(x, widths)` in eval mode: the controller's own widths give eval's logits, every token at 4 bits
    gives the static 4-bit program's logits, and the frozen model takes the same widths; all bit
    for bit (what the token probes measure is what deploys)."""
    model, x = trained(name, mode)
    logits = model(x)
    governed = [model.layer_names.index(n) for n in model.governed]
    own = model.last_bits[..., governed, 0]  # [B, T, governed]
    assert torch.equal(model(x, own), logits)
    frozen = model.freeze()
    assert torch.equal(frozen(x, own), logits) and torch.equal(frozen.last_bits, model.last_bits)
    four = torch.full_like(own, 4)
    at_four = model(x, four)
    assert not torch.equal(at_four, logits) or bool((own == 4).all())
    with model.kept_mode():
        static4 = model.set_bits(4)(x)
    assert torch.equal(at_four, static4) and torch.equal(frozen(x, four), static4)
    with pytest.raises(ValueError, match="candidates"):
        model(x, torch.full_like(own, 3))
    with pytest.raises(ValueError, match="shape"):
        model(x, own[..., :1])
    with pytest.raises(ValueError, match="tokens"):
        model(x, own[:, :-1])
    with pytest.raises(TypeError, match="integer"):
        model(x, own.float())
    with pytest.raises(ValueError, match="dynamic"):
        model.set_bits(4)(x, own)


@pytest.mark.parametrize("name", ["vit", "lm"])
def test_training_paths_of_the_new_steps_return_the_program_codes(name):
    """Each new step's training forward, fed the integer program's input codes and steps, returns
    exactly the codes its integer run computes (docs/numerics.md section 10)."""
    model, x = trained(name, "4")
    program = compile_program(model)
    _, values = ProgramRunner(program, model.arch.macs).values(x)
    scales, signed = [float(model.input_step)], model.arch.value_signed
    with torch.no_grad():
        for step in model.steps:  # each value's step, as compile_program derives them
            _, out_scale = KINDS[step.kind].constants(step, [scales[i] for i in step.inputs],
                                                      [signed[i] for i in step.inputs], model.parts)
            scales.append(out_scale)
    tp = TrainPass(model.parts, model.shift_rule, model.candidate_bits, "all", model.fixed_bits(), {})
    checked = set()
    with torch.no_grad():
        for i, step in enumerate(model.steps):
            if step.kind not in NEW_KINDS:
                continue
            ins = [CodeValue(values[j].float(), torch.tensor(scales[j], dtype=torch.float32), signed[j])
                   for j in step.inputs]
            out = KINDS[step.kind].train(step, ins, tp)
            want = values[i + 1]
            assert torch.equal(out.q, want.float()), f"{step.kind} {step.name}"
            assert float(out.scale) == scales[i + 1], f"{step.kind} {step.name} step"
            checked.add(step.kind)
    expected = {"matmul", "scale", "softmax", "layernorm", "param", "tokenmean"} if name == "vit" else \
        {"attention", "layernorm", "embedding", "param"}
    assert checked == expected


def test_a_language_model_trains_on_sequence_targets():
    """Per-token targets [B, T] against logits [B, vocab, T]: the loss falls on a repeated batch."""
    model, x = trained("lm", "8", steps=0)
    gen = torch.Generator().manual_seed(0)
    _, y = batch("lm", gen)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        out = model.dqt_loss(x, y, alpha=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 4)
        self.register_buffer("mask", torch.tril(torch.ones(3, 3)))

    def forward(self, x):
        h = self.q(x)
        scores = (h @ h.transpose(-2, -1)).masked_fill(self.mask == 0, float("-inf"))
        return self.q(F.softmax(scores, dim=1) @ h)


def test_unsupported_transformer_operations_are_named_with_what_to_do():
    with pytest.raises(dq.UnsupportedLayerError) as err:
        dq.DQTModel.from_float(_Masked(), (3, 4))
    text = str(err.value)
    assert "masked_fill" in text and "is_causal=True" in text
    assert "only softmax over the last axis" in text


def test_torchvision_vit_b_16_names_what_it_lacks():
    zoo = pytest.importorskip("tests.zoo")
    model = zoo.torchvision_builders(("vit_b_16",))["vit_b_16"]()
    with pytest.raises(dq.UnsupportedLayerError) as err:
        dq.DQTModel.from_float(model, (3, 224, 224))
    text = str(err.value)
    assert "MultiheadAttention x12" in text and "F.scaled_dot_product_attention" in text
    assert "class token x[:, 0]" in text


@pytest.mark.interpreter
@pytest.mark.parametrize("name,mode", [("vit", "4"), ("lm", "dynamic")])
def test_triton_backend_gives_the_same_integers(name, mode):
    """The frozen transformer on the Triton backend (the interpreter on CPU, a GPU when present)
    == the CPU eval, on 2 samples: every new kernel inside a whole model."""
    assert_triton_gives_the_same_integers(*trained(name, mode, steps=1))


def test_the_pydoc_corpus_is_next_character_windows():
    """--data pydoc: Python's help topics as windows of ids with the next characters as targets."""
    from dqt_triton.data import PYDOC_CONTEXT, load_dataset, pydoc_ids

    ds = load_dataset("pydoc")
    assert ds.x_train.dtype == torch.uint8 and ds.input_shape == (PYDOC_CONTEXT,) and ds.num_classes == 96
    assert ds.x_train.shape[1] == ds.y_train.shape[1] == PYDOC_CONTEXT
    assert torch.equal(ds.x_train[:, 1:].long(), ds.y_train[:, :-1])  # targets are the inputs moved by one
    assert len(ds.y_test) * 9 <= len(ds.y_train) <= len(ds.y_test) * 9 + 9
    assert int(ds.x_train.max()) < 96 and pydoc_ids("a\nb").tolist() == [ord("a") - 31, 0, ord("b") - 31]


def test_evaluate_reports_token_accuracy_and_perplexity_for_sequences():
    from dqt_triton.training import evaluate

    model, x = trained("lm", "8", steps=2)
    gen = torch.Generator().manual_seed(0)
    _, y = batch("lm", gen)
    out = evaluate(model, x, y)
    logits = model(x)
    assert out["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert out["perplexity"] == pytest.approx(float(torch.exp(F.cross_entropy(logits, y))), rel=1e-5)


def test_the_consistency_term_of_a_sequence_is_per_prediction():
    """Distillation to the widest width averages KL over the tokens of a sequence, as the task's
    cross-entropy does, instead of summing them (which made it T times the task term)."""
    from dqt_triton.objective import _divergence

    gen = torch.Generator().manual_seed(0)
    out, teacher = torch.randn(3, 5, 7, generator=gen), torch.randn(3, 5, 7, generator=gen)
    per_token = torch.stack([F.kl_div(F.log_softmax(out[..., t], 1), F.log_softmax(teacher[..., t], 1),
                                      log_target=True, reduction="batchmean") for t in range(7)])
    assert torch.allclose(_divergence(out, teacher).mean(), per_token.mean())  # float training-path values
    flat = F.kl_div(F.log_softmax(out[..., 0], 1), F.log_softmax(teacher[..., 0], 1), log_target=True,
                    reduction="batchmean")
    assert torch.allclose(_divergence(out[..., 0], teacher[..., 0]).mean(), flat)


@pytest.mark.interpreter
@pytest.mark.parametrize("name,mode", [("vit", "token"), ("lm", "token")])
def test_triton_path_of_a_frozen_transformer_reads_only_the_token_ids_on_the_host(name, mode, monkeypatch):
    """After the warm-up call (which checks each softmax table and LayerNorm constant once and
    places it on the device), a frozen transformer's forward on the Triton backend reads no
    tensor value on the host, except the one check that every token id has a row in a table
    smaller than the id range (the language model's 40 of 256): data, checked once per forward."""
    from tests.kernels.device import DEVICE
    from tests.test_model import _count_host_reads

    model, x = trained(name, mode, steps=1)
    frozen = model.freeze()
    x = x[:2].to(DEVICE)
    with dq.use_backend("triton"):
        want = frozen(x)
        counts = _count_host_reads(monkeypatch)
        got = frozen(x)
        monkeypatch.undo()
    assert dict(counts) == ({} if name == "vit" else {"__bool__": 1})
    assert torch.equal(got, want) and torch.equal(got.cpu(), model(x.cpu()))
    if name == "lm":  # the check that costs the read
        with dq.use_backend("triton"), pytest.raises(ValueError, match=r"token ids must lie in \[0, 40\)"):
            frozen(torch.full_like(x, 40))


def test_a_program_checks_its_softmax_and_layernorm_constants_before_first_use():
    """The values the program's ops no longer read per call are checked when the runtime first
    places them: a corrupted table or LayerNorm multiplier in a frozen program is a clear error
    at the first call, not a wrong result."""
    model, x = trained("vit", "4", steps=1)
    for field, value, message in (("table", 0, "table\\[0\\] = 0"), ("mult", 2**30 + 1, "mult\\| must be <= 2\\^30")):
        frozen = model.freeze()
        target = next(getattr(c, field) for c in frozen.program.ops.values() if hasattr(c, field))
        target[0] = value
        with pytest.raises(ValueError, match=message):
            frozen(x[:2])


def test_the_training_path_records_each_layers_output_and_the_error_its_width_adds():
    """train_forward(record=...): each named layer's output [B, T, N] and its difference from the
    same input at 8 bits, which is zero at 8 bits and not at 2."""
    model, x = trained("lm", "token", steps=1)
    model.train()
    name = model.governed[0]
    for bits in (8, 2):
        record = {name: None}
        model.train_forward(x, force_bits=bits, record=record)
        y, error = record[name]
        assert y.shape[:2] == x.shape and error.shape == y.shape and not error.requires_grad
        assert bool((error == 0).all()) == (bits == 8)


def test_shared_token_costs_split_each_samples_excess_loss_by_sensitivity():
    """_shared_costs: a sample's loss above the widest width's (the mean over positions for a
    sequence) split among its tokens and layers in proportion to the sensitivity, scaled by T * L;
    no excess at the widest width."""
    from dqt_triton.objective import _shared_costs

    per_width = {8: torch.tensor([[1.0, 1.0], [2.0, 2.0]]), 2: torch.tensor([[3.0, 2.0], [2.0, 2.0]])}
    sensitivity = {8: torch.zeros(2, 2, 3), 2: torch.zeros(2, 2, 3)}
    sensitivity[2][0, 1, 2] = 3.0
    sensitivity[2][0, 0, 0] = 1.0
    sensitivity[2][1] = 5.0
    costs = _shared_costs(per_width, sensitivity)
    assert torch.equal(costs[8], torch.zeros(2, 2, 3))
    # sample 0: excess (2 + 1) / 2 = 1.5, shared 1 : 3 over two token-layers, times T * L = 6
    assert costs[2][0, 0, 0] == 1.5 * 0.25 * 6 and costs[2][0, 1, 2] == 1.5 * 0.75 * 6
    assert float(costs[2][0].sum()) == 1.5 * 6 and torch.equal(costs[2][1], torch.zeros(2, 3))  # no excess


@pytest.mark.parametrize("name,mode", [("vit", "token"), ("lm", "token"), ("lm", "token-shared")])
def test_gradient_token_costs_train_the_controller_per_token_and_layer(name, mode):
    """dqt_loss with a per-token controller: 'gradient' costs (the default) and 'position' costs
    give different imitation terms from the same state; the held-out source is refused."""
    model, x = trained(name, mode, steps=1)
    model.train()
    _, y = batch(name, torch.Generator().manual_seed(0))
    terms = {}
    for costs in ("gradient", "position"):
        torch.manual_seed(3)  # the same Gumbel noise, on a copy (a training pass moves the quantizers' ranges)
        terms[costs] = copy.deepcopy(model).dqt_loss(x, y, target_bitops=model.uniform_bitops(4), token_costs=costs,
                                      generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(terms[costs].loss) and float(terms[costs].imitation) > 0
    assert float(terms["gradient"].imitation) != float(terms["position"].imitation)
    assert float(terms["gradient"].task) == float(terms["position"].task)
    with pytest.raises(ValueError, match="token_costs='gradient' .* imitation_source"):
        model.dqt_loss(x, y, target_bitops=model.uniform_bitops(4), imitation_source="holdout")
    with pytest.raises(ValueError, match="token_costs must be one of"):
        model.dqt_loss(x, y, target_bitops=model.uniform_bitops(4), token_costs="even")


@pytest.mark.parametrize("name,mode", [("vit", "token"), ("lm", "token-shared")])
def test_forced_widths_replace_the_controllers_choice_and_train_mixed_passes(name, mode):
    """train_forward(force_widths=...) runs the widths given: the controller's own choice gives its
    logits, uniform widths give force_bits' logits, and a mixture is priced per token; dqt_loss's
    mixed passes add to the consistency term; bad widths are refused by name."""
    model, x = trained(name, mode, steps=1)
    with torch.no_grad():
        own = model.train_forward(x)
        governed = [model.layer_names.index(n) for n in model.governed]
        chosen = own.bits[..., governed, 0]  # [B, T, governed]
        assert torch.equal(model.train_forward(x, force_widths=chosen).logits, own.logits)
        four = torch.full_like(chosen, 4)
        assert torch.equal(model.train_forward(x, force_widths=four).logits, model.train_forward(x, force_bits=4).logits)
        mixed = torch.where(torch.arange(chosen.shape[1]).view(1, -1, 1) % 2 == 0, 2, 8).expand_as(chosen)
        out = model.train_forward(x, force_widths=mixed)
        assert torch.equal(out.bits[..., governed, 0], mixed)
        assert torch.equal(out.bitops, model.bitops_per_sample(out.bits))
        assert not torch.equal(out.logits, model.train_forward(x, force_bits=2).logits)
    for bad, match in ((chosen[:, :1], "force_widths must have shape"), (torch.full_like(chosen, 3), "outside the candidates")):
        with pytest.raises(ValueError, match=match):
            model.train_forward(x, force_widths=bad)
    with pytest.raises(ValueError, match="needs dynamic mode and no force_bits"):
        model.train_forward(x, force_bits=4, force_widths=chosen)
    model.train()
    _, y = batch(name, torch.Generator().manual_seed(0))
    terms = {}
    for passes in (0, 2):
        torch.manual_seed(3)
        terms[passes] = copy.deepcopy(model).dqt_loss(x, y, target_bitops=model.uniform_bitops(4), mixed_passes=passes,
                                                      generator=torch.Generator().manual_seed(1))
        assert torch.isfinite(terms[passes].loss)
    assert float(terms[0].consistency) != float(terms[2].consistency)
    assert float(terms[0].task) == float(terms[2].task)
    with pytest.raises(ValueError, match="mixed_passes must be at least 0"):
        model.dqt_loss(x, y, mixed_passes=-1)


@pytest.mark.parametrize("name,mode", [("vit", "token"), ("lm", "token-shared")])
def test_allowed_widths_bind_the_controller_in_eval_frozen_and_reloaded_models(name, mode, tmp_path):
    """Controller.allow: at the budget code that puts every token at 2 bits, allowing only 4 and 8
    puts them at 4 in eval, the frozen program and a reloaded model (bit for bit) and on the training
    path; subsets outside the candidates are refused."""
    model, x = trained(name, mode)
    governed = [model.layer_names.index(n) for n in model.governed]
    model.set_budget(0)
    model(x)
    assert bool((model.last_bits[..., governed, 0] == 2).all())
    model.controller.allow((4, 8))
    logits = model(x)
    widths = model.last_bits[..., governed, 0]
    assert bool((widths == 4).all())
    assert torch.equal(model.freeze()(x), logits)
    with torch.no_grad():  # the training path at eval statistics chooses the same widths
        assert torch.equal(model.train_forward(x).bits, model.last_bits)
    model.save(tmp_path / "m.pt")
    again = dq.DQTModel.load(tmp_path / "m.pt").eval()
    assert again.controller.allowed_bits == (4, 8) and torch.equal(again(x), logits)
    model.controller.allow(None)  # all candidates again: the program is rebuilt
    model(x)
    assert bool((model.last_bits[..., governed, 0] == 2).all())
    for bad in ((3,), (), (2, 16)):
        with pytest.raises(ValueError, match="non-empty subset of the candidates"):
            model.controller.allow(bad)


@pytest.mark.parametrize("name,mode", [("vit", "token-shared"), ("lm", "token")])
def test_calibrate_widths_picks_a_range_and_budget_within_the_target(name, mode):
    """calibrate_widths: a run of two or more consecutive candidates and a budget code whose mean
    BitOPs on the data are within the target, set on the model; a target below every range is
    refused and leaves the allowed widths as they were."""
    from dqt_triton.calibration import calibrate_widths

    model, x = trained(name, mode)
    _, y = batch(name, torch.Generator().manual_seed(0))
    target = model.uniform_bitops(6)  # the tiny models' controllers cost more than uniform 4 leaves
    widths, code = calibrate_widths(model, x, y, target)
    cands = model.candidate_bits
    assert len(widths) >= 2 and widths == cands[cands.index(widths[0]):cands.index(widths[-1]) + 1]
    assert model.controller.allowed_bits in (widths, None) and model.budget_code == code
    model.set_dynamic(True)
    model(x)
    assert float(model.last_bitops.double().mean()) <= target
    with pytest.raises(ValueError, match="no range of two or more widths meets"):
        calibrate_widths(model, x, y, 1.0)
    assert model.controller.allowed_bits in (widths, None)


def test_train_calibrates_the_controllers_widths_when_asked(tmp_path):
    """dqt train --controller-widths calibrated: the results' controller row names a run of two or
    more consecutive candidates, the saved model allows exactly those at the row's budget code,
    and no excluded width appears in the row's histogram."""
    import json

    from dqt_triton.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", "vit", "--limit", "96", "--warmup-epochs", "1", "--epochs", "1", "--bits", "2", "3",
                 "4", "8", "--norm-recalibration", "0", "--policy-budgets", "4", "--budget", "6", "--controller",
                 "token-shared", "--controller-widths", "calibrated", "--out", str(out)]) == 0
    row = next(r for r in json.loads((out / "results.json").read_text())["rows"] if r["mode"] == "controller")
    cands = [2, 3, 4, 8]
    widths = row["allowed_bits"]
    assert len(widths) >= 2 and widths == cands[cands.index(widths[0]):cands.index(widths[-1]) + 1]
    model = dq.DQTModel.load(out / "model.pt")
    assert list(model.controller.allowed_bits or cands) == widths and model.budget_code == row["budget_code"]
    assert all(row["histogram"].get(str(b), 0.0) == 0.0 for b in cands if b not in widths)
