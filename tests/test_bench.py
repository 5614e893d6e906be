"""The benchmark scripts run end to end (tiny shapes) and record what they measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import gpu_kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.interpreter
def test_gpu_kernel_bench_smoke_run_writes_results(tmp_path, monkeypatch):
    """Under the interpreter in CI, compiled on a GPU machine."""
    monkeypatch.setattr(gpu_kernels, "SMOKE_MATMUL", [("smoke 32x48x64", 32, 48, 64)])
    monkeypatch.setattr(gpu_kernels, "SMOKE_CONV", [("smoke 3x3", 1, 8, 5, 16, 3, 1)])
    gpu_kernels.main(["--smoke", "--out", str(tmp_path)])
    result = json.loads(next(tmp_path.glob("gpu_kernels-smoke-*.json")).read_text())
    impls = {(r["problem"], r["impl"]) for r in result["rows"]}
    assert ("smoke 32x48x64", "unfused: torch shift + _int_mm + torch requant") in impls
    assert ("smoke 3x3", "im2col + torch._int_mm (no epilogue)") in impls
    assert all(r["ms"] > 0 for r in result["rows"])
    unfused = [r for r in result["rows"] if r["impl"].startswith("unfused")]
    assert unfused and all(r["unfused_equals_ours"] for r in unfused)
    assert result["machine"]["commit"] and result["command"].startswith("python -m bench.gpu_kernels --smoke")
    assert any("mixed-shift time" in line for line in result["targets"])


def test_evidence_runs_resumably_and_summarizes(tmp_path, monkeypatch):
    from bench import evidence

    monkeypatch.setattr(evidence, "SETUPS", {"tiny": dict(data="digits", model="mlp", width=8, depth=3,
                                                          warmup_epochs=1, epochs=1, limit=256,
                                                          candidate_bits=(2, 4, 8), policy_budgets=(2.5, 3.0))})
    monkeypatch.setattr(evidence, "ALONE_WIDTHS", {"tiny": (4,)})
    evidence.main(["run", "--seeds", "0", "1", "--out", str(tmp_path)])
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert runs == [f"tiny-{v}-seed{s}.json" for v in ("dqt", "float", "static4") for s in (0, 1)]
    summary = json.loads((tmp_path / "summary.json").read_text())["setups"]["tiny"]
    assert summary["seeds"] == [0, 1]
    budgets = {row["budget_bits"]: row for row in summary["budgets"]}
    assert set(budgets) == {2.5, 3.0, 4.0}  # the deployment budget (--budget 4) too
    runs = [json.loads((tmp_path / "runs" / f"tiny-dqt-seed{s}.json").read_text()) for s in (0, 1)]
    for b, row in budgets.items():
        assert {"deployed", "allocation", "cascade", "escalation", "cascade3", "controller"} <= set(row)
        mean, se = row["deployed"]["accuracy"]
        assert 0.0 <= mean <= 1.0 and se >= 0.0
        assert row["deployed"]["bitops_vs_uniform4"] > 0
        gains = [next(r for r in run["budgets"] if r["budget_bits"] == b)["gain_over_static"] for run in runs]
        vs = row["deployed_minus_best_static"]
        assert vs["per_seed"] == {"0": gains[0], "1": gains[1]} and vs["worst"] == min(gains)
        assert vs["mean_se"][0] == pytest.approx(sum(gains) / 2)
    names = [t for t, _, _ in summary["targets"]]
    assert "budget 3.0: deployed - best affordable static >= -0.1 pp (mean)" in names
    assert "budget 4.0 (deployment): no seed below -0.5 pp" in names
    assert "budget 2.5: deployed - best affordable static >= +1.5 pp (mean)" in names
    assert "checkpoint at 4 bits within 1.5 pp of 4-bit trained alone" in names
    text = (tmp_path / "summary.md").read_text()
    assert "| 4 |" in text and "deployed - best static" in text and "deployed - hull at its BitOPs" in text
    before = (tmp_path / "runs" / "tiny-dqt-seed0.json").read_text()
    evidence.main(["run", "--seeds", "0", "--out", str(tmp_path)])  # finished runs are kept, not redone
    assert (tmp_path / "runs" / "tiny-dqt-seed0.json").read_text() == before


def test_bitops_bench_writes_tables_for_both_resnets(tmp_path):
    from bench import bitops as bitops_bench

    bitops_bench.main(["--out", str(tmp_path), "--batch", "2"])
    report = json.loads(next(tmp_path.glob("bitops-*.json")).read_text())["report"]
    r50 = report["ResNet-50 (ImageNet, 224x224)"]
    assert r50["layers"] == 54 and r50["transition"]["weight_elements"] == 25_502_912
    assert [r["mode"] for r in r50["rows"]][:4] == ["uniform 8-bit", "uniform 6-bit", "uniform 4-bit", "uniform 2-bit"]
    assert "ResNet-18 (CIFAR, 32x32)" in report


def test_latency_bench_writes_every_row_and_target(tmp_path, monkeypatch):
    from bench import latency
    from dqt_triton import models

    # Width 8, not less: oneDNN's AVX2 1x1 stride-2 backward-weights kernel on NHWC hangs at random
    # when input channels < 8 (uxlfoundation/oneDNN#6035), and the training rows run it.
    monkeypatch.setattr(latency, "NETS", {
        "resnet18": ("ResNet-18 tiny", lambda: models.resnet18_cifar(10, 3, 8), (3, 16, 16)),
        "resnet50": ("ResNet-50 tiny", lambda: models.resnet50(10, 3, 2), (3, 32, 32))})
    monkeypatch.setattr(latency, "BATCHES", {"cpu": {"resnet18": (1, 3), "resnet50": (1,)}})
    monkeypatch.setattr(latency, "TRAIN", {"cpu": ("resnet18", 3)})
    monkeypatch.setattr(latency, "SECONDS_PER_ROW", 0.01)
    report = latency.main(["--device", "cpu", "--out", str(tmp_path), "--max-repeats", "3"])
    saved = json.loads(next(tmp_path.glob("latency-*.json")).read_text())
    assert saved["machine"]["commit"] and saved["command"].startswith("python -m bench.latency")
    impls = {(r["net"], r["batch"], r["impl"]) for r in saved["inference"]}
    for batch in (1, 3):
        for impl in ("DQT frozen integer, uniform 8-bit", "DQT frozen integer, uniform 2-bit",
                     "DQT frozen integer, dynamic", "torch float32 eager", "torch.ao int8 (x86)",
                     "dequant-requant dynamic (float, same controller)"):
            assert ("ResNet-18 tiny", batch, impl) in impls
    dynamic = next(r for r in saved["inference"] if r["impl"] == "DQT frozen integer, dynamic" and r["batch"] == 3)
    assert 2 <= dynamic["mean_bits"] <= 8 and dynamic["gbitops_per_sample"] > 0
    steps = [r["impl"] for r in saved["training"]]
    assert steps[:2] == ["torch float32 step", "torch.ao fake-quant QAT step (8-bit)"] and len(steps) == 11
    assert latency.RECIPE_ROW in steps and latency.CHEAP_ROW in steps and latency.EARLIER_ROW in steps
    assert any("fake-quant QAT step (target <= 3x" in t for t in saved["targets"])
    assert all(r["ms"] > 0 for r in saved["inference"] + saved["training"])
    assert any("torch.ao int8" in t for t in saved["targets"]) and any("not measured" in t for t in saved["targets"])
    assert (tmp_path / next(tmp_path.glob("latency-*.md")).name).read_text().startswith("# End-to-end latency")
    saved_json = next(tmp_path.glob("latency-*.json"))
    assert report["plot"] == saved_json.with_suffix(".png").exists()
    table = saved_json.with_suffix(".md").read_text()
    saved_json.with_suffix(".md").unlink()
    latency.main(["--replot", str(saved_json)])  # redraws from the JSON alone
    assert saved_json.with_suffix(".md").read_text() == table


@pytest.mark.interpreter
def test_gpu_sweep_smoke_run_pins_gpu_tiles_and_records_results(tmp_path):
    """The sweep pins GPU tiles (gpu_*_configs), also under the interpreter, each in worker processes."""
    from bench import gpu_sweep

    gpu_sweep.main(["--smoke", "--jobs", "2", "--configs", "matmul:3", "conv:6", "--out", str(tmp_path)])
    results = [json.loads(line) for line in next(tmp_path.glob("gpu_sweep-smoke-*.jsonl")).read_text().splitlines()]
    assert sorted((r["kernel"], r["config"]) for r in results) == [("conv", 6), ("matmul", 3)]
    assert all(r["finished"] and r["equal"] == 2 and not r["differs"] and not r["faults"] for r in results)
    report = next(tmp_path.glob("gpu_sweep-smoke-*.md")).read_text()
    assert "| 3: 16x64x64, 8 warps, 4 stages | 2 | 0 | 0 | yes |" in report
    assert "| 6: 16x64x64, 4 warps, 3 stages | 2 | 0 | 0 | yes |" in report and "commit" in report


def _pytest_with_pin(value: str, node: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_INTERPRET": "1", "DQT_PIN_TILE": value}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", node], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.interpreter
def test_pinned_conv_tile_is_the_one_launched():
    """DQT_PIN_TILE=conv:I: the header names the tile and every launch of the session ran it."""
    proc = _pytest_with_pin("conv:6", "tests/kernels/test_gemm.py::test_conv_resnet_block_shape_with_mixed_shifts")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tile = "BLOCK_M=16 BLOCK_N=64 BLOCK_K=64 num_warps=4 num_stages=3"
    assert f"DQT_PIN_TILE=conv:6: int_conv2d_kernel pinned to {tile}" in proc.stdout
    assert f"int_conv2d_kernel launched 1 times, 1 with the pinned tile {tile}" in proc.stdout
    assert "OTHER TILES" not in proc.stdout


@pytest.mark.parametrize(("value", "message"), [
    ("matmul:5", "gpu_matmul_configs() has 5 tiles, indices 0..4"),
    ("gemm:0", "expected 'matmul:I' or 'conv:I'"),
])
def test_a_bad_pinned_tile_stops_the_session(value, message):
    proc = _pytest_with_pin(value, "tests/kernels/test_gemm.py::test_empty_batch")
    assert proc.returncode == 4 and message in proc.stderr, proc.stdout + proc.stderr  # 4: usage error
    assert "passed" not in proc.stdout


@pytest.mark.interpreter
def test_warm_compiles_the_pruned_tiles_and_launches_nothing(monkeypatch):
    """bench.gpu_warm's compile-only launch: the GPU tiles left after pruning, each with warmup=True."""
    import dqt_triton as dq
    from bench.gpu_warm import compile_only
    from dqt_triton.kernels import gemm
    from dqt_triton.kernels.configs import gpu_matmul_configs, prune_tiles

    kernel = gemm.int_matmul_kernel
    monkeypatch.setattr(kernel, "configs", gpu_matmul_configs())
    monkeypatch.setattr(kernel, "cache", {})
    runs = []
    real_run = kernel.fn.run
    monkeypatch.setattr(kernel.fn, "run",
                        lambda *a, **kw: runs.append((kw["warmup"], kw["BLOCK_M"])) or real_run(*a, **kw))
    for M, K, N in [(64, 45, 37), (256, 256, 256)]:  # the faulting test's shape keeps one tile of five
        blocks_m = [c.kwargs["BLOCK_M"] for c in prune_tiles(gpu_matmul_configs(), M, N, K)]
        assert len(blocks_m) == (1 if M == 64 else len(gpu_matmul_configs()))
        runs.clear()
        compiled = []
        x = torch.zeros((M, K), dtype=torch.uint8)
        with compile_only(kernel, compiled):
            dq.int_matmul(x, torch.zeros((N, K), dtype=torch.int8), act_shift=torch.arange(M) % 8,
                          weight_shift=torch.arange(M) % 3, backend="triton")
        assert [m for _, m in runs] == blocks_m and all(warmup for warmup, _ in runs)
        assert len(compiled) == len(blocks_m)
    assert "run" not in vars(kernel)  # the autotuner launches again after the block


