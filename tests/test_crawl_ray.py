"""``--ray``: the crawl's scan tasks as Ray remote functions, on a private local Ray instance (1 CPU)."""

import pytest
from crawl_helpers import lora_list, rows
from sources_helpers import LoopbackServer, Reply, lora_bytes

from scanner.crawl import CrawlOptions, crawl
from scanner.crawl.listing import TargetsFile

pytest.importorskip("ray")


def test_ray_local_runs_the_scans_and_the_loop_records_them(tmp_path):
    listed = lora_list(tmp_path, 3)
    with LoopbackServer() as server:
        data = lora_bytes(seed=9)
        server.route("/remote.safetensors", Reply(200, data))
        listed.write_text(listed.read_text() + f"{server.url}/remote.safetensors\n")
        summary = crawl(
            tmp_path / "ray.db", TargetsFile(listed), CrawlOptions(jobs=1, ray="local", progress=False)
        )
    assert summary.counts == {"ok": 4}
    got = rows(tmp_path / "ray.db")
    assert got[f"{server.url}/remote.safetensors"]["bytes"] == len(data)
    assert all(r["attempts"] == 1 and r["result"][0]["format"] == "diffusers" for r in got.values())
