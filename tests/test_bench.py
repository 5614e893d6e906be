"""The benchmark scripts run end to end (tiny shapes) and record what they measured."""

from __future__ import annotations

import json

import pytest

from bench import gpu_kernels


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

    monkeypatch.setattr(evidence, "SETUPS", {"digits": dict(model="mlp", width=8, warmup_epochs=1, epochs=1,
                                                            limit=256, candidate_bits=(2, 4, 8))})
    monkeypatch.setattr(evidence, "VARIANTS", {"dqt": {}, "static4": {"static_bits": 4}})
    evidence.main(["run", "--seeds", "0", "1", "--out", str(tmp_path)])
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*.json"))
    assert runs == [f"digits-{v}-seed{s}.json" for v in ("dqt", "float", "static4") for s in (0, 1)]
    summary = json.loads((tmp_path / "summary.json").read_text())
    modes = {(r["variant"], r["mode"]): r for r in summary["rows"]}
    assert modes[("dqt", "dynamic@4.0")]["accuracy_std"] >= 0 and modes[("dqt", "dynamic@4.0")]["spread"] >= 1.0
    assert ("dqt", "static 2-bit") in modes and ("static4", "static 4-bit") in modes
    targets = {t for t, _, _ in summary["targets"]["digits"]}
    assert "one checkpoint at 4 bits within 1.5 pp of 4-bit trained alone" in targets
    assert "dynamic above the static curve at >= 3 budgets" in targets
    assert "| 4 |" in (tmp_path / "summary.md").read_text()
    before = (tmp_path / "runs" / "digits-dqt-seed0.json").read_text()
    evidence.main(["run", "--seeds", "0", "--out", str(tmp_path)])  # finished runs are kept, not redone
    assert (tmp_path / "runs" / "digits-dqt-seed0.json").read_text() == before


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
def test_gpu_sweep_smoke_run_pins_each_config_and_records_results(tmp_path):
    """Under the interpreter there is one configuration per kernel; each runs in worker processes."""
    from bench import gpu_sweep

    gpu_sweep.main(["--smoke", "--jobs", "2", "--out", str(tmp_path)])
    results = [json.loads(line) for line in next(tmp_path.glob("gpu_sweep-smoke-*.jsonl")).read_text().splitlines()]
    assert sorted(r["kernel"] for r in results) == ["conv", "matmul"]
    assert all(r["finished"] and r["equal"] == 2 and not r["differs"] and not r["faults"] for r in results)
    report = next(tmp_path.glob("gpu_sweep-smoke-*.md")).read_text()
    assert "| 0: 16x32x32, 4 warps, 1 stages | 2 | 0 | 0 | yes |" in report and "commit" in report


@pytest.mark.interpreter
def test_the_one_gpu_command_runs_its_stages_apart_and_reports_each(tmp_path):
    """bench.gpu --smoke: the sweep's smoke run, the latency stage reported as needing a GPU, the
    GPU test selection collected; one report with every stage's command and exit status."""
    from bench import gpu

    status = gpu.main(["--smoke", "--stages", "sweep", "latency", "tests", "--budget-s", "300", "--out",
                       str(tmp_path)])
    report = next(tmp_path.glob("gpu-smoke-*.md")).read_text()
    assert status == 0, report
    assert "| sweep | `-m bench.gpu_sweep" in report and "| latency | `-` | not run (needs a GPU) |" in report
    assert "| tests | `-m pytest" in report and "commit" in report
    assert next(tmp_path.glob("gpu_sweep-smoke-*.md")).is_file()  # the stage's own results, next to the report