@pytest.mark.interpreter
def test_the_one_gpu_command_rehearses_every_step_and_keeps_one_report(tmp_path, monkeypatch):
    """bench.gpu --smoke: the probe with the GPU tools absent, the warm step, the faulting test
    with the first and last GPU tiles pinned (run for real under the interpreter), the kernel
    tests collected file by file, the benchmarks reported as needing a GPU; one report naming
    every step."""
    from bench import gpu
    from dqt_triton.kernels.configs import gpu_matmul_configs

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.chdir(ROOT)  # the command runs from the repository's root
    status = gpu.main(["--smoke", "--jobs", "2", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "cache")])
    report = next(tmp_path.glob("gpu-smoke-*.md")).read_text()
    assert status == 0, report
    assert "Command: `TRITON_INTERPRET=1 python -m bench.gpu --smoke" in report and "Commit: " in report
    assert "| ptxas_bundled |" in report and "| nvidia_smi | absent |" in report
    steps = re.findall(r"^\| (\w+) \| `?(.*?)`? \| (\S+)", report, re.M)
    assert {s for s, _, _ in steps} >= {"env", "warm", "faulting", "tests", "kernels", "latency"}
    assert ("kernels", "-", "not") in steps and ("latency", "-", "not") in steps
    assert [c for s, c, rc in steps if s == "warm" and rc == "0"] == ["python -m bench.gpu_warm --jobs 2 --smoke"]
    last = len(gpu_matmul_configs()) - 1  # the first and last tiles pinned alone, and each was the tile that ran
    for i in range(last + 1):
        ran = re.search(rf"^\| matmul tile {i}: .* \| 0 \| no \| 4 passed in .* \| 4 / 4 \| - \|$", report, re.M)
        assert bool(ran) == (i in (0, last))
    assert re.search(r"^\| autotuned \| 0 \| no \| 4 passed in", report, re.M)
    collected = [c for s, c, _ in steps if s == "tests"]
    assert len(collected) == len(list(Path("tests/kernels").glob("test_*.py")))
    assert all("--collect-only" in c and "-m 'interpreter or gpu'" in c for c in collected)
    assert "## Output tails" in report and next(tmp_path.glob("gpu-smoke-*.log")).stat().st_size > 0


