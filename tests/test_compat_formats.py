"""Files written by earlier releases still load: crawl states, banks, datasets and factory sidecars.

``tests/data/crawl-state-0.1.db`` is a real state written by release 0.1.0's ``lora-scan crawl list``
(four local targets: a tiny-sd LoRA, a safetensors file without LoRA layers, a pickle, a missing
file), with its machine paths replaced by ``/data/audit``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq

from lora_wise.cli.tools import run
from lora_wise.estimation.bank import BANKS_DIR, load_bank_file
from lora_wise.factory.snapshots import Sidecar
from scanner.cli import cli
from scanner.crawl.state import CrawlState

DATA = Path(__file__).parent / "data"


def test_a_crawl_state_of_release_0_1_reads_and_reports(tmp_path):
    state = tmp_path / "old.db"
    shutil.copy(DATA / "crawl-state-0.1.db", state)
    with CrawlState(state, create=False) as s:
        assert s.counts() == {"ok": 1, "no-lora": 1, "unsafe": 1, "error": 1}
        ok = s.row("example.safetensors")
        assert ok.result[0]["backbone"] == "tiny-sd" and ok.result[0]["layers"] == 128
    out = tmp_path / "report"
    assert run(cli, ["report", str(state), "--out", str(out)]) == 0
    rows = pq.read_table(out / "reports.parquet").to_pylist()
    assert sorted(r["status"] for r in rows) == ["error", "no-lora", "ok", "unsafe"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["targets"] == 4


def test_the_packaged_bank_of_release_0_1_loads():
    bank = load_bank_file(BANKS_DIR / "tiny-sd-r8.safetensors")
    assert bank.name and len(bank.table.model_id) > 500


def test_a_factory_sidecar_of_release_0_1_reads_as_a_typed_sidecar():
    """``tests/data/sidecar-0.1.json``: the sidecar of the bundled example until it became a v2 LoRA,
    written by release 0.1.0's trainer."""
    sidecar = Sidecar.read(DATA / "sidecar-0.1.json")
    assert sidecar.config == "low-tiny_sd-r8" and sidecar.dataset_size == 4 and sidecar.step == 1200
    assert Sidecar.from_dict(sidecar.to_dict()) == sidecar
