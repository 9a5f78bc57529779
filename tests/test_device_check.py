"""benchmarks/device_check.py (the GPU session's probe-by-probe comparison) runs, here CPU
against CPU: the same checkpoint measured twice from the same seed gives the same numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_device_check_table(digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            device: str) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    import device_check

    out = tmp_path / "table.md"
    monkeypatch.setattr(sys, "argv", ["device_check.py", "--device", device, "--light",
                                      "--run", str(digits_run), "--probes", "metrics,spectrum,hessian",
                                      "--out", str(out)])
    device_check.main()
    rows = [r.split("|")[1:-1] for r in out.read_text().splitlines() if r.startswith("| ")]
    diffs = [[c.strip() for c in r] for r in rows if len(r) == 6 and r[0].strip() != "probe"]
    assert {(r[0], r[1]) for r in diffs if r[0] != "hessian"} == {
        ("metrics", "loss"), ("metrics", "error"), ("spectrum", "A"), ("spectrum", "R")}
    assert {r[1] for r in diffs if r[0] == "hessian"} == {
        "eigenvalues", "eigen_residual", "converged", "trace", "trace_stderr", "loss",
        "density", "density_grid", "density_nodes", "density_weights"}
    assert all(r[5] == "yes" for r in diffs)  # deterministic on the device
    if device == "cpu":
        assert all(r[2] == "0" and r[3] == "0" and r[4] == "0" for r in diffs)
    speed = [r for r in rows if len(r) == 7 and r[0].strip() != "probe"]
    assert len(speed) == 6  # three probes x the run's two widths
    metrics_rows = [int(r[4]) for r in speed if r[0].strip() == "metrics"]
    assert metrics_rows and all(n > 0 for n in metrics_rows)  # the hook counted the forwards
    # hessian in HVP rows: (iterations 6 + trace samples 3 + one residual product per
    # eigenvalue, k = 3; the density reuses the eigenvalue run) x 2 subsets x 24 points
    assert [int(r[5]) for r in speed if r[0].strip() == "hessian"] == [12 * 2 * 24] * 2
    assert "flagged (relative difference > 0.001 or NaN mismatch): none" in out.read_text()