MEMCHECK_SAMPLE = """\
========= COMPUTE-SANITIZER
========= Invalid __global__ read of size 16 bytes
=========     at int_matmul_kernel+0x1a30 in /repo/kernels/gemm.py:88
=========     by thread (32,0,0) in block (9,0,0)
=========     Address 0x7f3a00000fc0 is out of bounds
=========     and is 1 bytes after the nearest allocation at 0x7f3a00000000 of size 4032 bytes
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x2f3e1] in libcuda.so.1
=========
4 passed in 31.20s
========= ERROR SUMMARY: 1 error
"""


def test_gpu_command_wraps_the_pinned_runs_in_the_sanitizer_and_kills_a_hung_group(tmp_path):
    """The parts of bench.gpu that only a GPU machine reaches, on their own: the memcheck wrap of
    step 2, the sanitizer lines kept for the report, a tool that is absent, and a hung process
    killed with its children at its time limit."""
    import argparse

    from bench import gpu

    args = argparse.Namespace(smoke=False, sanitizer=True, print_limit=7, jobs=6, out=tmp_path)
    info = {"sanitizer": "/opt/cs/compute-sanitizer", "sanitizer_usable": True, "matmul_tiles": ["a", "b"]}
    runs = gpu.step_runs("faulting", args, info, 60.0)
    assert [r.label for r in runs] == ["matmul tile 0: a", "matmul tile 1: b", "autotuned"]
    assert all(r.cmd[:6] == ["/opt/cs/compute-sanitizer", "--tool", "memcheck", "--print-limit", "7",
                             "--show-backtrace"] and r.cmd[-1] == gpu.FAULTING_TEST for r in runs)
    assert [r.env.get("DQT_PIN_TILE") for r in runs] == ["matmul:0", "matmul:1", None]
    assert all(r.env["CUDA_LAUNCH_BLOCKING"] == "1" for r in runs)
    plain = gpu.step_runs("faulting", args, {**info, "sanitizer_usable": False}, 60.0)
    assert all(r.cmd[0] == sys.executable for r in plain)

    found = gpu.sanitizer_findings(MEMCHECK_SAMPLE)
    assert found[0] == "Invalid __global__ read of size 16 bytes" and "at int_matmul_kernel+0x1a30" in found[1]
    assert found[-1] == "ERROR SUMMARY: 1 error" and not any("Host Frame" in line for line in found)
    assert gpu.Run("faulting", "x", [], output=MEMCHECK_SAMPLE).summary() == "4 passed in 31.20s"
    assert gpu.tool_version([str(tmp_path / "ptxas"), "--version"]) == "absent"

    hang = "import subprocess, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"
    status, timed_out, seconds, output = gpu.run_process([sys.executable, "-c", hang], dict(os.environ), 3.0)
    assert timed_out and seconds < 20 and status != 0
    status_file = Path(f"/proc/{output.split()[0]}/status")
    time.sleep(0.5)  # the grandchild went with the group: gone, or a zombie until its new parent reaps it
    assert not status_file.exists() or "\tZ" in status_file.read_text().split("State:")[1].splitlines()[0]


