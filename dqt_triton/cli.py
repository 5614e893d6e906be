"""Command-line entry point `dqt`.

`dqt demo` runs the integer contract end to end on scikit-learn's digits (shipped with the
package, no download): a small float MLP is trained, its weights are quantized once to 8-bit
master codes, and the integer-only forward pass is evaluated at every nested width by changing
shift amounts only. `dqt train` runs DQT training (digits by default, no download) and prints
the results table; `dqt eval CHECKPOINT` prints it for a saved model.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

import torch
from tqdm import tqdm

from . import numerics, ops

log = logging.getLogger(__name__)


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
    from .data import load_dataset

    ds = load_dataset("digits")  # the fixed split `dqt train` uses; the MLP reads 64 pixel codes
    x_train, y_train, x_test, y_test = ds.x_train.flatten(1), ds.y_train, ds.x_test.flatten(1), ds.y_test
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


def config_option_names(cls) -> list[str]:
    """The fields of config dataclass `cls` that are command-line options."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and "help" in f.metadata]


def add_config_options(parser: argparse.ArgumentParser, cls) -> None:
    """One option per field of config dataclass `cls` (`convert.option` metadata: help, flag,
    negative_flag, choices, metavar). Every option defaults to None, so that an unset one takes
    the dataset's recipe (`training.recipe_default`); the help shows the field's default."""
    own = cls.__dict__.get("__annotations__", {})  # the class's own options first, then the inherited
    options = set(config_option_names(cls))
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        meta = f.metadata
        if f.name not in options:
            continue
        default = f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{meta['help']} (default: {shown})"
        if "negative_flag" in meta:  # a flag that turns a default-on option off
            flag, negative_help = meta["negative_flag"]
            parser.add_argument(flag, dest=f.name, action="store_const", const=False, default=None,
                                help=f"{negative_help} (default: {meta['help']})")
            continue
        kwargs = dict(dest=f.name, default=None, help=help_text)
        if isinstance(default, tuple):
            kwargs.update(type=type(default[0]), nargs="+")
        elif default is None:
            kwargs.update(type=int if "int" in str(f.type) else str)
        else:
            kwargs.update(type=type(default))
        for key in ("choices", "metavar"):
            if key in meta:
                kwargs[key] = meta[key]
        parser.add_argument(meta.get("flag", "--" + f.name.replace("_", "-")), **kwargs)


def run_train(args: argparse.Namespace) -> int:
    from .report import format_table
    from .training import TrainConfig, Trainer, environment_device, recipe_default

    values = {name: getattr(args, name) for name in config_option_names(TrainConfig)}
    cfg = TrainConfig(**{name: recipe_default(args.data, name) if value is None else value
                         for name, value in values.items()})
    cfg.device = environment_device(cfg.device)
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
    from .report import format_table
    from .training import evaluate_checkpoint

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

    from .training import DATA_RECIPES, DATASETS, TrainConfig

    train = sub.add_parser("train", help="DQT training with the results table (default: digits, no download)",
                           epilog="Options left unset take the dataset's recipe where it has one: "
                                  + "; ".join(f"{d}: {r}" for d, r in DATA_RECIPES.items()))
    add_config_options(train, TrainConfig)
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
