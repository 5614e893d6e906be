"""Training and evaluation loops behind `dqt train` and `dqt eval`.

The recipe: `warmup_epochs` of static 8-bit QAT (learns ranges and steps), then DQT epochs:
every width's batch norm starts from the 8-bit one, and each step trains the dynamic path
(per-sample budget codes, Gumbel temperature annealed) plus the sandwich of uniform widths
(8-bit on the labels, the narrowest and one random width distilled from it), while the
controller learns each width's cost per sample from the sandwich's own losses
(`imitation_source`). After training the budget code is calibrated so dynamic mode meets `budget_bits` on the training set. Every
epoch ends with an atomic checkpoint (`train_state.pt`, for `--resume`) and the model file
(`model.pt`, for `dqt eval`); the data order and the random state depend only on the seed and
the epoch, so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from . import calibration, checkpoint, model_file, models, policy
from .convert import ConvertConfig, config_of, option
from .data import DATASETS, Dataset, load_dataset
from .errors import BackendUnavailableError, CheckpointError
from .model import DQTModel
from .objective import LossConfig
from .transformers import CharTransformer, TinyViT

log = logging.getLogger(__name__)

MODELS = ("resnet18", "resnet50", "cnn", "cnn1d", "mlp", "vit", "charlm")
# What `dqt train --data DATA` uses unless told otherwise (TrainConfig's defaults elsewhere).
# MNIST-1D: the 1-D CNN needs longer schedules than digits (60 epochs: 2-3 minutes on 2 cores).
DATA_RECIPES = {"madelon": {"model": "mlp"}, "mnist1d": {"model": "cnn1d", "warmup_epochs": 30, "epochs": 30},
                "pydoc": {"model": "charlm"}}


def recipe_default(data: str, name: str):
    """The default of TrainConfig field `name` for dataset `data`."""
    return DATA_RECIPES.get(data, {}).get(name, getattr(TrainConfig, name))


@dataclass
class TrainConfig(LossConfig, ConvertConfig):
    """Everything that defines a run (stored in the checkpoint; `--resume` checks it): the
    conversion options (`ConvertConfig`), the objective's (`LossConfig`) and the recipe's below."""

    data: str = option("digits", "digits (embedded), madelon (scikit-learn's MADELON generator), mnist1d (the "
                       "mnist1d package's generator, offline; pip install -e '.[mnist1d]'), cifar10 (local copy)",
                       choices=DATASETS)
    data_dir: Optional[str] = option(None, "folder holding cifar-10-batches-py/ (torchvision format)")
    model: str = option("resnet18", "architecture", choices=MODELS)
    width: int = option(8, "base channel count (ResNet: 64 is the paper's)")
    depth: int = option(2, "hidden layers of --model mlp, blocks of --model vit and charlm")
    budget_bits: float = option(4.0, "deployment budget: dynamic BitOPs at most those of uniform BUDGET-bit "
                                "(calibrated)", flag="--budget")
    controller_widths: str = option("all", "widths the controller may pick at deployment: every candidate ('all'), "
                                    "or the run of two or more consecutive candidates that, at its calibrated budget "
                                    "code, does best on the calibration split ('calibrated')",
                                    choices=("all", "calibrated"))
    imitation_holdout: float = option(0.1, "'holdout' source: share of the training set kept from the network to "
                                      "judge widths on")
    policy_budgets: tuple = option((2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 6.0), "budgets (uniform-b BitOPs) the "
                                   "width policies are calibrated to and reported at")
    calibration_holdout: float = option(0.2, "training-set share kept out of training to calibrate budgets and "
                                        "policies on")
    norm_recalibration: int = option(2048, "after training, re-estimate each width's batch-norm statistics on N "
                                     "training samples (0: off)", metavar="N")
    warmup_epochs: int = option(4, "8-bit QAT epochs before DQT")
    epochs: int = option(6, "DQT epochs")
    batch_size: int = option(64, "batch size")
    lr: float = option(3e-3, "learning rate of the warm-up")
    dqt_lr: float = option(1e-3, "learning rate of the DQT epochs")
    clip: float = option(1.0, "gradient-norm clip (0: off)")
    tau_start: float = option(1.0, "Gumbel-Softmax temperature at the start of DQT")
    tau_end: float = option(0.3, "Gumbel-Softmax temperature at the end")
    seed: int = option(0, "seed of the data split, order and initialisation")
    device: str = option("cpu", "cpu, cuda or auto", choices=("cpu", "cuda", "auto"))
    limit: int = option(0, "train on the first N images only (0: all; for quick checks)")
    static_bits: int = option(0, "> 0: a non-nested static baseline trained at this width only (no DQT phase)")
    static_schedule: str = option("constant", "learning rates of a --static-bits baseline: constant (--lr "
                                  "throughout) or phased (the DQT run's: --lr for --warmup-epochs, then --dqt-lr)",
                                  choices=("constant", "phased"))

    def __post_init__(self) -> None:
        ConvertConfig.__post_init__(self)
        LossConfig.__post_init__(self)
        if self.controller_widths not in ("all", "calibrated"):
            raise ValueError(f"controller_widths must be 'all' or 'calibrated', got {self.controller_widths!r}")
        if self.static_schedule not in ("constant", "phased"):
            raise ValueError(f"static_schedule must be 'constant' or 'phased', got {self.static_schedule!r}")
        if not 0.0 <= self.imitation_holdout < 1.0:
            raise ValueError(f"imitation_holdout must be in [0, 1), got {self.imitation_holdout}")
        if not 0.0 <= self.calibration_holdout < 1.0 or self.imitation_holdout + self.calibration_holdout >= 1.0:
            raise ValueError(f"calibration_holdout must be in [0, 1) and leave training samples beside "
                             f"imitation_holdout, got {self.calibration_holdout}")

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainConfig":
        """The config of a saved run (a training state's or results.json's): options it lacks
        came after it was written, so it did what the code did then (`BEFORE_THE_OPTION`, else
        the default); renamed options are read under their old names (`LEGACY_NAMES`)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {LEGACY_NAMES.get(k, k): tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        values = {**{k: v for k, v in BEFORE_THE_OPTION.items() if k not in values}, **values}
        return cls(**{k: v for k, v in values.items() if k in known})

    def loss_config(self) -> LossConfig:
        return config_of(LossConfig, self)

    def convert_config(self) -> ConvertConfig:
        return config_of(ConvertConfig, self)


# What runs did before an option existed, where today's default differs from it.
BEFORE_THE_OPTION = {"imitation_source": "holdout", "consistency_share": 1.0, "gate_gradients": "all",
                     "norm_recalibration": 0, "calibration_holdout": 0.0, "token_costs": "position"}
LEGACY_NAMES = {"controller": "controller_granularity"}  # saved name -> today's
# Run-time budgets (uniform-b BitOPs) at which `dqt train` calibrates and reports every width policy.
POLICY_BUDGETS = TrainConfig.policy_budgets


def float_network(cfg: TrainConfig, ds: Dataset) -> torch.nn.Module:
    """The float architecture `cfg.model` sized for the dataset."""
    channels, size = ds.input_shape[0], ds.input_shape[-1]
    if cfg.model == "resnet18":
        return models.resnet18_cifar(ds.num_classes, channels, cfg.width)
    if cfg.model == "resnet50":
        return models.resnet50(ds.num_classes, channels, cfg.width)
    if cfg.model == "cnn":
        return models.simple_cnn(channels, ds.num_classes, cfg.width, size)
    if cfg.model == "cnn1d":
        return models.cnn1d(channels, ds.num_classes, 4 * cfg.width, size)
    if cfg.model == "mlp":
        return models.mlp(int(torch.tensor(ds.input_shape).prod()), 4 * cfg.width, ds.num_classes, cfg.depth)
    if cfg.model == "vit":  # patches of 2 x 2 pixels, or 4 samples of a 1-D signal
        shape = tuple(ds.input_shape[1:])
        return TinyViT(channels, shape, (1, 4) if shape[0] == 1 else 2, 4 * cfg.width, cfg.depth, 2, ds.num_classes)
    if cfg.model == "charlm":  # token ids [T] -> next-token logits [vocab, T]
        return CharTransformer(ds.num_classes, ds.input_shape[0], 4 * cfg.width, cfg.depth, 2)
    raise ValueError(f"unknown model {cfg.model!r}; choose {', '.join(MODELS)}")


def build_model(cfg: TrainConfig, ds: Dataset) -> DQTModel:
    net = float_network(cfg, ds)
    candidates = (cfg.static_bits,) if cfg.static_bits else cfg.candidate_bits
    return DQTModel.from_float(net, ds.input_shape, cfg.convert_config(), candidate_bits=candidates, bits=8,
                               dynamic=not cfg.static_bits, input_scale=ds.input_scale, input_signed=ds.input_signed)


def evaluate(model: DQTModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> dict:
    """Integer-only accuracy, BitOPs (mean and per-input spread) and chosen-width histogram in
    the model's current mode.

    spread: mean BitOPs of the dearest 10% of inputs / the cheapest 10%; cheap_half_accuracy
    and dear_half_accuracy split the inputs at the median BitOPs (ties broken by order).
    """
    model.eval()
    correct, bitops, bits, losses = [], [], [], []
    with torch.no_grad():
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits = model(xb)
            hit = (logits.argmax(1).cpu() == yb).float()
            correct.append(hit.flatten(1).mean(1) if hit.dim() > 1 else hit)  # a sequence: its tokens' share
            if yb.dim() > 1:  # next-token targets: each sequence's mean cross-entropy per token
                losses.append(F.cross_entropy(logits.cpu(), yb, reduction="none").flatten(1).mean(1))
            bitops.append(model.last_bitops.cpu())
            bits.append(model.last_bits[..., 0].cpu())
    right, cost = torch.cat(correct), torch.cat(bitops).double()
    governed = [model.layer_names.index(n) for n in model.governed] or list(range(len(model.layer_names)))
    chosen = torch.cat(bits)[..., governed]  # [N, governed], or [N, T, governed] with widths per token
    histogram = {int(b): float((chosen == b).float().mean()) for b in model.candidate_bits}
    extra = {"perplexity": float(torch.exp(torch.cat(losses).mean()))} if losses else {}
    return {**policy.cost_statistics(right, cost), "mean_bits": float(chosen.float().mean()), "histogram": histogram,
            **extra}


def results_table(model: DQTModel, ds: Dataset) -> dict:
    """Accuracy at every static width (governed layers; edges at `edge_bits`), of the deployed
    width policy at the deployment budget and of the paper's controller at the model's budget
    code, with BitOPs, the per-input spread and the width histogram; with calibrated policies,
    every policy at every budget against the best static choice that fits it
    (`policy.compare_policies`)."""
    rows = []
    for b in sorted(model.candidate_bits, reverse=True):
        model.set_bits(b)
        rows.append({"mode": f"static {b}-bit", **evaluate(model, ds.x_test, ds.y_test)})
    budgets = None
    if model.policies is not None:
        table = policy.PolicyTable.from_dict(model.policies)
        budgets = policy.compare_policies(model, table, ds.x_test, ds.y_test, rows, controller_stats=evaluate)
        at_deployment = next((r for r in budgets if r["budget_bits"] == table.deployment_budget), None)
        if at_deployment is not None and at_deployment["deployed"] is not None:
            dep = at_deployment["deployed"]
            cascade = policy.Cascade.from_dict(dep["policy"])
            hist = policy.stage_histogram(model, cascade, dep["stage_shares"])
            rows.append({"mode": "deployed", "family": at_deployment["deployed_family"],
                         "budget_bits": table.deployment_budget, **dep, "histogram": hist,
                         "mean_bits": sum(b * p for b, p in hist.items())})
    agreement = None
    if model.controller is not None:
        model.set_dynamic(True)
        allowed = model.controller.allowed_bits or model.candidate_bits
        rows.append({"mode": "controller", "budget_code": model.budget_code, "allowed_bits": list(allowed),
                     **evaluate(model, ds.x_test, ds.y_test)})
        agreement = model.agreement(ds.x_test)
    for r in rows:
        r["bitops_vs_uniform4"] = r["bitops"] / model.uniform_bitops(4)
    return {"rows": rows, "agreement_dynamic": agreement, "edge_bits": model.edge_bits, "budgets": budgets,
            "uniform4_bitops": model.uniform_bitops(4)}


def split_training_set(cfg: TrainConfig, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (sorted) of the training set's three parts: the samples the controller judges
    widths on (``imitation_source="holdout"``), the calibration split (budgets and width
    policies) and the samples the network trains on; seeded by `cfg.seed`."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + 777))
    judged = cfg.imitation > 0 and not cfg.static_bits and cfg.imitation_source == "holdout"
    held = int(round(cfg.imitation_holdout * n)) if judged else 0
    calib = int(round(cfg.calibration_holdout * n))
    return perm[:held].sort().values, perm[held:held + calib].sort().values, perm[held + calib:].sort().values


def calibration_data(cfg: TrainConfig, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's held-out calibration split (`split_training_set`) on its device; the samples
    it trains on when it holds none out."""
    _, calibration, fit = split_training_set(cfg, len(ds.y_train))
    idx = calibration if len(calibration) else fit
    return ds.x_train[idx].to(cfg.device), ds.y_train[idx].to(cfg.device)


def calibrate(model: DQTModel, cfg: TrainConfig, x_cal: torch.Tensor, y_cal: torch.Tensor) -> None:
    """After training, on the calibration data: the controller's budget code for
    `cfg.budget_bits` (and with ``controller_widths="calibrated"`` the widths it may pick) and
    (for DQT runs) the width policies at `cfg.policy_budgets`."""
    if model.controller is not None and cfg.controller_widths == "calibrated":
        widths, code = calibration.calibrate_widths(model, x_cal, y_cal, model.uniform_bitops(cfg.budget_bits))
        log.info("widths %s at budget code %d do best within %.2f-bit uniform BitOPs on %d calibration samples",
                 list(widths), code, cfg.budget_bits, len(y_cal))
    elif model.controller is not None:
        code = model.calibrate_budget(x_cal, model.uniform_bitops(cfg.budget_bits))
        log.info("budget code %d meets %.2f-bit uniform BitOPs on %d calibration samples", code, cfg.budget_bits,
                 len(y_cal))
    if not cfg.static_bits and y_cal.dim() > 1:
        log.info("width policies (cascades, escalation) decide per input from its top-1 margin; next-token targets "
                 "have one per token, so none is calibrated")
    elif not cfg.static_bits:
        model.policies = policy.calibrate_policies(model, x_cal, y_cal, cfg.policy_budgets, cfg.budget_bits).to_dict()
        log.info("width policies calibrated on %d samples", len(y_cal))


class Trainer:
    """Runs the recipe of the module docstring into `out_dir`."""

    def __init__(self, cfg: TrainConfig, out_dir: Path) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ds = load_dataset(cfg.data, cfg.data_dir, cfg.seed, cfg.limit)
        self.loss_config = cfg.loss_config()
        self.holdout, self.calibration_index, self.fit_index = split_training_set(cfg, len(self.ds.y_train))
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg, self.ds).to(cfg.device)
        self.epoch = 0  # epochs completed
        self.optimizer = self._optimizer_for(0)
        # Under torchrun every rank holds the whole model and trains on its share of each batch.
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0

    @property
    def total_epochs(self) -> int:
        return self.cfg.warmup_epochs + self.cfg.epochs

    def _phase_change(self) -> bool:
        """Whether the learning rate drops to `dqt_lr` after the warm-up (a constant static baseline keeps `lr`)."""
        return not self.cfg.static_bits or self.cfg.static_schedule == "phased"

    def _optimizer_for(self, epoch: int) -> torch.optim.Optimizer:
        lr = self.cfg.dqt_lr if epoch >= self.cfg.warmup_epochs and self._phase_change() else self.cfg.lr
        return torch.optim.Adam(self.model.parameters(), lr=lr)

    def state(self) -> dict:
        return {"format": "dqt-triton-train-state", "config": asdict(self.cfg), "epoch": self.epoch,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(), "tau": self.model.tau}

    def resume(self) -> None:
        path = self.out / "train_state.pt"
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no {path} to resume from")
        state = checkpoint.load_file(path)
        if not isinstance(state, dict) or state.get("format") != "dqt-triton-train-state":
            raise CheckpointError(f"--resume: {path} is not a dqt-triton training state")
        saved, mine = asdict(TrainConfig.from_saved(state["config"])), asdict(self.cfg)
        differ = {k for k in mine if k != "device" and saved[k] != mine[k]}
        if differ:
            raise ValueError(f"--resume: options differ from the checkpoint's: {sorted(differ)}")
        self.model.load_state_dict(state["model"])
        self.epoch = state["epoch"]
        # The optimizer of the phase the saved epoch ran in; train() replaces it at the phase
        # change, exactly as an uninterrupted run does.
        self.optimizer = self._optimizer_for(max(self.epoch - 1, 0))
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.model.tau = state["tau"]
        log.info("resumed %s after epoch %d", path, self.epoch)

    def _checkpoint(self) -> None:
        if self.rank == 0:
            model_file.write(self.state(), self.out / "train_state.pt")
            self.model.save(self.out / "model.pt")

    def _all_reduce_gradients(self) -> None:
        """Sum gradients over ranks; each is already weighted by its rank's share of the batch."""
        for p in self.model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)

    def _broadcast_buffers(self) -> None:
        """Every rank takes rank 0's buffers (batch-norm statistics), as DDP does."""
        for b in self.model.buffers():
            dist.broadcast(b, 0)

    def _check_ranks_in_sync(self) -> None:
        """Every rank must hold the same weights; a checksum spread across ranks says otherwise."""
        total = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum().reshape(1)
        low, high = total.clone(), total.clone()
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(f"ranks out of sync after epoch {self.epoch}: parameter checksums {low.item()} vs {high.item()}")

    def _log_metrics(self, row: dict) -> None:
        if self.rank != 0:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        csv_path = self.out / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def train(self) -> dict:
        cfg, model = self.cfg, self.model
        unit = model.uniform_bitops(4)  # the budget price is per uniform-4 BitOPs
        epochs = tqdm(range(self.epoch, self.total_epochs), desc="epochs", unit="epoch", initial=self.epoch,
                      total=self.total_epochs)
        try:
            for epoch in epochs:
                dqt_phase = epoch >= cfg.warmup_epochs and not cfg.static_bits
                if epoch == cfg.warmup_epochs and self._phase_change():
                    self.optimizer = self._optimizer_for(epoch)
                if cfg.static_bits:
                    model.set_bits(cfg.static_bits)
                elif dqt_phase:
                    if epoch == cfg.warmup_epochs:
                        model.copy_width_norms(8)  # every width starts from the warmed-up 8-bit norms
                    model.set_dynamic(True)
                    span = max(cfg.epochs - 1, 1)
                    model.anneal_temperature((epoch - cfg.warmup_epochs) / span, cfg.tau_start, cfg.tau_end)
                else:
                    model.set_bits(8)
                row = self._train_epoch(epoch, dqt_phase, unit)
                self.epoch = epoch + 1
                if self.world > 1:
                    self._check_ranks_in_sync()
                self._checkpoint()
                self._log_metrics(row)
                epochs.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['test_accuracy']:.3f}")
        except KeyboardInterrupt:
            model.save(self.out / "model-interrupted.pt")
            log.warning("interrupted: %s holds the last finished epoch (%d); resume with --resume. The "
                        "unfinished epoch's weights are in model-interrupted.pt", self.out / "train_state.pt", self.epoch)
            raise
        recalibrate = bool(cfg.norm_recalibration and calibration.width_norm_layers(model))
        if recalibrate:
            # Each width's statistics as of the final weights, instead of a moving average over
            # training (and, for widths the sandwich seldom runs, over old weights). A static
            # baseline gets the same treatment at its one width, so comparisons stay fair.
            # A seeded random subset, in index order (all of a small training split, as it is).
            pick = torch.randperm(len(self.fit_index), generator=torch.Generator().manual_seed(cfg.seed + 555))
            sample = self.fit_index[pick[:cfg.norm_recalibration].sort().values]
            widths = model.recalibrate_norms(self.ds.x_train[sample].to(cfg.device),
                                             bits=[cfg.static_bits] if cfg.static_bits else None)
            log.info("recalibrated the batch norms of widths %s on %d training samples", widths, len(sample))
        calibrate(model, cfg, *calibration_data(cfg, self.ds))
        if self.rank == 0 and (recalibrate or model.controller is not None or model.policies is not None):
            model.save(self.out / "model.pt")  # the last epoch's model, recalibrated, at its budget, with policies
        results = results_table(model, self.ds)
        if self.rank == 0:
            (self.out / "results.json").write_text(json.dumps({"config": asdict(cfg), **results}, indent=2) + "\n")
        return results

    def calibration_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out calibration split on the model's device (the training set without one)."""
        return calibration_data(self.cfg, self.ds)

    def _train_epoch(self, epoch: int, dqt_phase: bool, unit: float) -> dict:
        cfg, model, ds = self.cfg, self.model, self.ds
        model.train()
        order = self.fit_index[torch.randperm(len(self.fit_index),
                                              generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))]
        # Budget codes and sandwich widths depend only on (seed, epoch): resumable, and the same
        # on every rank.
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch + 500)
        sums = {"loss": 0.0, "task": 0.0, "consistency": 0.0, "budget": 0.0, "imitation": 0.0}
        start, batches = time.perf_counter(), 0
        for batch in tqdm(order.split(cfg.batch_size), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                          disable=self.rank != 0):
            idx = batch[self.rank::self.world]
            xb, yb = ds.x_train[idx].to(cfg.device), ds.y_train[idx].to(cfg.device)
            if dqt_phase:
                held = None
                if len(self.holdout):
                    pick = self.holdout[torch.randint(0, len(self.holdout), (cfg.imitation_samples,),
                                                      generator=generator)]
                    held = (ds.x_train[pick].to(cfg.device), ds.y_train[pick].to(cfg.device))
                terms = model.dqt_loss(xb, yb, self.loss_config, target_bitops=unit, imitation_data=held,
                                       generator=generator)
                loss, parts = terms.loss, {k: getattr(terms, k) for k in sums}
                parts["loss"] = loss.detach()  # the other terms come detached
            else:
                loss = F.cross_entropy(model(xb), yb)
                parts = {"loss": loss.detach(), "task": loss.detach(), "consistency": 0.0, "budget": 0.0,
                         "imitation": 0.0}
            self.optimizer.zero_grad()
            # Weight by this rank's share so the summed gradients are the global batch's mean.
            (loss * (len(idx) / len(batch))).backward()
            if self.world > 1:
                self._all_reduce_gradients()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            self.optimizer.step()
            if self.world > 1:
                self._broadcast_buffers()
            for k in sums:
                sums[k] += float(parts[k])
            batches += 1
        test = evaluate(model, ds.x_test, ds.y_test)
        return {"epoch": epoch + 1, "phase": "dqt" if dqt_phase else "qat8", "tau": model.tau if dqt_phase else None,
                **{k: v / max(batches, 1) for k, v in sums.items()}, "test_accuracy": test["accuracy"],
                "test_mean_bits": test["mean_bits"], "test_bitops_vs_uniform4": test["bitops"] / model.uniform_bitops(4),
                "seconds": time.perf_counter() - start}


