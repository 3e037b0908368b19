"""``scanner.scan`` end to end: local files, the Hub's offline cache, banks, refusals, the CLI contract."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from contract_helpers import valid_envelope
from estimator_helpers import write_factory_folder
from reader_helpers import write_kohya
from safetensors.numpy import save_file
from sources_helpers import hub_cache_repo, lora_bytes

from lora_wise.cli.tools import run
from lora_wise.estimation.bank import fit_bank, save_bank
from lora_wise.evaluation import table_from_factory
from scanner.cli import cli
from scanner.errors import TargetError
from scanner.scan import scan, scan_all


@pytest.fixture(scope="module")
def bank_and_heldout(tmp_path_factory):
    """A tiny-sd bank fitted on three concepts, and the files of a fourth, held-out concept."""
    root = tmp_path_factory.mktemp("scan")
    files = write_factory_folder(root / "factory", concepts=4, sizes=(1, 10, 20), steps=(100, 200), rank=4)
    table = table_from_factory(root / "factory")
    held = np.array(["concept-3" in m for m in table.micro_dataset])
    bank_dir = root / "banks"
    bank_dir.mkdir()
    save_bank(fit_bank(table.subset(~held)), bank_dir / "tiny-sd-r4.safetensors")
    return bank_dir, [f for f in files if "concept-3" in str(f)]


def test_scan_estimates_a_held_out_lora_with_its_bank(bank_and_heldout):
    bank_dir, heldout = bank_and_heldout
    target = next(f for f in heldout if "n0010" in str(f) and f.name == "step-00200.safetensors")
    report = scan(str(target), bank_dir=bank_dir, force_estimate=True)
    assert report.status == "ok", report.error
    assert report.backbone == "tiny-sd" and report.rank == 4 and report.layers == 128
    assert report.declared["unique_images"] == 10  # the sidecar the factory writes declares the truth
    assert report.bank["name"] == "tiny-sd-r4" and report.bank["sizes"] == [1, 10, 20]
    est = report.estimate
    assert est.size in (1, 10, 20) and sum(est.votes.values()) == 3 * 128
    assert est.low <= est.estimate <= est.high
    assert est.step == 200  # the declared step picks the nearest reference snapshots


def _sd15_like(path):
    """Two SD1.5-shaped layers (cross-attention input 768 wide): a backbone no packaged bank covers."""
    rng = np.random.default_rng(0)
    block = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    tensors = {}
    for proj, k in (("to_q", 320), ("to_k", 768)):
        tensors[f"{block}.{proj}.lora_A.weight"] = rng.normal(size=(4, k)).astype(np.float32)
        tensors[f"{block}.{proj}.lora_B.weight"] = rng.normal(size=(320, 4)).astype(np.float32)
    save_file(tensors, str(path))
    return path


def test_no_bank_for_the_backbone_means_no_number(tmp_path, bank_and_heldout):
    bank_dir, _ = bank_and_heldout
    report = scan(str(_sd15_like(tmp_path / "sd15.safetensors")), bank_dir=bank_dir)
    assert report.backbone == "sd15"
    assert report.status == "ok"
    assert report.estimate is None
    assert "no reference bank" in report.estimate_absent_reason
    assert report.bank is None
    assert any("build one with" in w for w in report.warnings)


def test_a_lora_unlike_every_reference_gets_no_number(tmp_path, bank_and_heldout):
    bank_dir, _ = bank_and_heldout
    report = scan(str(write_kohya(tmp_path / "random.safetensors", rank=4)), bank_dir=bank_dir)
    assert report.backbone == "tiny-sd" and report.bank["name"] == "tiny-sd-r4"
    assert report.estimate is None and "unlike every reference model" in report.estimate_absent_reason
    forced = scan(str(tmp_path / "random.safetensors"), bank_dir=bank_dir, force_estimate=True)
    assert forced.estimate is not None and forced.estimate.estimate >= 1.0


def test_rank_mismatch_refuses_rather_than_guessing(tmp_path, bank_and_heldout):
    bank_dir, _ = bank_and_heldout
    files = write_factory_folder(tmp_path / "f", concepts=1, sizes=(1,), steps=(100,), rank=8)
    report = scan(str(files[0]), bank_dir=bank_dir)
    assert report.estimate is None and "rank 8" in report.estimate_absent_reason


def test_pickle_is_refused_and_never_loaded(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.ckpt"
    evil.write_bytes(b"\x80\x04\x95" + f"os.system touch {marker}".encode())
    report = scan(str(evil))
    assert report.status == "unsafe" and report.exit_code == 1  # a finding
    assert not marker.exists()


def test_garbage_file_is_an_error_report_not_an_exception(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    report = scan(str(bad))
    assert report.status == "error" and report.exit_code == 2 and "bad.safetensors" in report.error


def test_unparseable_target_is_a_usage_error():
    with pytest.raises(TargetError):
        scan_all("ftp://nowhere/x")
    assert run(cli, ["ftp://nowhere/x"]) == 4


def test_hub_repo_from_the_offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    hub_cache_repo(
        cache, "someone/style-lora", {"pytorch_lora_weights.safetensors": lora_bytes("kohya", rank=4)}
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    reports = scan_all("someone/style-lora", progress=False)
    assert len(reports) == 1 and reports[0].status == "ok"
    assert (
        reports[0].source["kind"] == "hub" and reports[0].source["file"] == "pytorch_lora_weights.safetensors"
    )
    assert reports[0].format.startswith("kohya")


def test_cli_json_and_exit_codes(tmp_path, bank_and_heldout):
    bank_dir, heldout = bank_and_heldout
    runner = CliRunner()
    out = runner.invoke(cli, [str(heldout[0]), "--json", "--bank-dir", str(bank_dir), "--force-estimate"])
    assert out.exit_code == 0, out.output
    (data,) = valid_envelope(out.stdout)["reports"]
    assert data["status"] == "ok" and data["estimate"]["label"].startswith("about ")
    assert set(data["estimate"]["votes"]) <= {"1", "10", "20"}
    evil = tmp_path / "x.pt"
    evil.write_bytes(b"PK\x03\x04rest")
    assert run(cli, [str(evil), "--json"]) == 1
    empty = tmp_path / "empty.safetensors"
    header = json.dumps({"__metadata__": {"a": "b"}}).encode()
    empty.write_bytes(len(header).to_bytes(8, "little") + header)
    assert run(cli, [str(empty)]) == 3
    assert run(cli, ["inspect", str(tmp_path / "missing.safetensors")]) == 4
