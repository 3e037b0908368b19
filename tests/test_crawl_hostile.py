"""One bad item never stops a batch (issue 15, families 4-5; issue 12 section 5): a target that hangs
or eats memory costs one ``error`` row, a malformed search item one ``error`` row, a lone surrogate or
a hand-edited state never breaks the report, permanent faults are tried once, and every scanned
file has its SHA-256 in the state and the report."""

import json
import os
import sqlite3
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from crawl_helpers import FAST, civitai_model, civitai_stand_in, redirect_temp, rows, serve_civitai_search
from safetensors.numpy import save_file
from sources_helpers import LoopbackServer, Reply, lora_bytes, sha256, trickle_server, write_lora

from lora_wise.cli.tools import run
from scanner.cli import cli
from scanner.crawl import CrawlOptions, crawl
from scanner.crawl.dispatch import Limits
from scanner.crawl.listing import TargetsFile
from scanner.crawl.listing_civitai import CivitaiSearch
from scanner.crawl.report import write_report
from scanner.crawl.state import Candidate, CrawlState
from scanner.crawl.table import base_model_verdict, family_of


def options(**kw):
    return CrawlOptions(
        **{"jobs": 2, "progress": False, "policy": FAST, "backoff": 0.05, "attempts": 3, **kw}
    )


def listed(folder, lines):
    path = folder / "targets.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def big_lora(path, width=640 * 1024):
    """A real kohya LoRA of ~84 MB: reading it needs more than a tight memory limit allows."""
    rng = np.random.default_rng(0)
    tensors = {}
    for b in range(4):
        key = f"lora_unet_down_blocks_{b}_attentions_0_proj_in"
        tensors[f"{key}.lora_down.weight"] = rng.normal(size=(8, width)).astype(np.float32)
        tensors[f"{key}.lora_up.weight"] = rng.normal(size=(320, 8)).astype(np.float32)
        tensors[f"{key}.alpha"] = np.array(8.0, dtype=np.float32)
    save_file(tensors, str(path))
    return path


def test_a_target_that_hangs_costs_one_error_row_and_the_crawl_finishes(tmp_path):
    good = [write_lora(tmp_path / f"g{i}.safetensors", seed=i) for i in range(3)]
    with trickle_server(lora_bytes(), every=0.5) as url:  # its header read alone would take minutes
        lines = [good[0], f"{url}/hang.safetensors", good[1], good[2]]
        started = time.monotonic()
        summary = crawl(
            tmp_path / "s.db", TargetsFile(listed(tmp_path, lines)), options(limits=Limits(seconds=3))
        )
        took = time.monotonic() - started
    got = rows(tmp_path / "s.db")
    hang = got[f"{url}/hang.safetensors"]
    assert hang["status"] == "error" and "3 s limit per target" in hang["error"] and hang["attempts"] == 1
    assert summary.counts == {"ok": 3, "error": 1}
    assert took < 60  # the limit, not the server, decides (the server alone: 25 min)


def test_a_target_over_the_memory_limit_costs_one_error_row(tmp_path):
    good = write_lora(tmp_path / "good.safetensors")
    big = big_lora(tmp_path / "big.safetensors")
    summary = crawl(
        tmp_path / "s.db",
        TargetsFile(listed(tmp_path, [big, good])),
        options(limits=Limits(seconds=120, memory=48 * 1024**2)),  # a scan maps the 15 MB bank too
    )
    got = rows(tmp_path / "s.db")
    assert got[str(big)]["status"] == "error" and "memory" in got[str(big)]["error"].lower()
    assert got[str(good)]["status"] == "ok", got[str(good)]["error"]
    assert summary.counts == {"ok": 1, "error": 1}


@pytest.fixture
def civitai(tmp_path, monkeypatch):
    temp = redirect_temp(tmp_path, monkeypatch)
    with civitai_stand_in(monkeypatch) as server:
        server.temp = temp
        yield server


def test_a_malformed_search_item_is_one_error_row_and_the_listing_goes_on(civitai, tmp_path):
    models = [civitai_model(civitai, i, 100 + i, lora_bytes(seed=i)) for i in range(1, 5)]
    models[1]["creator"] = "x"  # an object in the API: a string here
    models[2]["modelVersions"] = "x"
    models.insert(3, ["not", "a", "model"])
    serve_civitai_search(civitai, models, page=2)
    summary = crawl(tmp_path / "s.db", CivitaiSearch(policy=FAST), options())
    got = rows(tmp_path / "s.db")
    assert got["civitai:1@101"]["status"] == "ok" and got["civitai:4@104"]["status"] == "ok"
    assert got["civitai:2"]["status"] == "error" and "creator" in got["civitai:2"]["error"]
    assert got["civitai:3"]["status"] == "error" and "modelVersions" in got["civitai:3"]["error"]
    [odd] = [t for t in got if t.startswith("civitai-search:")]
    assert got[odd]["status"] == "error" and summary.listing_error is None
    again = crawl(tmp_path / "s.db", CivitaiSearch(policy=FAST), options(relist=True))  # reruns go on too
    assert again.listing_error is None and again.counts == summary.counts


def test_a_lone_surrogate_in_a_model_name_never_breaks_the_report(civitai, tmp_path):
    model = civitai_model(civitai, 1, 101, lora_bytes())
    body = json.dumps({"items": [model], "metadata": {}}).replace('"Model 1"', '"bad \\ud800 name"')
    civitai.route("/api/v1/models", Reply(200, body.encode(), {"Content-Type": "application/json"}))
    crawl(tmp_path / "s.db", CivitaiSearch(policy=FAST), options())
    summary = write_report([tmp_path / "s.db"], tmp_path / "r")
    assert summary["by_status"] == {"ok": 1}
    assert pq.read_table(tmp_path / "r" / "reports.parquet").column("name").to_pylist() == ["bad \ufffd name"]
    assert run(cli, ["report", str(tmp_path / "s.db"), "--out", str(tmp_path / "r2")]) == 0


