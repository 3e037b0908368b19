"""The dataset commands (build, publish --dry-run, import-upstream) through the exit-code contract."""

from __future__ import annotations

import json

import click
import numpy as np
from dataset_helpers import isolated_datasets_cache, make_factory, random_lora, write_upstream_parquet  # noqa: F401

from lora_wise.cli.dataset import COMMANDS
from lora_wise.cli.tools import run
from lora_wise.dataset.build import read_manifest


def group() -> click.Group:
    cli = click.Group("lora-wise")
    for command in COMMANDS:
        cli.add_command(command)
    return cli


def test_build_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich would wrap the table at 80
    make_factory(tmp_path / "factory", n_micro=2, sizes=(1, 10), steps=(100, 200))
    code = run(
        group(), ["build", str(tmp_path / "factory"), str(tmp_path / "ds"), "--steps", "200", "--json"]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["configs"]) == {"medium-tiny_sd-r8"}
    assert read_manifest(tmp_path / "ds")["configs"]["medium-tiny_sd-r8"]["steps"] == [200]
    assert run(group(), ["build", str(tmp_path / "factory"), str(tmp_path / "ds"), "--weights"]) == 0
    assert "medium-tiny_sd-r8-weights" in capsys.readouterr().out


def test_import_upstream_from_a_local_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [(size, f"n{k}", random_lora(rng, 8, size)) for k in range(3) for size in (1, 2)]
    (tmp_path / "release").mkdir()
    write_upstream_parquet(tmp_path / "release" / "low_8-00000.parquet", rows)
    code = run(
        group(),
        [
            "import-upstream",
            str(tmp_path / "release"),
            "--config",
            "low_8",
            "--out",
            str(tmp_path / "ds"),
            "--json",
        ],
    )
    assert code == 0
    entry = json.loads(capsys.readouterr().out)["low-sd15-r8"]
    assert sum(s["rows"] for s in entry["splits"].values()) == 6


def test_bad_input_exits_2_and_usage_errors_exit_4(tmp_path, capsys):
    assert run(group(), ["build", str(tmp_path / "nothing"), str(tmp_path / "ds")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert (
        run(group(), ["import-upstream", str(tmp_path), "--config", "mid_7", "--out", str(tmp_path / "ds")])
        == 2
    )
    assert run(group(), ["publish", str(tmp_path)]) == 4  # --repo-id missing
    assert run(group(), ["build", str(tmp_path), str(tmp_path / "ds"), "--steps", "x"]) == 4
