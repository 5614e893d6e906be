"""Command-line entry point `dqt`.

`dqt demo` runs the integer contract end to end on scikit-learn's digits (shipped with the
package, no download): a small float MLP is trained, its weights are quantized once to 8-bit
master codes, and the integer-only forward pass is evaluated at every nested width by changing
shift amounts only. `dqt train` runs DQT training (digits by default, no download) and prints
the results table; `dqt eval CHECKPOINT` prints it for a saved model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import torch
from tqdm import tqdm

from . import numerics, ops

log = logging.getLogger(__name__)


def _load_digits(seed: int):
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).reshape(len(data.images), -1)
    codes = torch.round(images * (255.0 / 16.0)).to(torch.uint8)  # pixel 0..16 -> uint8 codes
    labels = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(labels))
    return (codes[order[:split]], labels[order[:split]]), (codes[order[split:]], labels[order[split:]])


def _train_float_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, epochs: int, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xf = x.float() / 255.0
    for _ in tqdm(range(epochs), desc="float training", unit="epoch"):
        for idx in torch.randperm(len(y)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xf[idx]), y[idx]).backward()
            opt.step()
    return model


def _integer_model(model: torch.nn.Sequential, x_calib: torch.Tensor) -> dict:
    """Master codes and integer constants for Linear-ReLU-Linear with input scale 1/255."""
    fc1, fc2 = model[0], model[2]
    in_scale = 1.0 / 255.0
    w1_scale = fc1.weight.detach().abs().amax(dim=1).clamp_min(1e-8) / 127.0
    w2_scale = fc2.weight.detach().abs().amax(dim=1).clamp_min(1e-8) / 127.0
    with torch.no_grad():
        hidden_max = float(torch.relu(fc1(x_calib.float() * in_scale)).max())
    h_scale = hidden_max / 255.0
    acc1_scale = in_scale * w1_scale.double()
    acc2_scale = h_scale * w2_scale.double()
    mult1, shift1 = numerics.requant_constants(in_scale, w1_scale, h_scale)
    return {
        "w1": numerics.quantize(fc1.weight.detach(), w1_scale[:, None], signed=True).to(torch.int8),
        "b1": torch.round(fc1.bias.detach().double() / acc1_scale).to(torch.int32),
        "m1": mult1,
        "s1": shift1,
        "w2": numerics.quantize(fc2.weight.detach(), w2_scale[:, None], signed=True).to(torch.int8),
        "b2": torch.round(fc2.bias.detach().double() / acc2_scale).to(torch.int32),
        "logit_scale": acc2_scale.float(),
    }


def _integer_forward(q: dict, x: torch.Tensor, bits: int, backend: str) -> torch.Tensor:
    k = numerics.MASTER_BITS - bits
    h = ops.int_matmul(x, q["w1"], act_shift=k, weight_shift=k, bias=q["b1"], multiplier=q["m1"],
                       shift=q["s1"], relu=True, backend=backend)
    return ops.int_matmul(h, q["w2"], act_shift=k, weight_shift=k, bias=q["b2"], out_scale=q["logit_scale"],
                          backend=backend)


def run_demo(args: argparse.Namespace) -> int:
    (x_train, y_train), (x_test, y_test) = _load_digits(args.seed)
    model = _train_float_mlp(x_train, y_train, args.hidden, args.epochs, args.seed)
    with torch.no_grad():
        float_acc = (model(x_test.float() / 255.0).argmax(1) == y_test).float().mean().item()
    q = _integer_model(model, x_train)
    macs = 64 * args.hidden + args.hidden * 10
    print(f"digits: {len(y_train)} train / {len(y_test)} test images, MLP 64-{args.hidden}-10, float accuracy {float_acc:.4f}")
    print("post-training nested quantization (no QAT yet): one set of 8-bit master codes, every width by shifts")
    print(f"{'bits (w=a)':>10} {'accuracy':>9} {'BitOPs/sample':>14} {'reference == cpu':>17} {'cpu ms':>7}")
    for bits in range(8, 1, -1):
        start = time.perf_counter()
        logits = _integer_forward(q, x_test, bits, "cpu")
        elapsed = (time.perf_counter() - start) * 1e3
        exact = torch.equal(logits, _integer_forward(q, x_test, bits, "reference"))
        accuracy = (logits.argmax(1) == y_test).float().mean().item()
        print(f"{bits:>10} {accuracy:>9.4f} {macs * bits * bits:>14,} {str(exact):>17} {elapsed:>7.2f}")
        if not exact:
            log.error("backends disagree at %d bits", bits)
            return 1
    return 0


def run_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, Trainer, environment_device, format_table, recipe_default

    def pick(value, option: str):  # an option left unset takes the dataset's recipe
        return recipe_default(args.data, option) if value is None else value

    cfg = TrainConfig(data=args.data, data_dir=args.data_dir, model=pick(args.model, "model"), width=args.width,
                      depth=args.depth,
                      candidate_bits=tuple(args.bits), budget_bits=args.budget, alpha=args.alpha, beta=args.beta,
                      imitation=args.imitation, imitation_mode=args.imitation_mode,
                      imitation_source=args.imitation_source, controller=args.controller,
                      imitation_holdout=args.imitation_holdout, distill=not args.no_distill, sampled_widths=args.sampled_widths,
                      consistency_share=args.consistency_share, gate_gradients=args.gate_gradients,
                      imitation_samples=args.imitation_samples,
                      bn_per_width=not args.shared_bn, norm_recalibration=args.norm_recalibration,
                      edge_bits=args.edge_bits,
                      warmup_epochs=pick(args.warmup_epochs, "warmup_epochs"),
                      epochs=pick(args.epochs, "epochs"), batch_size=args.batch_size,
                      lr=args.lr, dqt_lr=args.dqt_lr, shift_rule=args.shift_rule, seed=args.seed,
                      device=environment_device(args.device), limit=args.limit, static_bits=args.static_bits)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cfg.device == "cuda" else "gloo")  # under torchrun
        if cfg.device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    trainer = Trainer(cfg, args.out)
    if args.resume:
        trainer.resume()
    say = print if trainer.rank == 0 else (lambda *a, **k: None)
    say(f"DQT training: {cfg.model} (width {cfg.width}) on {cfg.data}, {len(trainer.ds.y_train)} train / "
          f"{len(trainer.ds.y_test)} test, widths {list(cfg.candidate_bits)}, budget {cfg.budget_bits}-bit, "
          f"alpha {cfg.alpha}, beta {cfg.beta}; output in {args.out}")
    try:
        results = trainer.train()
    except KeyboardInterrupt:
        say(f"interrupted; resume with: dqt train --resume --out {args.out} (and the same options)")
        return 130
    say(format_table(results))
    say(f"model: {args.out}/model.pt  metrics: {args.out}/metrics.csv  results: {args.out}/results.json")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from .training import evaluate_checkpoint, format_table

    print(format_table(evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.bits)))
    return 0


def run_allocate(args: argparse.Namespace) -> int:
    from .training import allocate_checkpoint

    r = allocate_checkpoint(args.checkpoint, args.budget, args.data, args.data_dir, args.save)
    print(f"best static allocation within uniform {args.budget}-bit BitOPs (searched on {r['source']}):")
    for name, bits in r["allocation"].items():
        print(f"  {name}: {bits} bits")
    hull = "n/a" if r["hull"] is None else f"{r['hull']:.4f}"
    print(f"test accuracy {r['accuracy']:.4f} at {r['bitops_vs_uniform4']:.2f}x uniform-4 BitOPs (first and last "
          f"layers at their edge width); uniform widths' hull there: {hull}")
    if r["saved"]:
        print(f"saved with these static widths: {r['saved']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dqt", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit status: 0 ok, 1 internal error (a bug), 2 bad usage or input, 3 damaged or foreign checkpoint,\n"
               "4 file not found, 5 disk full, 6 other I/O error, 7 training diverged, 8 backend unavailable,\n"
               "9 accumulator overflow risk, 130 interrupted")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="on failure show the Python traceback (also: DQT_DEBUG=1) instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="integer-only inference at every nested width on digits")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--hidden", type=int, default=64)
    demo.set_defaults(func=run_demo)

    from .training import DATASETS, MODELS, TrainConfig

    d = TrainConfig()  # the CLI's defaults are the recipe's
    train = sub.add_parser("train", help="DQT training with the results table (default: digits, no download)")
    train.add_argument("--data", choices=DATASETS, default="digits",
                       help="digits (embedded), madelon (scikit-learn's MADELON generator), mnist1d (the mnist1d "
                            "package's generator, offline; pip install -e '.[mnist1d]'), cifar10 (local copy)")
    train.add_argument("--data-dir", default=None, help="folder holding cifar-10-batches-py/ (torchvision format)")
    train.add_argument("--model", choices=MODELS, default=None,
                       help=f"architecture (default: {d.model}; cnn1d on mnist1d, mlp on madelon)")
    train.add_argument("--width", type=int, default=d.width, help="base channel count (ResNet: 64 is the paper's)")
    train.add_argument("--depth", type=int, default=d.depth, help="hidden layers of --model mlp")
    train.add_argument("--bits", type=int, nargs="+", default=list(d.candidate_bits), help="candidate widths")
    train.add_argument("--budget", type=float, default=d.budget_bits,
                       help="deployment budget: dynamic BitOPs at most those of uniform BUDGET-bit (calibrated)")
    train.add_argument("--alpha", type=float, default=d.alpha, help="weight of the consistency (sandwich) term")
    train.add_argument("--beta", type=float, default=d.beta, help="weight of the per-sample BitOPs price")
    train.add_argument("--imitation", type=float, default=d.imitation,
                       help="weight of the controller's imitation of each sample's best width")
    train.add_argument("--imitation-mode", choices=["expected", "best"], default=d.imitation_mode,
                       help="controller learns each width's expected cost per input (default) or the best width")
    train.add_argument("--imitation-source", choices=["holdout", "sandwich", "teacher"], default=d.imitation_source,
                       help="what the controller learns each width's cost from: held-out samples judged at every "
                            "width, the sandwich widths' losses, or their divergence from the widest width")
    train.add_argument("--controller", choices=["layer", "sample"], default=d.controller,
                       help="controller granularity: a width per governed layer and input, or one per input")
    train.add_argument("--imitation-holdout", type=float, default=d.imitation_holdout,
                       help="with --imitation-source holdout: share of the training set held out of the network's "
                            "loss to judge widths on")
    train.add_argument("--sampled-widths", type=int, default=d.sampled_widths,
                       help="random middle widths per step besides the widest and narrowest (-1: every width)")
    train.add_argument("--consistency-share", type=float, default=d.consistency_share,
                       help="share of each batch the sandwich widths train on (1: the whole batch)")
    train.add_argument("--imitation-samples", type=int, default=d.imitation_samples,
                       help="with --imitation-source holdout: held-out samples judged at every width per step")
    train.add_argument("--gate-gradients", choices=["all", "local", "none"], default=d.gate_gradients,
                       help="task-loss gradients to the controller's gates: every width, the chosen width's "
                            "neighbours, or none")
    train.add_argument("--no-distill", action="store_true", help="lower widths learn from labels, not the 8-bit path")
    train.add_argument("--shared-bn", action="store_true", help="one batch norm for every width (default: one per width)")
    train.add_argument("--norm-recalibration", type=int, default=d.norm_recalibration, metavar="N",
                       help="after training, re-estimate every width's batch-norm statistics on N training samples "
                            "(0: keep the running averages of training)")
    train.add_argument("--edge-bits", type=int, default=d.edge_bits,
                       help="width of the first and last layers (0: the controller governs them too)")
    train.add_argument("--warmup-epochs", type=int, default=None,
                       help=f"static 8-bit QAT epochs before DQT (default: {d.warmup_epochs}; 30 on mnist1d)")
    train.add_argument("--epochs", type=int, default=None, help=f"DQT epochs (default: {d.epochs}; 30 on mnist1d)")
    train.add_argument("--batch-size", type=int, default=d.batch_size)
    train.add_argument("--lr", type=float, default=d.lr, help="learning rate of the warm-up")
    train.add_argument("--dqt-lr", type=float, default=d.dqt_lr, help="learning rate of the DQT epochs")
    train.add_argument("--shift-rule", choices=["floor", "round"], default=d.shift_rule,
                       help="nested shift: round (default, see README) or floor (the paper's)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    train.add_argument("--limit", type=int, default=0, help="train on the first N images only (quick checks)")
    train.add_argument("--static-bits", type=int, default=0,
                       help="train a non-nested static baseline at this width only (no controller, no DQT phase)")
    train.add_argument("--out", default="runs/dqt", help="output directory (checkpoints, metrics, results)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    train.set_defaults(func=run_train)

    evaluate = sub.add_parser("eval", help="results table of a saved model")
    evaluate.add_argument("checkpoint")
    evaluate.add_argument("--data", choices=DATASETS, default="digits")
    evaluate.add_argument("--data-dir", default=None)
    evaluate.add_argument("--bits", type=int, default=None, help="one static width only")
    evaluate.set_defaults(func=run_eval)
    allocate = sub.add_parser("allocate", help="the best static per-layer widths of a saved model for a BitOPs budget")
    allocate.add_argument("checkpoint")
    allocate.add_argument("--budget", type=float, required=True, help="BitOPs of uniform BUDGET-bit (e.g. 3 or 2.5)")
    allocate.add_argument("--data", choices=DATASETS, default="digits")
    allocate.add_argument("--data-dir", default=None)
    allocate.add_argument("--save", default=None, metavar="PATH", help="write the model with these static widths")
    allocate.set_defaults(func=run_allocate)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    debug = args.debug or os.environ.get("DQT_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except Exception as exc:
        if debug:
            raise
        code = exit_code(exc)
        hint = "" if code != EXIT_INTERNAL else "; this is a bug in dqt-triton, please report it"
        print(f"dqt {args.command}: error: {_one_line(exc)}{hint} (run with --debug for the traceback)",
              file=sys.stderr)
        return code


# Exit codes: argparse's 2 for usage, then one per kind of failure so scripts can tell them apart.
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # bad option value, unsupported model or layer, invalid input
EXIT_CHECKPOINT = 3  # damaged, foreign or wrong-version checkpoint or training state
EXIT_NOT_FOUND = 4  # a file or dataset copy that is not there
EXIT_DISK_FULL = 5
EXIT_IO = 6  # any other operating-system error (permissions, read-only file system, ...)
EXIT_DIVERGED = 7  # non-finite values during training
EXIT_BACKEND = 8  # the requested backend or device cannot run here
EXIT_OVERFLOW = 9  # an int32 accumulator could overflow


def exit_code(exc: BaseException) -> int:
    """The `dqt` exit status for an exception (see the EXIT_* constants)."""
    from .errors import AccumulatorOverflowError, BackendUnavailableError, CheckpointError, DiskFullError

    for kind, code in ((CheckpointError, EXIT_CHECKPOINT), (DiskFullError, EXIT_DISK_FULL),
                       (FileNotFoundError, EXIT_NOT_FOUND), (AccumulatorOverflowError, EXIT_OVERFLOW),
                       (BackendUnavailableError, EXIT_BACKEND), (FloatingPointError, EXIT_DIVERGED),
                       (OSError, EXIT_IO), (ValueError, EXIT_USAGE), (TypeError, EXIT_USAGE)):
        if isinstance(exc, kind):
            if kind is TypeError and type(exc) is TypeError:
                return EXIT_INTERNAL  # a bare TypeError is a programming error, not the user's
            return code
    return EXIT_INTERNAL


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return text


if __name__ == "__main__":
    sys.exit(main())
