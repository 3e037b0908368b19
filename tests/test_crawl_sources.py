"""``crawl`` from each source against loopback stand-ins serving real LoRA files: a Hub search, a
CivitAI search with cursor paging, a list file; the state they leave; a rerun that scans nothing again."""

import json

import huggingface_hub.constants
import pytest
from crawl_helpers import (
    FAST,
    civitai_model,
    civitai_stand_in,
    full_downloads,
    hub_model,
    leftover,
    lora_list,
    query,
    redirect_temp,
    rows,
    serve_civitai_search,
    serve_hub_search,
)
from sources_helpers import LoopbackServer, Reply, lora_bytes, write_lora

from lora_wise.cli.tools import run
from scanner.cli import cli
from scanner.crawl import CrawlOptions, crawl
from scanner.crawl.listing import TargetsFile
from scanner.crawl.listing_civitai import CivitaiSearch
from scanner.crawl.listing_hf import HubSearch

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def options(**kw):
    return CrawlOptions(**{"jobs": 2, "progress": False, "policy": FAST, "backoff": 0.01, **kw})


@pytest.fixture
def temp(tmp_path, monkeypatch):
    return redirect_temp(tmp_path, monkeypatch)


@pytest.fixture
def hub(tmp_path, monkeypatch, temp):
    with LoopbackServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest set it at import
        yield server


@pytest.fixture
def civitai(monkeypatch, temp):
    with civitai_stand_in(monkeypatch) as server:
        yield server


def test_hub_search_gives_one_target_per_lora_file_and_scans_them(hub, tmp_path, temp):
    style = lora_bytes(seed=1, metadata={"ss_num_train_images": "40"})
    models = [
        hub_model(
            hub,
            "alice/style",
            {"style.safetensors": style, "README.md": b"# card"},
            tags=["lora", f"base_model:adapter:{SD15}"],
        ),
        hub_model(
            hub,
            "bob/two",
            {
                "a.safetensors": lora_bytes(seed=2),
                "sub/b.safetensors": lora_bytes(seed=3, style="kohya"),
                "unet/diffusion_pytorch_model.safetensors": lora_bytes(seed=4),
            },
        ),
        hub_model(hub, "carol/pickles", {"lora.bin": b"\x80\x04not unpickled"}),
    ]
    serve_hub_search(hub, models, page=2)
    state = tmp_path / "hf.db"
    search = HubSearch(filters=("lora",), base_model=SD15, search="style", limit=10)
    summary = crawl(state, search, options())

    got = rows(state)
    assert set(got) == {
        "hf://alice/style/style.safetensors",
        "hf://bob/two/a.safetensors",
        "hf://bob/two/sub/b.safetensors",
        "carol/pickles",
    }
    assert (
        summary.counts == {"ok": 3, "unsafe": 1} and summary.listing["done"] and summary.listing_error is None
    )
    first = query(hub.seen("/api/models?")[0])
    assert set(first["filter"]) == {"lora", f"base_model:adapter:{SD15}"} and first["search"] == ["style"]
    assert set(first["expand"]) >= {"siblings", "sha", "tags"}
    assert len(hub.seen("/api/models?")) == 2  # the Link header's next page was followed

    alice = got["hf://alice/style/style.safetensors"]
    assert alice["listing"]["base_model"] == SD15
    [header] = alice["header"]
    assert header["tensors"] == 16 and header["declared"]["num_train_images"] == 40 and header["size"] > 0
    [report] = alice["result"]
    assert report["status"] == "ok" and report["format"] == "diffusers" and report["source"]["verified"]
    assert alice["bytes"] == len(style) and alice["attempts"] == 1
    # the pickle-only repo is decided by its listing: not a single request for its files
    assert "lora.bin" in got["carol/pickles"]["error"] and not hub.seen("/carol/pickles/")
    assert not hub.seen("/bob/two/resolve/main/unet/")  # a full checkpoint is not a LoRA candidate
    assert leftover(temp) == []  # per-task Hub caches and downloads deleted


