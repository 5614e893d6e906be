"""The README's main job runs end to end and its backends agree at every width."""

from __future__ import annotations

from dqt_triton.cli import main


def test_demo_runs_and_reports_every_width(capsys):
    assert main(["demo", "--epochs", "3", "--hidden", "32"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [8, 7, 6, 5, 4, 3, 2]
    assert all(r[3] == "True" for r in rows)  # reference == cpu, bit for bit
    assert float(rows[0][1]) > 0.5  # 8-bit integer inference keeps the float model's accuracy
