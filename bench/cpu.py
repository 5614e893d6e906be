"""CPU inference latency of frozen DQT programs beside what a CPU user runs today (issue 28).

    python -m bench.cpu [--nets resnet18 mobilenet_v2] [--sizes 112 224] [--batches 1 16] [--out bench/results]

For torchvision's ResNet-18 and MobileNetV2 (10 classes, untrained: latency does not depend on
the weights), at each input size and batch: DQT's frozen integer program at static 8 and 4 bits
and in dynamic mode (the paper's controller, its last layer randomised so widths mix across
samples and layers) on the CPU path's int8 GEMM route, static 8 bits on its float32 route (what
a CPU without VNNI runs), float32 eager, float32 `torch.compile` (where it works) and torch.ao
int8 (FX, x86 backend). Every DQT row's logits are checked equal (`torch.equal`) across the two
routes. Writes cpu-<date>.json / .md with the CPU's model and flags, date, commit and command;
measures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

import dqt_triton as dq
from bench.baselines import torch_ao_int8
from bench.common import machine
from bench.latency import images, measure
from dqt_triton.reference import blas

log = logging.getLogger("bench.cpu")
NETS = ("resnet18", "mobilenet_v2")
SECONDS_PER_CASE = 4.0  # interleaved rounds per case: more rounds damp this VM's drift


def _builders() -> dict:
    from tests.zoo import torchvision_builders  # torchvision's definitions without its C extension

    return torchvision_builders()


def prepare(name: str, size: int, seed: int = 0) -> dict:
    """The float network and the frozen DQT programs (int8 and float32 routes) of one net and size."""
    torch.manual_seed(seed)
    net = _builders()[name](weights=None, num_classes=10).eval()
    shape = (3, size, size)
    model = dq.DQTModel.from_float(net, shape, dynamic=True).set_dynamic(True).train()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(3):  # activation ranges from random images (EMA calibration), as bench.latency
            model(images(2, shape, seed + 100 + i))
        fc2 = model.controller.fc2
        fc2.weight.copy_(torch.randn(fc2.weight.shape, generator=gen) * torch.exp(fc2.log_weight_step) * 40)
    model.eval()
    frozen = {}
    for route in blas.CPU_GEMM_ROUTES:
        blas.set_cpu_gemm_route(route)  # weight tables are built, at the first call, for the route in force
        frozen[route] = {"static 8-bit": model.set_dynamic(False).set_bits(8).freeze(),
                         "static 4-bit": model.set_bits(4).freeze(), "dynamic": model.set_dynamic(True).freeze()}
    blas.set_cpu_gemm_route(None)
    return {"net": net, "model": model, "shape": shape, "frozen": frozen}


def _warm(frozen: dict, codes: torch.Tensor) -> dict:
    """Each program's first call (tables built for its route), and the routes' logits compared."""
    logits = {}
    for route, programs in frozen.items():
        blas.set_cpu_gemm_route(route)
        for mode, program in programs.items():
            logits[(route, mode)] = program(codes)
    blas.set_cpu_gemm_route(None)
    return {mode: torch.equal(logits[("int8", mode)], logits[("float32", mode)]) for mode in frozen["int8"]}


def rows_for(name: str, size: int, batches: list[int], compile_float: bool) -> list[dict]:
    p = prepare(name, size)
    net, shape = p["net"], p["shape"]
    scale = float(p["model"].input_step)
    ao = None
    try:
        ao = torch_ao_int8(net, shape, [images(4, shape, 1).float() * scale])
    except Exception as exc:  # torch.ao missing or deprecated away: report, keep going
        log.warning("torch.ao int8 unavailable: %s", exc)
    rows = []
    for batch in batches:
        codes = images(batch, shape, batch)
        real = codes.float() * scale
        exact = _warm(p["frozen"], codes)
        cases = {f"DQT {mode}, int8 GEMM route": (lambda f=f: f(codes)) for mode, f in p["frozen"]["int8"].items()}
        cases["DQT static 8-bit, float32 GEMM route"] = lambda: p["frozen"]["float32"]["static 8-bit"](codes)
        cases["float32 eager"] = lambda: net(real)
        if compile_float:
            try:
                compiled = torch.compile(net)
                with torch.no_grad():
                    compiled(real)
                cases["float32 torch.compile"] = lambda: compiled(real)
            except Exception as exc:  # no C++ compiler, or inductor unsupported here
                log.warning("torch.compile unavailable: %s", str(exc).splitlines()[0][:200])
        if ao is not None:
            cases[f"torch.ao int8 ({torch.backends.quantized.engine})"] = lambda: ao(real)
        with torch.no_grad():
            seconds = measure(cases, "cpu", 30, SECONDS_PER_CASE * len(cases))
        base = seconds["float32 eager"]
        ao_s = next((s for k, s in seconds.items() if k.startswith("torch.ao")), None)
        for impl, s in seconds.items():
            row = {"net": name, "input": f"3x{size}x{size}", "batch": batch, "impl": impl, "ms": s * 1e3,
                   "vs_float32": s / base, "vs_torch_ao": s / ao_s if ao_s else None}
            if impl.startswith("DQT"):
                mode = impl.split(",")[0].removeprefix("DQT ")
                row["routes_equal"] = exact[mode]
            rows.append(row)
            log.info("%s %s b%d %-40s %9.2f ms  %.2fx float32", name, size, batch, impl, row["ms"], row["vs_float32"])
    return rows


def markdown(info: dict, command: str, rows: list[dict]) -> str:
    cpu = info.get("cpu", "")
    lines = [f"# CPU inference latency, {info['date'][:10]}", "",
             f"Machine: {cpu}; int8 multiply-accumulate flags: {', '.join(blas.cpu_int8_flags()) or 'none'}; "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. Commit {info.get('commit')}. "
             f"Command: `{command}`.", "",
             "Median milliseconds per call (interleaved rounds, `bench.latency.measure`); ratios are to float32 "
             "eager and to torch.ao int8 on the same input and batch. `routes equal`: the DQT program's logits "
             "on the int8 and float32 GEMM routes, `torch.equal`.", "",
             "| net | input | batch | implementation | ms | vs float32 | vs torch.ao | routes equal |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ao = "-" if r["vs_torch_ao"] is None else f"{r['vs_torch_ao']:.2f}x"
        eq = {True: "yes", False: "NO", None: ""}[r.get("routes_equal")]
        lines.append(f"| {r['net']} | {r['input']} | {r['batch']} | {r['impl']} | {r['ms']:.2f} | "
                     f"{r['vs_float32']:.2f}x | {ao} | {eq} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=NETS)
    parser.add_argument("--sizes", nargs="+", type=int, default=[112, 224])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    info = machine()
    rows = []
    for name in args.nets:
        for size in args.sizes:
            rows += rows_for(name, size, args.batches, not args.no_compile)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-{info['date'][:10]}"
    command = "python -m bench.cpu " + " ".join(argv if argv is not None else sys.argv[1:])
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "int8_flags": blas.cpu_int8_flags(),
                                                     "command": command, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(info, command.strip(), rows))
    log.info("wrote %s.json and .md", stem)
    return {"rows": rows}


if __name__ == "__main__":
    main()