def test_a_rerun_scans_nothing_again_and_lists_nothing_again(hub, tmp_path):
    models = [hub_model(hub, f"user/lora{i}", {"lora.safetensors": lora_bytes(seed=i)}) for i in range(3)]
    serve_hub_search(hub, models)
    state = tmp_path / "hf.db"
    crawl(state, HubSearch(limit=3), options())
    before = len(hub.requests)
    again = crawl(state, HubSearch(limit=3), options())
    assert again.counts == {"ok": 3} and len(hub.requests) == before
    relisted = crawl(state, HubSearch(limit=3), options(relist=True))
    assert relisted.counts == {"ok": 3}
    assert all(full_downloads(hub, f"/user/lora{i}/resolve/") == 1 for i in range(3))


def test_civitai_search_follows_the_cursor_and_keeps_the_listing(civitai, tmp_path, temp):
    data = {i: lora_bytes(seed=10 + i, style="kohya") for i in range(5)}
    models = [civitai_model(civitai, 100 + i, 200 + i, data[i]) for i in range(5)]
    serve_civitai_search(civitai, models, page=2)
    state = tmp_path / "civitai.db"
    search = CivitaiSearch(types=("LORA", "LoCon"), base_models=("SD 1.5",), query="style")
    summary = crawl(state, search, options())

    assert summary.counts == {"ok": 5}
    pages = [query(s) for s in civitai.seen("/api/v1/models?")]
    assert [p.get("cursor") for p in pages] == [None, ["2"], ["4"]]
    assert pages[0]["types"] == ["LORA", "LoCon"] and pages[0]["baseModels"] == ["SD 1.5"]
    assert pages[0]["query"] == ["style"] and pages[0]["limit"] == ["100"]
    assert civitai.seen("/api/v1/models?")[0].headers["authorization"] == "Bearer civitai-loopback-token"
    got = rows(state)["civitai:102@202"]
    assert got["listing"]["baseModel"] == "SD 1.5" and got["listing"]["file"]["sizeKB"] == pytest.approx(
        len(data[2]) / 1024
    )
    assert got["result"][0]["source"]["verified"] and got["result"][0]["format"] == "kohya"
    assert got["header"][0]["size"] == int(len(data[2]) / 1024 * 1024)
    assert leftover(temp) == []


def test_civitai_limit_counts_models_across_pages(civitai, tmp_path):
    models = [civitai_model(civitai, 100 + i, 200 + i, lora_bytes(seed=i)) for i in range(5)]
    serve_civitai_search(civitai, models, page=2)
    summary = crawl(tmp_path / "c.db", CivitaiSearch(limit=3), options())
    assert summary.targets == 3 and summary.listing["done"]
    assert [query(s)["limit"] for s in civitai.seen("/api/v1/models?")] == [["3"], ["1"]]


def test_civitai_listing_resumes_after_its_last_stored_page(civitai, tmp_path):
    models = [civitai_model(civitai, 100 + i, 200 + i, lora_bytes(seed=i)) for i in range(5)]
    serve_civitai_search(civitai, models, page=2)
    good = civitai.routes["/api/v1/models"]
    pages = iter([good, lambda seen: Reply(503, b"down")])
    civitai.route("/api/v1/models", lambda seen: (next(pages, None) or (lambda s: Reply(503, b"down")))(seen))
    state = tmp_path / "c.db"
    broken = crawl(state, CivitaiSearch(policy=FAST), options())
    assert "503" in broken.listing_error and broken.counts == {"ok": 2}  # the first page was scanned anyway

    civitai.route("/api/v1/models", good)
    civitai.requests.clear()
    fixed = crawl(state, CivitaiSearch(policy=FAST), options())
    assert fixed.listing_error is None and fixed.counts == {"ok": 5}
    assert query(civitai.seen("/api/v1/models?")[0])["cursor"] == ["2"]  # not from the start
    assert full_downloads(civitai, "/api/download/files/200") == 0  # scanned in the first run