def test_cpu_bench_writes_every_row_with_the_routes_compared(tmp_path, monkeypatch):
    """bench.cpu on a small input: every implementation timed, the DQT programs' logits equal on
    the int8 and float32 GEMM routes, the CPU's int8 flags in the file."""
    from bench import cpu

    monkeypatch.setattr(cpu, "SECONDS_PER_CASE", 0.01)
    cpu.main(["--nets", "resnet18", "--sizes", "32", "--batches", "2", "--no-compile", "--out", str(tmp_path)])
    saved = json.loads(next(tmp_path.glob("cpu-*.json")).read_text())
    impls = {r["impl"] for r in saved["rows"]}
    assert {"DQT static 8-bit, int8 GEMM route", "DQT static 4-bit, int8 GEMM route", "DQT dynamic, int8 GEMM route",
            "DQT static 8-bit, float32 GEMM route", "float32 eager", "torch.ao int8 (x86)"} <= impls
    assert all(r["routes_equal"] for r in saved["rows"] if r["impl"].startswith("DQT"))
    assert "int8_flags" in saved and saved["command"].startswith("python -m bench.cpu")
    assert "| resnet18 | 3x32x32 | 2 |" in next(tmp_path.glob("cpu-*.md")).read_text()


def test_cpu_profile_splits_the_time_by_step_and_by_kernel(tmp_path, monkeypatch):
    """bench.cpu_profile on a small input: the steps of ResNet-18 by kind and layer shape, the
    kernels that ran on this machine's route, shares that add up to the measured calls."""
    from bench import cpu_profile
    from dqt_triton.reference import blas

    monkeypatch.setattr(cpu_profile, "REPEATS", 2)
    cpu_profile.main(["--nets", "resnet18", "--sizes", "32", "--batches", "2", "--modes", "static 8-bit",
                      "--out", str(tmp_path)])
    saved = json.loads(next(tmp_path.glob("cpu-profile-*.json")).read_text())
    (r,) = saved["results"]
    assert {"7x7 conv", "3x3 conv", "1x1 conv", "maxpool", "add", "linear", "between steps"} <= set(r["steps"])
    assert sum(r["steps"].values()) == pytest.approx(r["total_ms"])
    assert sum(r["kernels"].values()) == pytest.approx(r["kernels_total_ms"])
    conv = "oneDNN int8 convolution" if blas.cpu_gemm_route() == "int8" and blas.library_conv_enabled() else "im2col"
    assert r["kernels"].get(conv, 0) > 0 and r["kernels"]["epilogue (requantize)"] > 0
    assert "## resnet18 3x32x32, batch 2, DQT static 8-bit" in next(tmp_path.glob("cpu-profile-*.md")).read_text()