def test_a_hand_edited_state_gives_error_rows_or_one_clear_error(tmp_path):
    state = tmp_path / "s.db"
    with CrawlState(state) as st:
        st.add([Candidate(f"t{i}", "list") for i in range(6)])
    db = sqlite3.connect(state)
    db.executescript("""
        UPDATE targets SET status = 'weird' WHERE target = 't0';
        UPDATE targets SET status = 'ok', result = '{not json' WHERE target = 't1';
        UPDATE targets SET status = 'ok', result = '[1, "x"]', listing = '[]' WHERE target = 't2';
        UPDATE targets SET status = 'ok', result = '[{"source": "x", "estimate": [], "rank": 1e999}]'
            WHERE target = 't3';
        UPDATE targets SET attempts = 'x', bytes = -5, updated = 'y', error = 7 WHERE target = 't4';
        UPDATE targets SET status = 'ok', header = '[{"declared": "x", "size": "big"}]' WHERE target = 't5';
    """)
    db.commit()
    db.close()
    assert run(cli, ["report", str(state), "--out", str(tmp_path / "r")]) == 0
    table = {r["target"]: r for r in pq.read_table(tmp_path / "r" / "reports.parquet").to_pylist()}
    assert table["t0"]["status"] == "error" and "unknown status" in table["t0"]["error"]
    assert "result is not JSON" in table["t1"]["error"] and "list of objects" in table["t2"]["error"]
    assert table["t3"]["rank"] is None and table["t4"]["attempts"] == 0
    # a rerun of the crawl on it goes on: the pending rows are scanned (and fail as the non-targets they are)
    summary = crawl(state, None, options())
    assert "pending" not in summary.counts
    broken = tmp_path / "broken.db"
    sqlite3.connect(broken).executescript(
        "CREATE TABLE targets (target TEXT); CREATE TABLE meta (key, value);"
    )
    assert run(cli, ["report", str(broken), "--out", str(tmp_path / "r3")]) == 2


def test_permanent_faults_are_tried_once_and_transient_ones_retried(tmp_path):
    with LoopbackServer() as server:
        server.route("/gone.safetensors", Reply(404, b"gone"))
        server.route("/bad.safetensors", Reply(400, b"no"))
        server.route("/html.safetensors", Reply(200, b"<html>not safetensors</html>" * 10))
        server.route("/loop.safetensors", Reply(302, b"", {"Location": "/loop.safetensors"}, ranges=False))
        server.route("/busy.safetensors", Reply(503, b"", {"Retry-After": "0"}), Reply(200, lora_bytes()))
        names = ["gone", "bad", "html", "loop", "busy"]
        crawl(
            tmp_path / "s.db",
            TargetsFile(listed(tmp_path, [f"{server.url}/{n}.safetensors" for n in names])),
            options(),
        )
        got = {t.rsplit("/", 1)[1].split(".")[0]: r for t, r in rows(tmp_path / "s.db").items()}
        for name in ("gone", "bad", "html", "loop"):
            assert got[name]["status"] == "error" and got[name]["attempts"] == 1, (name, got[name]["error"])
        assert len(server.seen("/gone")) == 1 and len(server.seen("/bad")) == 1
        assert got["busy"]["status"] == "ok" and len(server.seen("/busy", "GET")) >= 2


def test_every_scanned_file_has_its_sha256_in_the_state_and_the_report(tmp_path, monkeypatch):
    local = write_lora(tmp_path / "sub" / "local.safetensors", seed=1)
    data = lora_bytes(seed=2)
    monkeypatch.chdir(tmp_path / "sub")  # the list names the local file relative to itself, not to here
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "local.safetensors").symlink_to(local)
    with LoopbackServer() as server:
        server.route("/remote.safetensors", Reply(200, data))
        listed_file = tmp_path / "lists" / "targets.txt"
        listed_file.write_text(f"local.safetensors\n{server.url}/remote.safetensors\n")
        crawl(tmp_path / "s.db", TargetsFile(listed_file), options())
    write_report([tmp_path / "s.db"], tmp_path / "r")
    table = pq.read_table(tmp_path / "r" / "reports.parquet").to_pylist()
    assert {r["status"] for r in table} == {"ok"}
    assert sorted(r["sha256"] for r in table) == sorted([sha256(local.read_bytes()), sha256(data)])


def test_the_declared_base_model_is_kept_when_the_weights_agree_and_a_conflict_is_flagged():
    assert family_of("SD 1.5") == "sd15" and family_of("SDXL 1.0") == "sdxl" and family_of("Pony") == "sdxl"
    assert family_of("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd15" and family_of("Other") is None
    assert base_model_verdict("SD 1.5", "sd15") == ("SD 1.5", None)
    assert base_model_verdict("Some new model", "sd15") == ("Some new model", None)  # nothing to compare
    assert base_model_verdict(None, "sdxl") == ("sdxl", None)
    assert base_model_verdict("SDXL 1.0", "sd15") == ("sd15", "declared SDXL 1.0, but the weights are sd15")


def test_a_fifo_in_a_list_is_refused_without_opening_it(tmp_path):
    good = write_lora(tmp_path / "good.safetensors")
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: never
    summary = crawl(tmp_path / "s.db", TargetsFile(listed(tmp_path, [fifo, good])), options())
    got = rows(tmp_path / "s.db")
    assert got[str(fifo)]["status"] == "error" and "not a regular file" in got[str(fifo)]["error"]
    assert summary.counts == {"ok": 1, "error": 1}
