"""Command-line entry point `dqt`.

`dqt demo` runs the integer contract end to end on scikit-learn's digits (shipped with the
package, no download): a small float MLP is trained, its weights are quantized once to 8-bit
master codes, and the integer-only forward pass is evaluated at every nested width by changing
shift amounts only. The training CLI (`dqt train`) arrives with nested QAT.
"""

from __future__ import annotations

import argparse
import logging
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dqt", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="integer-only inference at every nested width on digits")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--hidden", type=int, default=64)
    demo.set_defaults(func=run_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