def _checkpoint_and_data(path: str, data: str, data_dir: Optional[str]) -> tuple[DQTModel, Dataset]:
    """A saved model and the dataset it is evaluated on, after checking that they fit."""
    model = DQTModel.load(path)
    ds = load_dataset(data, data_dir)
    if tuple(model.arch.input_shape) != tuple(ds.input_shape):
        raise ValueError(f"{path} expects inputs {tuple(model.arch.input_shape)}, dataset {data} has "
                         f"{tuple(ds.input_shape)}")
    return model, ds


def evaluate_checkpoint(path: str, data: str = "digits", data_dir: Optional[str] = None,
                        bits: Optional[int] = None) -> dict:
    """`dqt eval`: the results table for a saved model (every width and dynamic, or one width)."""
    model, ds = _checkpoint_and_data(path, data, data_dir)
    if bits is not None:
        model.set_bits(bits)
        row = {"mode": f"static {bits}-bit", **evaluate(model, ds.x_test, ds.y_test)}
        row["bitops_vs_uniform4"] = row["bitops"] / model.uniform_bitops(4)
        return {"rows": [row], "agreement_dynamic": None}
    return results_table(model, ds)


def allocate_checkpoint(path: str, budget_bits: float, data: str = "digits", data_dir: Optional[str] = None,
                        out: Optional[str] = None) -> dict:
    """`dqt allocate`: the best static per-layer allocation of a saved model within the BitOPs of
    uniform `budget_bits`, its test accuracy beside the uniform widths' hull, and with `out` the
    model saved with that allocation as its static widths.

    The search runs on the calibration split the checkpoint's training kept out (its policies
    already hold the allocation at the budgets `dqt train` reports); at any other budget it runs
    on the last `calibration_holdout` share of the dataset's training set, in index order."""
    model, ds = _checkpoint_and_data(path, data, data_dir)
    if not budget_bits > 0:
        raise ValueError(f"--budget must be a positive uniform width, got {budget_bits}")
    table = policy.PolicyTable.from_dict(model.policies) if model.policies else None
    if table is not None and float(budget_bits) in table.budgets:
        found, source = table.at(float(budget_bits), "allocation"), "the checkpoint's calibrated policies"
    else:
        n = len(ds.y_train)
        calib = torch.arange(n - int(round(TrainConfig.calibration_holdout * n)), n)
        cal = policy.Calibration(model, ds.x_train[calib], ds.y_train[calib])
        best = policy.best_allocation(cal, policy.candidate_allocations(model, cal), model.uniform_bitops(budget_bits))
        found = policy.Cascade((best,)) if best is not None else None
        source = f"{len(calib)} training samples"
    if found is None:
        narrowest = policy.allocation_bitops(model, policy.uniform(model, min(model.candidate_bits)))
        raise ValueError(f"no allocation fits the BitOPs of uniform {budget_bits} bits (the narrowest costs "
                         f"{narrowest / model.uniform_bitops(4):.2f}x uniform 4)")
    alloc = found.stages[0]
    stats = policy.evaluate_cascade(model, found, ds.x_test, ds.y_test)
    statics = []
    for b in sorted(model.candidate_bits):
        model.set_bits(b)
        statics.append((model.uniform_bitops(b), evaluate(model, ds.x_test, ds.y_test)["accuracy"]))
    model.set_bits(policy.allocation_bits(model, alloc))
    if out:
        model.save(out)
    return {"allocation": dict(zip(model.governed, alloc)), "source": source, "accuracy": stats["accuracy"],
            "bitops_vs_uniform4": stats["bitops"] / model.uniform_bitops(4),
            "hull": policy.hull_accuracy(statics, stats["bitops"]), "saved": out}


def environment_device(requested: str) -> str:
    """The device a run uses: `requested`, with "auto" resolved; a missing GPU is a clear error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return requested if requested != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


__all__ = ["TrainConfig", "Trainer", "load_dataset", "evaluate", "results_table",
           "evaluate_checkpoint"]