def saved_static4_accuracy(run):
    return {r["mode"]: r for r in json.loads((run / "results.json").read_text())["rows"]}["static 4-bit"]["accuracy"]


def test_transformer_summary_reads_a_trials_directory(tmp_path):
    """bench.transformer_summary on two tiny ViT runs (one DQT checkpoint with widths per token,
    one model alone at 4 bits): the table pairs them, the shuffle check, the widths per token
    position, the token probes (forcing every patch to 4 bits reproduces static 4) and the rows
    file run."""
    from bench import transformer_summary
    from dqt_triton.cli import main

    quick = ["train", "--model", "vit", "--limit", "96", "--warmup-epochs", "1", "--epochs", "1", "--bits", "2", "3", "4", "8",
             "--norm-recalibration", "0", "--policy-budgets", "4", "--seed", "0"]
    # a budget of uniform 6: the tiny model's per-token controller costs more than uniform 4 leaves
    assert main([*quick, "--controller", "token", "--budget", "6", "--out", str(tmp_path / "token-s0")]) == 0
    assert main([*quick, "--static-bits", "4", "--out", str(tmp_path / "static4-s0")]) == 0
    table = transformer_summary.summarise(tmp_path)
    assert "| 4 |" in table and "controller (a width per governed layer and token)" in table
    ctrl, draws, metric = transformer_summary.shuffled_widths(tmp_path / "token-s0" / "model.pt", seeds=2)
    assert metric == "accuracy" and [len(d) for d in draws.values()] == [2, 2] and 0.0 <= ctrl <= 1.0
    where = transformer_summary.token_widths(tmp_path / "token-s0" / "model.pt")
    assert where.startswith("mean width per token position (4 x 4)") and "blank patches" in where
    calibrated = transformer_summary.calibrated_widths(tmp_path)
    assert "token-s0: widths [" in calibrated and "controller - static 4:" in calibrated
    from bench import token_probes
    curve = token_probes.budget_curve(tmp_path / "token-s0", below=1, above=1)
    assert sum(r["calibrated"] for r in curve) == 1 and len(curve) >= 2
    test_bitops = [r["test"]["bitops_vs_uniform4"] for r in curve]
    assert test_bitops == sorted(test_bitops)  # a larger code never buys fewer bits
    layers = token_probes.layer_widths(tmp_path / "token-s0")  # 5 bits is no candidate of this run: 3 only
    assert layers[0]["layer"] == "none" and layers[0]["accuracy"] == saved_static4_accuracy(tmp_path / "token-s0")
    assert [r["bits"] for r in layers[1:]] == [3] * (len(layers) - 1) and len(layers) > 2
    assert all(r["bitops_vs_uniform4"] < layers[0]["bitops_vs_uniform4"] == pytest.approx(1.0) for r in layers[1:])
    rules = {r["rule"]: r for r in token_probes.fixed_rules(tmp_path / "token-s0")}
    assert rules["every patch 4"]["bitops_vs_uniform4"] == pytest.approx(1.0) and "blank 2, inked 5" not in rules
    assert rules["every patch 4"]["accuracy"] == saved_static4_accuracy(tmp_path / "token-s0")
    token_probes.main([str(tmp_path / "token-s0"), "--out", str(tmp_path / "probes.md")])
    probes = (tmp_path / "probes.md").read_text()
    assert "| one governed layer at another width" in probes and "| widths by rule" in probes
    saved = json.loads((tmp_path / "probes.json").read_text())["runs"][str(tmp_path / "token-s0")]
    assert saved["layer_widths"] == layers and set(saved) == {"budget_curve", "layer_widths", "fixed_rules"}
    rows = transformer_summary.collect(tmp_path)
    assert rows["token-s0"]["options"]["token_costs"] == "gradient" and "controller" in rows["token-s0"]
    assert set(rows["static4-s0"]) == {"options", "static 4-bit"}


