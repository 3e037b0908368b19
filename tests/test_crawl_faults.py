"""Faults injected into a crawl (429 with Retry-After, 5xx, a stalled server, a cut body, a hash that
does not match, pickle and oversize files, garbage bytes, a broken search answer): each target ends
with a status and a reason, nothing is downloaded that the listing or header already refused, and the
crawl goes on to the end."""

import time

import pytest
from crawl_helpers import (
    FAST,
    civitai_model,
    civitai_stand_in,
    full_downloads,
    leftover,
    redirect_temp,
    rows,
    serve_civitai_search,
    silent_server,
)
from sources_helpers import LoopbackServer, Reply, lora_bytes

from lora_wise.cli.tools import run
from scanner.cli import cli
from scanner.crawl import CrawlOptions, crawl
from scanner.crawl.listing import TargetsFile
from scanner.crawl.listing_civitai import CivitaiSearch
from scanner.download import RetryPolicy


def options(**kw):
    return CrawlOptions(
        **{"jobs": 4, "progress": False, "policy": FAST, "backoff": 0.05, "attempts": 2, **kw}
    )


@pytest.fixture
def civitai(tmp_path, monkeypatch):
    temp = redirect_temp(tmp_path, monkeypatch)
    with civitai_stand_in(monkeypatch) as server:
        server.temp = temp
        yield server


@pytest.fixture
def silent():
    with silent_server() as url:
        yield url


def timed(replies):
    """A route answering ``replies`` in turn (the last repeats) and noting when each request came."""
    times = []

    def answer(seen):
        times.append(time.monotonic())
        return replies[min(len(times), len(replies)) - 1]

    answer.times = times
    return answer