def test_list_file_takes_any_target_form_comments_and_bad_lines(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_lora(tmp_path / "local.safetensors", seed=1)
    (tmp_path / "old.ckpt").write_bytes(b"\x80\x04never unpickled")
    with LoopbackServer() as server:
        data = lora_bytes(seed=2)
        server.route("/files/remote.safetensors", Reply(200, data))
        listed = tmp_path / "targets.txt"
        listed.write_text(
            "# an audit list\n\nlocal.safetensors   # a comment after a target\n"
            f"{server.url}/files/remote.safetensors\nold.ckpt\nlocal.safetensors\nnot a target at all\n"
        )
        summary = crawl(tmp_path / "list.db", TargetsFile(listed), options())
        got = rows(tmp_path / "list.db")
        local, old = str((tmp_path / "local.safetensors").resolve()), str((tmp_path / "old.ckpt").resolve())
        # local lines are stored as the absolute files they name: never tried as Hub ids anywhere else
        assert set(got) == {local, f"{server.url}/files/remote.safetensors", old, "not a target at all"}
        assert summary.counts == {"ok": 2, "unsafe": 1, "error": 1}
        assert "line 7" in got["not a target at all"]["error"]
        remote = got[f"{server.url}/files/remote.safetensors"]
        assert remote["bytes"] == len(data) and remote["header"][0]["tensors"] == 16
        assert full_downloads(server, "/files/remote.safetensors") == 1
        assert got[local]["bytes"] == 0  # a local file is not a download
        assert (tmp_path / "local.safetensors").exists()  # and is never deleted


def test_keep_copies_the_weights(civitai, tmp_path, temp):
    data = lora_bytes(seed=5)
    serve_civitai_search(civitai, [civitai_model(civitai, 7, 8, data)])
    keep = tmp_path / "kept"
    crawl(tmp_path / "k.db", CivitaiSearch(policy=FAST), options(keep=str(keep)))
    assert (keep / "civitai_7@8" / "lora_7.safetensors").read_bytes() == data
    assert leftover(temp) == []


def test_shards_split_the_targets_without_overlap(tmp_path):
    listed = lora_list(tmp_path, 6)
    shards = [
        set(rows(crawl(tmp_path / f"s{i}.db", TargetsFile(listed), options(shard=(i, 3))).state))
        for i in range(3)
    ]
    assert set().union(*shards) == set(listed.read_text().split())
    assert sum(len(s) for s in shards) == 6


def test_a_repo_in_a_list_is_listed_then_each_header_read(hub, tmp_path):
    hub_model(
        hub,
        "alice/pair",
        {
            "one.safetensors": lora_bytes(seed=1),
            "two.safetensors": lora_bytes(seed=2),
            "big.safetensors": lora_bytes(seed=3, rank=64),
        },
    )
    listed = tmp_path / "t.txt"
    listed.write_text("alice/pair\n")
    crawl(tmp_path / "r.db", TargetsFile(listed), options(max_size=20_000))
    row = rows(tmp_path / "r.db")["alice/pair"]
    assert row["status"] == "ok" and [h["file"] for h in row["header"]] == [
        "one.safetensors",
        "two.safetensors",
    ]
    assert [r["source"]["file"] for r in row["result"]] == ["one.safetensors", "two.safetensors"]
    assert full_downloads(hub, "/alice/pair/resolve/") == 2  # the file over the cap only listed


def test_the_command_prints_a_json_summary_and_writes_the_report_beside_the_state(tmp_path, capsys):
    listed = lora_list(tmp_path, 2)
    state = tmp_path / "audit.db"
    assert run(cli, ["crawl", "list", str(listed), "--state", str(state), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"ok": 2} and summary["targets"] == 2 and summary["listing"]["done"]
    report = tmp_path / "audit-report"
    assert summary["report"]["report.html"] == str(report / "report.html")
    assert sorted(p.name for p in report.iterdir()) == [
        "report.html",
        "reports.csv",
        "reports.parquet",
        "summary.json",
    ]
