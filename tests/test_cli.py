"""The README's main job runs end to end and its backends agree at every width."""

from __future__ import annotations

import os

import pytest

from dqt_triton import CheckpointError
from dqt_triton.cli import main


def test_demo_runs_and_reports_every_width(capsys):
    assert main(["demo", "--epochs", "3", "--hidden", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [8, 7, 6, 5, 4, 3, 2]
    assert all(r[3] == "True" for r in rows)  # reference == cpu, bit for bit
    assert float(rows[0][1]) > 0.5  # 8-bit integer inference keeps the float model's accuracy


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dqt ")]  # besides progress bars
    assert len(lines) == 1 and "error:" in lines[0] and "--debug" in lines[0], err
    return lines[0]


QUICK = ["--model", "mlp", "--width", "8", "--limit", "128", "--warmup-epochs", "1", "--epochs", "1",
         "--bits", "2", "4", "8", "--batch-size", "64"]


def test_cli_failures_are_one_line_with_distinct_exit_codes(tmp_path, capsys, monkeypatch):
    """Every failure: one line naming what and which file, an exit code per kind of failure,
    the traceback only with --debug or DQT_DEBUG=1."""
    from dqt_triton import cli

    missing = tmp_path / "missing.pt"
    assert main(["eval", str(missing)]) == cli.EXIT_NOT_FOUND
    assert f"no checkpoint at {missing}" in _error_line(capsys)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello")
    assert main(["eval", str(garbage)]) == cli.EXIT_CHECKPOINT
    line = _error_line(capsys)
    assert str(garbage) in line and "not a dqt-triton checkpoint" in line

    assert main(["train", *QUICK, "--bits", "9", "--out", str(tmp_path / "bad")]) == cli.EXIT_USAGE
    assert "candidate bit-widths" in _error_line(capsys)

    with pytest.raises(CheckpointError):
        main(["--debug", "eval", str(garbage)])
    monkeypatch.setenv("DQT_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["eval", str(garbage)])


def test_cli_damaged_checkpoint_and_full_disk(tmp_path, capsys):
    from dqt_triton import cli

    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    model = out / "model.pt"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["eval", str(damaged)]) == cli.EXIT_CHECKPOINT
    line = _error_line(capsys)
    assert str(damaged) in line and "damaged" in line and "weights_only" not in line

    if os.path.exists("/dev/full"):  # a real ENOSPC from the kernel for the first checkpoint write
        full = tmp_path / "full"
        full.mkdir()
        os.symlink("/dev/full", full / f"train_state.pt.tmp-{os.getpid()}")
        assert main(["train", *QUICK, "--out", str(full)]) == cli.EXIT_DISK_FULL
        assert f"no space left on {full}" in _error_line(capsys)
        assert not [p for p in os.listdir(full) if ".tmp-" in p]
