"""scripts/pilot.py: one arm trained and measured end to end on a tiny grid (3 concepts x 2 sizes)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
PILOT = runpy.run_path(str(SCRIPTS / "pilot.py"))
GAP = runpy.run_path(str(SCRIPTS / "memorisation_gap.py"))

GRID = """
name: tiny-pilot
backbones: [tiny-sd]
ranks: [2]
micro_datasets: [pool:digit-0-ink, pool:digit-1-sun, pool:photo-coffee]
ranges: [medium]
sizes: [1, 10]
steps: 6
snapshot_every: 3
learning_rate: 0.01
"""


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pilot")
    grid = folder / "tiny.yaml"
    grid.write_text(GRID)
    out = folder / "arm"
    assert (
        PILOT["main"]([str(grid), "--out", str(out), "--n-train", "1", "--images", "4", "--draws", "2"]) == 0
    )
    return grid, out, json.loads((out / "pilot.json").read_text())


def test_arm_trains_every_job_and_reports_every_step(arm):
    _, out, result = arm
    assert result["training"]["completed"] == 6 and not result["training"]["failed"]
    assert len(list(out.rglob("done.json"))) == 6
    assert sorted(result["protocol"]) == ["3", "6"] and result["step"] == 6
    for row in result["protocol"].values():
        for method in ("dsire", "frobenius-nn", "gda"):
            assert 0 <= row[method][0] <= 100
        assert 0 <= row["dsire_above_1"] <= 100


def test_figures_are_the_scripts_own(arm):
    # the gap per size is the median of memorisation_gap.py's per-model gaps on the same snapshots
    _, out, result = arm
    rows = json.loads(
        _stdout(GAP["main"], [str(out), "--step", "6", "--images", "4", "--draws", "2", "--json"])
    )
    for size in (1, 10):
        gaps = sorted(r["gap"] for r in rows if r["size"] == size)
        assert result["gap"][str(size)] == pytest.approx(gaps[len(gaps) // 2])
    norms = result["norms"]
    assert norms["norm_rel"]["1"] == pytest.approx(1.0)
    assert norms["norm_rel"]["10"] > 0 and norms["cos_10_50"] is None  # no 50-image LoRA in this grid


def test_rerun_resumes_without_training_and_reproduces(arm):
    grid, out, result = arm
    again = _stdout(
        PILOT["main"],
        [str(grid), "--out", str(out), "--n-train", "1", "--images", "4", "--draws", "2", "--json"],
    )
    again = json.loads(again)
    assert again["training"]["completed"] == 0  # every job had done.json: nothing retrained
    assert again["protocol"] == result["protocol"] and again["gap"] == result["gap"]


def _stdout(fn, argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert fn(argv) == 0
    return buf.getvalue()