def test_character_widths_reads_a_character_model_run(tmp_path):
    """bench.transformer_summary.character_widths on a tiny pydoc run with one width per token:
    the width by character class, the characters with fewest and most bits, and by difficulty,
    every one a mean of candidate widths; token_harm on the layers after the last attention, its
    allocations within the BitOPs of 4 bits."""
    import re

    from bench import transformer_summary
    from dqt_triton.cli import main

    assert main(["train", "--data", "pydoc", "--limit", "64", "--warmup-epochs", "1", "--epochs", "1",
                 "--bits", "3", "4", "8", "--controller", "token-shared", "--controller-hidden", "2", "--budget", "8",
                 "--norm-recalibration", "0", "--policy-budgets", "4", "--seed", "0",
                 "--out", str(tmp_path / "token-s0")]) == 0
    text = transformer_summary.character_widths(tmp_path / "token-s0" / "model.pt")
    lines = text.splitlines()
    assert lines[0].startswith("mean width by the character") and "space" in lines[0] and "letters" in lines[0]
    assert lines[1].startswith("fewest bits: ") and lines[2].startswith("most bits: ") and "harder than" in lines[3]
    widths = [float(w) for w in re.findall(r"(\d+\.\d\d)(?: bits|;|,|$)", text, flags=re.M)]
    assert len(widths) >= 6 and all(3.0 <= w <= 8.0 for w in widths)
    from bench import token_probes
    harm = token_probes.token_harm(tmp_path / "token-s0", high=8)
    assert harm["layers"] == ["layer9_blocks_1_proj", "layer10_blocks_1_fc1", "layer11_blocks_1_fc2"]
    saved = {r["mode"]: r for r in json.loads((tmp_path / "token-s0" / "results.json").read_text())["rows"]}
    # the same integers; the perplexity is float math on their dequantized logits, summed in another order
    assert harm["perplexity"]["4"] == pytest.approx(saved["static 4-bit"]["perplexity"], rel=1e-4)
    spend = {b: harm["bitops_vs_uniform4"][b] - harm["bitops_vs_uniform4"]["4"] for b in ("3", "4", "8")}
    assert spend["3"] < 0 < spend["8"]
    for allocation in (harm["oracle"], harm["held_out"]["predicted"]):  # never above the BitOPs of 4 bits
        assert sum(allocation["shares"].values()) == pytest.approx(1.0)
        assert sum(spend[b] * share for b, share in allocation["shares"].items()) <= 1e-6
    assert -1.0 <= harm["held_out"]["predicted"]["correlation_low"] <= 1.0
    with pytest.raises(ValueError, match="not candidates"):
        token_probes.token_harm(tmp_path / "token-s0")  # 5 bits is no candidate of this run


