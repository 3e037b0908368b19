"""Reference banks: safetensors + JSON round trip, strict loading, the registry, choosing a bank."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from estimator_helpers import synthetic_table
from safetensors.numpy import load_file, save_file

from lora_wise.errors import BankError
from lora_wise.estimation.bank import (
    HEADER_KEY,
    available_banks,
    bank_for,
    fit_bank,
    load_bank,
    load_bank_file,
    quote_self_check,
    save_bank,
)
from lora_wise.estimation.bank import (
    estimate as estimate_lora,
)
from lora_wise.lora.weights import DeclaredTraining
from lora_wise.spectra.compute import Spectra


@pytest.fixture(scope="module")
def table():
    return synthetic_table(n_micro=12, seed=31, steps=(300, 1200))


@pytest.fixture(scope="module")
def bank(table):
    return fit_bank(table, recipe={"lr": 1e-4, "batch_size": 1}, params={"coverage": 0.8})


@pytest.fixture()
def bank_dir(tmp_path, bank, table):
    save_bank(bank, tmp_path / "tiny-sd-r8.safetensors")
    r16 = synthetic_table(n_micro=4, seed=32, rank=16)
    save_bank(fit_bank(r16), tmp_path / "tiny-sd-r16.safetensors")
    return tmp_path


def _spectra_of(table, i) -> Spectra:
    return Spectra(
        table.layers, table.a[i], table.b[i], table.ba[i], table.fro[i], np.ones(len(table.layers), bool)
    )


def test_round_trip_keeps_header_references_and_answers(tmp_path, bank, table):
    path = save_bank(bank, tmp_path / "b.safetensors")
    loaded = load_bank_file(path)
    for key in (
        "backbone",
        "rank",
        "recipe",
        "steps",
        "sizes",
        "layers",
        "width",
        "kinds",
        "version",
        "created_by",
    ):
        assert getattr(loaded.header, key) == getattr(bank.header, key)
    assert loaded.header.steps == [300, 1200] and loaded.header.sizes == [1, 10, 20, 30, 40, 50]
    for kind in ("a", "b", "ba", "fro"):
        np.testing.assert_array_equal(loaded.table.matrix(kind), bank.table.matrix(kind))
    np.testing.assert_array_equal(loaded.table.micro_dataset, bank.table.micro_dataset)
    target = _spectra_of(synthetic_table(n_micro=1, seed=40), 3)
    assert loaded.estimate(target, step=1200).as_dict() == bank.estimate(target, step=1200).as_dict()


def test_the_file_is_plain_safetensors_with_a_json_header(tmp_path, bank):
    path = save_bank(bank, tmp_path / "b.safetensors")
    tensors = load_file(str(path))
    assert set(tensors) == {"a", "b", "ba", "fro", "size", "step", "micro_dataset"}
    assert tensors["ba"].dtype == np.float32
    assert not list(tmp_path.glob("*.tmp*"))
    # readable by others under the usual umask (safetensors' save_file would leave it 0600)
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_estimate_uses_the_declared_step_or_the_best_matching_snapshot(bank):
    fresh = synthetic_table(n_micro=1, seed=41, steps=(300, 1200))
    # a mid-range size: at the ends of the range, size and step are confounded (fewer steps
    # look like more images), so a size-1 model at step 300 may best match step 1200
    early = _spectra_of(fresh, int(np.flatnonzero((fresh.step == 300) & (fresh.size == 20))[0]))
    assert bank.estimate(early, step=350).step == 300
    assert bank.estimate(early, step=350).step_source == "declared"
    guessed = bank.estimate(early)
    assert (guessed.step, guessed.step_source) == (300, "best-match")
    assert bank.estimate(early, step=1200).applicability < guessed.applicability


def test_estimate_of_a_known_kind_of_model(bank):
    fresh = synthetic_table(n_micro=2, seed=42)
    results = [bank.estimate(_spectra_of(fresh, i), step=1200) for i in range(len(fresh))]
    accuracy = np.mean([r.size == n for r, n in zip(results, fresh.size, strict=True)])
    assert accuracy > 0.4
    for r in results:
        assert r.low <= r.estimate <= r.high
        assert sum(r.votes.values()) == 3 * 128
        assert 0 < r.applicability <= 1 and r.missing_fraction == 0.0


def _corrupt(path, tensors=None, header=None, drop=None):
    data = load_file(str(path))
    data.update(tensors or {})
    for key in drop or ():
        data.pop(key)
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = dict(f.metadata())
    if header is not None:
        meta = header(meta)
    save_file(data, str(path), metadata=meta)


def _edit_header(**changes):
    def edit(meta):
        h = json.loads(meta[HEADER_KEY])
        h.update(changes)
        return {HEADER_KEY: json.dumps(h)}

    return edit


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(b"\x00" * 64), "not a readable safetensors bank"),
        (lambda p: _corrupt(p, header=lambda m: {}), "no 'lora_wise_bank' header"),
        (lambda p: _corrupt(p, header=lambda m: {HEADER_KEY: "{not json"}), "not valid JSON"),
        (lambda p: _corrupt(p, header=_edit_header(version=99)), "format version 99"),
        (lambda p: _corrupt(p, header=_edit_header(kinds=["z"])), "kinds"),
        (lambda p: _corrupt(p, header=_edit_header(width=5)), "expected"),
        (lambda p: _corrupt(p, header=_edit_header(sizes=[1, 2])), "disagree"),
        (lambda p: _corrupt(p, drop=["fro"]), "lacks tensors"),
        (
            lambda p: _corrupt(p, tensors={"ba": np.full((24 * 6, 128, 8), np.nan, dtype=np.float32)}),
            "finite",
        ),
        (
            lambda p: _corrupt(p, tensors={"micro_dataset": np.full(24 * 6, 99, dtype=np.int64)}),
            "out of range",
        ),
    ],
)
def test_malformed_banks_are_refused_with_one_clear_line(tmp_path, bank, damage, message):
    path = save_bank(bank, tmp_path / "b.safetensors")
    damage(path)
    with pytest.raises(BankError, match=message) as info:
        load_bank_file(path)
    assert "\n" not in str(info.value)


def test_missing_file_and_bad_tables(tmp_path, table):
    with pytest.raises(BankError, match="no bank file"):
        load_bank_file(tmp_path / "nope.safetensors")
    mixed = synthetic_table(n_micro=2, seed=1)
    mixed.rank[0] = 16
    with pytest.raises(BankError, match="one rank"):
        fit_bank(mixed)
    with pytest.raises(BankError, match="no reference snapshot"):
        fit_bank(table, steps=[5])


def test_registry_lists_and_loads_by_backbone_and_rank(bank_dir):
    names = sorted(b["name"] for b in available_banks(bank_dir))
    assert names == ["tiny-sd-r16", "tiny-sd-r8"]
    (bank_dir / "junk.safetensors").write_bytes(b"junk")  # not a bank: skipped, not fatal
    assert len(available_banks(bank_dir)) == 2
    assert load_bank("tiny-sd", directory=bank_dir).header.rank == 8
    assert load_bank("tiny-sd", rank=16, directory=bank_dir).header.rank == 16
    with pytest.raises(BankError, match="no reference bank for sdxl .*available: tiny-sd-r16, tiny-sd-r8"):
        load_bank("sdxl", directory=bank_dir)


def test_bank_for_picks_the_fitting_bank_or_says_why_not(bank_dir, table):
    target = _spectra_of(table, 0)
    chosen, reason = bank_for(target, backbone="tiny-sd", directory=bank_dir)
    assert chosen is not None and chosen.name == "tiny-sd-r8" and "100%" in reason
    declared = DeclaredTraining(base_model_version="tiny-sd")
    assert bank_for(target, declared=declared, directory=bank_dir)[0].name == "tiny-sd-r8"
    none, why = bank_for(target, backbone="sdxl", directory=bank_dir)
    assert none is None and "no reference bank for backbone sdxl" in why
    r4 = Spectra(target.layers, target.a.copy(), target.b, target.ba, target.fro, target.low_rank)
    r4.a[:, 4:] = 0.0
    none, why = bank_for(r4, backbone="tiny-sd", directory=bank_dir)
    assert none is None and "rank 4" in why
    few = Spectra(
        target.layers[:10],
        target.a[:10],
        target.b[:10],
        target.ba[:10],
        target.fro[:10],
        target.low_rank[:10],
    )
    none, why = bank_for(few, backbone="tiny-sd", directory=bank_dir)
    assert none is None and "8%" in why


def test_packaged_registry_is_readable():
    # whatever ships (possibly nothing yet) must parse
    for info in available_banks():
        assert load_bank_file(info["path"]).name == info["name"]


@pytest.mark.parametrize(
    "checks",
    [
        None,
        [],
        "text",
        [{"step": 1200, "method": "dsire", "accuracy": "high"}],
        [{"step": 1200, "method": "dsire"}],
        [7],
    ],
)
def test_a_missing_or_malformed_self_check_is_quoted_as_none(checks):
    assert quote_self_check(checks, 1200) is None


def test_fit_bank_command_on_a_factory_folder_of_real_loras(tmp_path):
    from estimator_helpers import write_factory_folder

    from lora_wise import read_lora

    factory = tmp_path / "factory"
    files = write_factory_folder(factory, concepts=3, sizes=(1, 10, 20), steps=(100, 200), rank=4)
    from lora_wise.cli.app import cli
    from lora_wise.cli.tools import run

    def main(args):
        return run(cli, ["fit-bank", *args])

    assert main([str(factory), "--steps", "100,200", "--out", str(tmp_path / "banks"), "--repeats", "2"]) == 0
    (info,) = available_banks(tmp_path / "banks")
    assert (info["name"], info["steps"], info["sizes"]) == ("tiny-sd-r4", [100, 200], [1, 10, 20])
    header = load_bank_file(info["path"]).header
    assert header.recipe["learning_rate"] == 1e-4
    # the self-check travels in the header: what lora-scan quotes as the bank's accuracy
    assert {(c["step"], c["method"]) for c in header.self_check} == {
        (s, m) for s in (100, 200) for m in ("frobenius-nn", "dsire", "interval")}  # fmt: skip
    quoted = header.self_check_at(100)
    dsire = next(c for c in header.self_check if c["step"] == 100 and c["method"] == "dsire")
    assert quoted.dsire_accuracy == dsire["accuracy"]["mean"] and quoted.repeats == 2
    assert quoted.held_out_concepts == dsire["n_test"] and 0 <= quoted.interval_coverage <= 100
    assert header.self_check_at(300) is None  # no check at a step the bank does not hold
    weights = read_lora(files[0])  # the scanner's path: a real PEFT LoRA file, read and fingerprinted
    chosen, reason = bank_for(weights, directory=tmp_path / "banks")
    assert chosen is not None, reason
    result = chosen.estimate(weights, step=weights.declared.steps)
    assert result.size in (1, 10, 20) and result.step == 100 and result.missing_fraction == 0.0
    same, _ = estimate_lora(weights, directory=tmp_path / "banks")
    assert same.as_dict() == result.as_dict() and same.step_source == "declared"
    weights.backbone.name = "sdxl"
    none, why = estimate_lora(weights, directory=tmp_path / "banks")
    assert none is None and "sdxl" in why
    assert main([str(tmp_path / "nowhere")]) == 2


def test_user_bank_folder_is_searched_first_and_wins_by_name(bank_dir, monkeypatch):
    import json

    from click.testing import CliRunner

    from lora_wise.cli.bank import banks_command
    from lora_wise.estimation.bank import BANKS_DIR, bank_dirs

    monkeypatch.setenv("LORA_WISE_BANKS", str(bank_dir))
    assert bank_dirs() == [bank_dir, BANKS_DIR] and bank_dirs(bank_dir / "x") == [bank_dir / "x"]
    found = available_banks()
    assert [b["name"] for b in found][:2] == ["tiny-sd-r16", "tiny-sd-r8"]
    assert len({b["name"] for b in found}) == len(found)  # a packaged bank of the same name is shadowed
    assert load_bank("tiny-sd", 16).header.rank == 16
    listed = json.loads(CliRunner().invoke(banks_command, ["--json"]).stdout)
    assert [b["path"] for b in listed] == [b["path"] for b in found]