def cut_after_header(data):
    """The header reads (Range from 0) are served; every full download is cut in the middle."""

    def answer(seen):
        if seen.headers.get("range", "").startswith("bytes=0-") and seen.headers["range"] != "bytes=0-":
            return Reply(200, data)
        return Reply(200, data, truncate_at=len(data) // 2, ranges=False)

    return answer


def test_every_fault_is_recorded_with_a_reason_and_the_crawl_completes(
    civitai, silent, tmp_path, monkeypatch
):
    stall_1s = RetryPolicy(
        attempts=2, base_wait=0.05, max_wait=5, stall=1.0
    )  # a stalled server times out in 1 s
    data = {i: lora_bytes(seed=i) for i in range(12)}
    rate = timed([Reply(429, b"slow down", {"Retry-After": "1"}), Reply(200, data[1])])
    models = [
        civitai_model(civitai, 1, 101, data[1], replies=[rate]),
        civitai_model(civitai, 2, 102, data[2], replies=[Reply(500, b"oops"), Reply(200, data[2])]),
        civitai_model(civitai, 3, 103, data[3], replies=[Reply(429, b"", {"Retry-After": "0"})]),
        civitai_model(civitai, 4, 104, data[4], download_url=f"{silent}/files/104"),
        civitai_model(civitai, 5, 105, data[5], replies=[cut_after_header(data[5])]),
        civitai_model(civitai, 6, 106, data[6], fmt="PickleTensor"),
        civitai_model(civitai, 7, 107, data[7], size_kb=5 * 1024 * 1024),
        civitai_model(civitai, 8, 108, data[8], published_sha256="0" * 64),
        civitai_model(
            civitai, 9, 109, b"this is no safetensors file at all", replies=[Reply(200, b"x" * 64)]
        ),
        civitai_model(civitai, 10, 110, data[10], replies=[Reply(404, b"gone")]),
        civitai_model(civitai, 11, 111, data[11]),
    ]
    serve_civitai_search(civitai, models, page=4)
    started = time.monotonic()
    summary = crawl(
        tmp_path / "faults.db", CivitaiSearch(policy=FAST), options(max_size=1024**3, policy=stall_1s)
    )
    assert time.monotonic() - started < 40
    got = {target.split("@")[0]: row for target, row in rows(tmp_path / "faults.db").items()}

    assert got["civitai:1"]["status"] == "ok"  # Retry-After honoured inside the request's retries
    assert rate.times[1] - rate.times[0] >= 0.95
    assert got["civitai:2"]["status"] == "ok"  # 500 then ok
    assert got["civitai:3"]["status"] == "failed" and "429" in got["civitai:3"]["error"]
    assert "gave up after 2 attempts" in got["civitai:3"]["error"] and got["civitai:3"]["attempts"] == 2
    assert got["civitai:4"]["status"] == "failed" and "timed out" in got["civitai:4"]["error"].lower()
    assert got["civitai:5"]["status"] == "failed" and "connection ended" in got["civitai:5"]["error"]
    assert got["civitai:6"]["status"] == "unsafe" and "pickle" in got["civitai:6"]["error"]
    assert got["civitai:7"]["status"] == "skipped" and "cap" in got["civitai:7"]["error"]
    assert got["civitai:8"]["status"] == "failed" and "SHA-256" in got["civitai:8"]["error"]
    assert got["civitai:9"]["status"] == "error" and "not a safetensors" in got["civitai:9"]["error"]
    assert got["civitai:9"]["attempts"] == 1  # a bad file is not retried
    assert got["civitai:10"]["status"] == "error" and "404" in got["civitai:10"]["error"]
    assert got["civitai:11"]["status"] == "ok"
    assert (
        sum(summary.counts.values()) == 11
        and "pending" not in summary.counts
        and "running" not in summary.counts
    )
    # refused by the listing: not one request for the file; refused by the header: no full download
    assert not civitai.seen("/api/download/files/106") and not civitai.seen("/api/download/files/107")
    assert full_downloads(civitai, "/api/download/files/109") == 0
    assert leftover(civitai.temp) == []


def test_a_long_retry_after_is_waited_between_tries_not_inside_one(civitai, tmp_path):
    data = lora_bytes(seed=1)
    rate = timed([Reply(429, b"", {"Retry-After": "1"}), Reply(200, data)])
    serve_civitai_search(civitai, [civitai_model(civitai, 1, 101, data, replies=[rate])])
    impatient = RetryPolicy(attempts=3, base_wait=0.05, max_wait=0.5)  # 1 s is over what a request waits
    summary = crawl(tmp_path / "r.db", CivitaiSearch(policy=FAST), options(policy=impatient, backoff=30))
    row = rows(tmp_path / "r.db")["civitai:1@101"]
    assert summary.counts == {"ok": 1} and row["attempts"] == 2
    assert 0.95 <= rate.times[1] - rate.times[0] < 10  # Retry-After, not the 30 s backoff


def test_url_over_the_cap_is_skipped_from_its_header_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with LoopbackServer() as server:
        big = lora_bytes(seed=3)
        server.route("/big.safetensors", Reply(200, big))
        server.route("/model.pt", Reply(200, b"\x80\x04never"))
        listed = tmp_path / "t.txt"
        listed.write_text(f"{server.url}/big.safetensors\n{server.url}/model.pt\n")
        crawl(tmp_path / "u.db", TargetsFile(listed), options(max_size=1000))
        got = rows(tmp_path / "u.db")
        assert got[f"{server.url}/big.safetensors"]["status"] == "skipped"
        assert got[f"{server.url}/model.pt"]["status"] == "unsafe"
        assert full_downloads(server, "/big.safetensors") == 0 and server.seen("/big.safetensors")
        assert not server.seen("/model.pt")


def test_a_broken_search_answer_ends_in_one_line_and_exit_2(civitai, tmp_path):
    civitai.route("/api/v1/models", Reply.json({"items": "not a list"}))
    assert run(cli, ["crawl", "civitai", "--state", str(tmp_path / "b.db"), "--quiet"]) == 2


def test_an_empty_search_exits_3_and_usage_errors_exit_4(civitai, tmp_path):
    civitai.route("/api/v1/models", Reply.json({"items": [], "metadata": {}}))
    assert run(cli, ["crawl", "civitai", "--state", str(tmp_path / "e.db"), "--quiet"]) == 3
    assert run(cli, ["crawl", "civitai", "--shard", "5/2", "--state", str(tmp_path / "e.db")]) == 4
    assert run(cli, ["crawl", "list", str(tmp_path / "missing.txt")]) == 4
    not_a_state = tmp_path / "junk.db"
    not_a_state.write_bytes(b"junk" * 100)
    assert run(cli, ["report", str(not_a_state)]) == 2


def test_a_second_crawl_on_the_same_state_is_refused(tmp_path):
    from scanner.crawl.state import exclusive

    listed = tmp_path / "t.txt"
    listed.write_text("# nothing yet\n")
    with exclusive(tmp_path / "busy.db"):
        assert run(cli, ["crawl", "list", str(listed), "--state", str(tmp_path / "busy.db"), "--quiet"]) == 2
    assert run(cli, ["crawl", "list", str(listed), "--state", str(tmp_path / "busy.db"), "--quiet"]) == 3
