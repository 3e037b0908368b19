"""A bank is pretrained: it predicts with numpy on stored state, exactly as the scikit-learn
estimators fitted on its references do; older banks without that state still load; a scan
imports no scikit-learn; the advice without a bank names the right backbone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from estimator_helpers import synthetic_table
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lora_wise.dataset.upstream import no_bank_advice
from lora_wise.estimation.bank import (
    BANKS_DIR,
    HEADER_KEY,
    BankHeader,
    fit_bank,
    load_bank_file,
    save_bank,
)
from lora_wise.estimation.estimators import Applicability, DSiRe, SizeInterval
from lora_wise.spectra.compute import Spectra

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "scanner" / "data" / "example.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    table = synthetic_table(n_micro=8, seed=51, steps=(300, 1200))
    path = save_bank(
        fit_bank(table, params={"coverage": 0.8}), tmp_path_factory.mktemp("b") / "tiny-sd-r8.safetensors"
    )
    return path


def _targets(n: int = 12) -> list[Spectra]:
    fresh = synthetic_table(n_micro=2, seed=52, steps=(300, 1200))
    ones = np.ones(len(fresh.layers), dtype=bool)
    return [Spectra(fresh.layers, fresh.a[i], fresh.b[i], fresh.ba[i], fresh.fro[i], ones) for i in range(n)]


def _without_state(path: Path, out: Path) -> Path:
    """The file as a bank written before the fitted state was stored: same tensors, no 'fitted'."""
    with safe_open(str(path), framework="numpy") as f:
        header = json.loads(f.metadata()[HEADER_KEY])
    header.pop("fitted")
    save_file(load_file(str(path)), str(out), metadata={HEADER_KEY: json.dumps(header)})
    return out


def test_the_loaded_bank_answers_exactly_as_the_sklearn_estimators_fitted_on_its_references(saved):
    bank = load_bank_file(saved)
    targets = _targets()
    for step in bank.steps:
        refs = bank.table.subset(bank.table.step == step)
        dsire = DSiRe(kinds=("a", "b", "ba")).fit(refs)
        interval = SizeInterval(kinds=("a", "b", "ba"), coverage=0.8).fit(refs)
        app = Applicability(kinds=("a", "b", "ba")).fit(refs)
        sizes, votes = dsire.predict_with_votes(targets)
        est, lo, hi = interval.predict_interval(targets)
        scores = app.score_samples(targets)
        for i, target in enumerate(targets):
            got = bank.estimate(target, step=step)
            assert got.size == sizes[i] and list(got.votes.values()) == votes[i].tolist()
            assert (got.estimate, got.low, got.high) == (max(est[i], 1.0), max(lo[i], 1.0), max(hi[i], 1.0))
            assert got.applicability == scores[i] and got.references == len(refs)


def test_a_bank_without_stored_state_loads_and_fits_it_to_the_same_answers(saved, tmp_path, capfd):
    old = load_bank_file(_without_state(saved, tmp_path / "old.safetensors"))
    assert old.header.fitted == {}
    new = load_bank_file(saved)
    for target in _targets(4):
        assert old.estimate(target).as_dict() == new.estimate(target).as_dict()
    assert "holds no fitted state" in capfd.readouterr().err  # the slow path says why it takes seconds


def test_the_packaged_bank_loads_with_and_without_its_state(tmp_path):
    from lora_wise import read_lora

    packaged = BANKS_DIR / "tiny-sd-r8.safetensors"
    bank = load_bank_file(packaged)
    assert set(bank.header.fitted) == {str(s) for s in bank.steps}
    weights = read_lora(EXAMPLE)
    pretrained = bank.estimate(weights, step=1200)
    older = load_bank_file(_without_state(packaged, tmp_path / "tiny-sd-r8.safetensors"))
    assert older.estimate(weights, step=1200).as_dict() == pretrained.as_dict()


@pytest.mark.parametrize("damage", [
    lambda fitted: fitted["1200"]["applicability"].pop("scale"),
    lambda fitted: fitted["1200"]["applicability"]["reference_stats"].pop(),
    lambda fitted: fitted["300"]["interval"]["model"].update(coef=[[1.0]]),
    lambda fitted: fitted["300"]["interval"].update(quantiles="wide"),
    lambda fitted: fitted["300"]["interval"]["model"].update(base="guess"),
])  # fmt: skip
def test_a_malformed_stored_state_is_refused_at_load_with_one_line(saved, tmp_path, damage):
    from lora_wise.errors import BankError

    with safe_open(str(saved), framework="numpy") as f:
        header = json.loads(f.metadata()[HEADER_KEY])
    damage(header["fitted"])
    path = tmp_path / "bad.safetensors"
    save_file(load_file(str(saved)), str(path), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.raises(BankError, match="bad.safetensors: malformed fitted state") as info:
        load_bank_file(path)
    assert "\n" not in str(info.value)


def test_estimate_as_dict_is_json_with_the_bank_summary_and_its_self_check():
    from lora_wise import read_lora

    est = load_bank_file(BANKS_DIR / "tiny-sd-r8.safetensors").estimate(read_lora(EXAMPLE), step=1200)
    data = json.loads(json.dumps(est.as_dict()))
    assert data == est.as_dict()
    assert data["bank"]["name"] == "tiny-sd-r8" and data["bank"]["steps"] == [600, 1200]
    assert data["bank"]["models"] * len(data["bank"]["steps"]) == data["bank"]["snapshots"]
    assert data["bank"]["self_check"]["step"] == 1200 and sum(data["votes"].values()) == 3 * 128


@pytest.mark.parametrize("change, message", [
    ({"rank": 0}, "'rank' must be a positive integer"),
    ({"layers": []}, "'layers'"),
    ({"steps": "all"}, "'steps'"),
    ({"fitted": {"77": {}}}, "'fitted'"),
])  # fmt: skip
def test_the_header_is_validated_once_when_made(saved, change, message):
    with safe_open(str(saved), framework="numpy") as f:
        data = json.loads(f.metadata()[HEADER_KEY])
    assert BankHeader.from_json(json.dumps(data)).name == "tiny-sd-r8"
    with pytest.raises(Exception, match=message):
        BankHeader.from_json(json.dumps(data | change))


SCAN_IMPORTS = """
import json, sys
import scanner.cli  # the command's own modules too
from scanner.example import scan_example
report = scan_example()
heavy = sorted(m for m in ("sklearn", "scipy", "pandas", "torch") if m in sys.modules)
print(json.dumps({"size": report.estimate.size, "step": report.estimate.step, "modules": heavy}))
"""


def test_scanning_the_bundled_example_imports_no_scikit_learn_nor_torch(tmp_path):
    """The scan path is numpy work: a torch-free reader and a pretrained bank."""
    env = {"PYTHONPATH": str(ROOT), "LORA_WISE_BANKS": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", SCAN_IMPORTS], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["size"] >= 1 and out["step"] == 1200
    assert not set(out["modules"]) & {"sklearn", "scipy", "pandas", "torch"}, out["modules"]
    assert "fitted state" not in done.stderr  # the packaged bank is pretrained: nothing is fitted


@pytest.mark.parametrize("backbone, rank, expected", [
    ("sd15", 32, "--config medium_32 "),
    ("sd15", 16, "--config medium_16 "),
    ("sd2", 32, "--config medium_32_2 "),
    ("sd2", 16, "`backbones: [sd2]`"),
    ("sdxl", 32, "`backbones: [sdxl]`"),
    ("flux", 16, "none can be built yet"),
    ("tiny-sd-v2", 8, "(LoRA-WiSE publishes no tiny-sd-v2 models)"),
    ("sd2", 16, "LoRA-WiSE publishes sd2 models at rank 32 only"),
])  # fmt: skip
def test_no_bank_advice_names_the_backbone_and_rank(backbone, rank, expected):
    advice = no_bank_advice(backbone, rank)
    assert expected in advice
    assert "sd15" not in advice or backbone == "sd15"


def test_an_sd2_lora_without_a_bank_is_told_to_build_an_sd2_bank(tmp_path):
    from scanner.scan import scan

    rng = np.random.default_rng(0)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    tensors = {}
    for proj, k in (("to_q", 320), ("to_k", 1024), ("to_v", 1024)):  # SD2's 1024-wide cross-attention
        tensors[f"{block}.{proj}.lora_A.weight"] = rng.normal(size=(32, k)).astype(np.float32)
        tensors[f"{block}.{proj}.lora_B.weight"] = rng.normal(size=(320, 32)).astype(np.float32)
    save_file(tensors, str(tmp_path / "sd2.safetensors"))
    report = scan(str(tmp_path / "sd2.safetensors"), bank_dir=tmp_path / "empty")
    assert report.backbone == "sd2" and report.estimate is None
    (advice,) = [w for w in report.warnings if "no reference bank" in w]
    assert "medium_32_2" in advice and "medium-sd2-r32" in advice and "sd15" not in advice


def test_fit_bank_shows_its_stages_on_stderr_unless_quiet(tmp_path):
    from click.testing import CliRunner
    from estimator_helpers import write_factory_folder

    from lora_wise.cli.bank import fit_bank_command

    write_factory_folder(tmp_path / "factory", concepts=2, sizes=(1, 10), steps=(100,), rank=4)
    args = [str(tmp_path / "factory"), "--steps", "100", "--repeats", "1", "--json"]
    loud = CliRunner().invoke(fit_bank_command, [*args, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    stages = loud.stderr.splitlines()
    assert any("fitting the estimators at step 100" in line for line in stages)
    assert any("self-check at step 100" in line for line in stages) and len(stages) >= 4
    assert json.loads(loud.stdout)["name"] == "tiny-sd-r4"  # stdout stays machine-readable
    quiet = CliRunner().invoke(fit_bank_command, [*args, "--out", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert load_bank_file(tmp_path / "b" / "tiny-sd-r4.safetensors").header.fitted.keys() == {"100"}