def test_router_probe_measures_what_early_features_know(tmp_path):
    """bench.router_probe: the AUC is the rank statistic (ties half), and on a tiny run each
    cascade's router and margin AUCs are probabilities over its calibration split."""
    import torch

    from bench import router_probe
    from dqt_triton.cli import main

    assert router_probe.auc(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([True, True, False, False])) == 1.0
    assert router_probe.auc(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False])) == 0.75
    assert main(["train", "--model", "mlp", "--width", "8", "--limit", "256", "--warmup-epochs", "1", "--epochs", "1",
                 "--bits", "2", "4", "8", "--policy-budgets", "2.5", "3", "--out", str(tmp_path / "run")]) == 0
    rows = router_probe.probe(tmp_path / "run", (2.5, 3.0))
    assert rows and {r["budget_bits"] for r in rows} <= {2.5, 3.0}
    for r in rows:
        assert r["samples"] == 51 and 0.0 < r["escalated_share"] <= 1.0
        assert all(0.0 <= r[k] <= 1.0 or r[k] != r[k] for k in ("router_auc_escalated", "router_auc_wrong",
                                                                 "margin_auc_wrong"))
    router_probe.main([str(tmp_path / "run"), "--budgets", "2.5", "3", "--out", str(tmp_path / "probe.md")])
    assert "router AUC: escalated" in (tmp_path / "probe.md").read_text()
