"""Hub targets, through huggingface_hub itself: an offline cache folder, and a loopback server that
answers the calls huggingface_hub 2.4 makes (model info with blobs, HEAD/GET on resolve URLs, Range)."""

import time
from pathlib import Path

import huggingface_hub.constants
import pytest
from safetensors.numpy import load
from sources_helpers import (
    LoopbackServer,
    Reply,
    hub_cache_repo,
    hub_repo,
    leftovers,
    lora_bytes,
    sha256,
    write_peft_adapter,
)

from scanner.download import RetryPolicy
from scanner.errors import (
    AuthRequired,
    FetchError,
    HashMismatch,
    NoLoraFiles,
    NotFound,
    RateLimited,
    TooLarge,
    TruncatedDownload,
    UnsafeFormat,
)
from scanner.sources import read_remote_header, resolve

FAST = RetryPolicy(attempts=3, base_wait=0.05, max_wait=5)
COMMIT = "c" * 40


# ---------------------------------------------------------------- offline cache


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: any request would fail
    return cache


def test_offline_cache_picks_the_lora_and_skips_the_full_checkpoint(offline_cache):
    lora = lora_bytes(seed=1)
    hub_cache_repo(
        offline_cache,
        "user/style-lora",
        {
            "pytorch_lora_weights.safetensors": lora,
            "unet/diffusion_pytorch_model.safetensors": lora_bytes(seed=2),
            "old/lora.bin": b"\x80\x04pickle",
            "README.md": b"---\nbase_model: stable-diffusion-v1-5/stable-diffusion-v1-5\n"
            b"tags:\n- lora\n---\n# card\n",
        },
    )
    [got] = resolve("user/style-lora", progress=False)
    assert got.source == "hub" and got.name == "pytorch_lora_weights.safetensors"
    assert got.path.read_bytes() == lora
    assert got.sha256 == sha256(lora) and got.verified  # the blob name is the LFS SHA-256, re-checked
    assert got.info["base_model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert got.info["commit"] == "b" * 40
    assert any("diffusion_pytorch_model" in n and "full model" in n for n in got.notes)
    assert any("lora.bin" in n and "unsafe format, not scanned" in n for n in got.notes)
    assert not got.temporary
    got.cleanup()
    assert got.path.exists()  # the Hub cache is never deleted


def test_offline_cache_several_candidates_and_file_option(offline_cache):
    files = {"a.safetensors": lora_bytes(seed=1), "sub/b.safetensors": lora_bytes(seed=2, style="kohya")}
    hub_cache_repo(offline_cache, "user/two", files)
    assert [f.name for f in resolve("user/two", progress=False)] == ["a.safetensors", "sub/b.safetensors"]
    [only] = resolve("user/two", file="b.safetensors", progress=False)
    assert only.name == "sub/b.safetensors" and only.path.read_bytes() == files["sub/b.safetensors"]
    [via_uri] = resolve("hf://user/two/sub/b.safetensors", progress=False)
    assert via_uri.path == only.path
    with pytest.raises(NotFound, match="a.safetensors, sub/b.safetensors"):
        resolve("user/two", file="c.safetensors", progress=False)


def test_offline_peft_adapter_folder_comes_with_its_config(offline_cache, tmp_path):
    folder = write_peft_adapter(tmp_path / "adapter")
    files = {f"adapter/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["adapter/README.md"] = b"# peft card\n"
    hub_cache_repo(offline_cache, "user/peft", files)
    [got] = resolve("user/peft", progress=False)
    assert got.name == "adapter/adapter_model.safetensors"
    assert got.companions["adapter_config.json"].parent == got.path.parent
    assert '"lora_alpha"' in got.companions["adapter_config.json"].read_text()


def test_offline_errors(offline_cache):
    with pytest.raises(NotFound, match="HF_HUB_OFFLINE") as info:
        resolve("user/missing", progress=False)
    assert info.value.exit_code == 2
    hub_cache_repo(offline_cache, "user/pickles", {"model.ckpt": b"x", "lora.pt": b"y"})
    with pytest.raises(UnsafeFormat, match="unsafe format, not scanned"):
        resolve("user/pickles", progress=False)
    hub_cache_repo(offline_cache, "user/pipeline", {"unet/diffusion_pytorch_model.safetensors": lora_bytes()})
    with pytest.raises(NoLoraFiles) as info:
        resolve("user/pipeline", progress=False)
    assert info.value.exit_code == 3
    hub_cache_repo(offline_cache, "user/big", {"lora.safetensors": lora_bytes()})
    with pytest.raises(TooLarge, match="--max-size"):
        resolve("user/big", max_size=100, progress=False)


def test_offline_cache_with_corrupted_blob_is_a_hash_mismatch(offline_cache):
    storage = hub_cache_repo(offline_cache, "user/rot", {"lora.safetensors": lora_bytes()})
    blob = next((storage / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(HashMismatch, match="published hash"):
        resolve("user/rot", progress=False)
    assert not blob.exists()  # evicted, so that the next online run fetches it again


# ---------------------------------------------------------------- loopback Hub


@pytest.fixture
def hub(tmp_path, monkeypatch):
    with LoopbackServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # conftest set it at import
        monkeypatch.setenv("HF_TOKEN", "hf_loopback_token")
        yield server


def test_online_repo_downloads_every_candidate_verified_into_the_cache(hub, tmp_path):
    files = {
        "style.safetensors": lora_bytes(seed=1),
        "kohya/style_kohya.safetensors": lora_bytes(seed=2, style="kohya"),
        "unet/diffusion_pytorch_model.safetensors": lora_bytes(seed=3),
        "legacy.bin": b"\x80\x04pickle",
        "README.md": b"# card",
    }
    hub_repo(
        hub,
        "user/style",
        files,
        commit=COMMIT,
        card={"base_model": "runwayml/stable-diffusion-v1-5", "instance_prompt": "sks style"},
        tags=["lora", "base_model:adapter:runwayml/stable-diffusion-v1-5"],
    )
    got = resolve("user/style", progress=False)
    assert [f.name for f in got] == ["kohya/style_kohya.safetensors", "style.safetensors"]
    for f in got:
        assert f.path.read_bytes() == files[f.name]
        assert f.verified and f.sha256 == sha256(files[f.name])
        assert str(tmp_path / "hub") in str(f.path) and f"snapshots/{COMMIT}" in str(f.path)
        assert (
            f.info["base_model"] == "runwayml/stable-diffusion-v1-5"
            and f.info["instance_prompt"] == "sks style"
        )
        assert "lora" in f.info["tags"]
    # pinned to the listed commit; the full checkpoint and the pickle were never requested
    gets = [r.path for r in hub.seen(method="GET") if "/resolve/" in r.path]
    assert gets and all(f"/resolve/{COMMIT}/" in p for p in gets)
    assert not any("diffusion_pytorch_model" in p or "legacy.bin" in p for p in gets)
    assert all(r.headers.get("authorization") == "Bearer hf_loopback_token" for r in hub.seen("/api/models"))
    assert leftovers(tmp_path / "hub") == []

    # A second run is served from the cache: no new file download.
    before = len(hub.seen(method="GET"))
    again = resolve("user/style", file="style.safetensors", progress=False)
    assert again[0].path == got[1].path
    assert [r.path for r in hub.seen(method="GET")[before:] if "/resolve/" in r.path] == []


def test_online_revision_and_mirror_url_forms(hub):
    data = lora_bytes(seed=4)
    hub_repo(hub, "user/rev", {"lora.safetensors": data}, commit=COMMIT)
    [by_rev] = resolve(f"user/rev@{COMMIT}", progress=False)
    [by_url] = resolve(f"{hub.url}/user/rev/blob/main/lora.safetensors", progress=False)
    assert by_rev.path.read_bytes() == by_url.path.read_bytes() == data
    assert any(r.path.startswith(f"/api/models/user/rev/revision/{COMMIT}") for r in hub.seen())


def test_online_then_offline_uses_the_same_cache(hub, monkeypatch):
    data = lora_bytes(seed=5)
    hub_repo(hub, "user/cached", {"lora.safetensors": data})
    [online] = resolve("user/cached", progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    [offline] = resolve("user/cached", progress=False)
    assert offline.path == online.path and offline.verified


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (Reply(404, b"", {"X-Error-Code": "RepoNotFound"}), NotFound, "no such model repo"),
        (Reply(401, b"", {"X-Error-Code": "RepoNotFound"}), AuthRequired, "HF_TOKEN"),
        (Reply(403, b"", {"X-Error-Code": "GatedRepo"}), AuthRequired, "gated"),
        (Reply(404, b"", {"X-Error-Code": "RevisionNotFound"}), NotFound, "revision"),
        (Reply(429, b"", {"Retry-After": "0"}), RateLimited, "429"),
        (Reply(503, b""), FetchError, "503"),
    ],
)
def test_online_listing_errors_are_typed(hub, tmp_path, reply, error, words):
    hub.route("/api/models/user/broken", reply)
    with pytest.raises(error, match=words) as info:
        resolve("user/broken", progress=False, retry=FAST)
    assert "\n" not in str(info.value)
    assert len(hub.seen("/api/models/user/broken")) == (FAST.attempts if reply.status in (429, 503) else 1)


def test_online_429_then_success_honours_retry_after(hub):
    data = lora_bytes(seed=6)
    hub_repo(hub, "user/busy", {"lora.safetensors": data})
    info = hub.routes["/api/models/user/busy"][0]
    hub.route("/api/models/user/busy", Reply(429, b"", {"Retry-After": "1"}), Reply(500, b""), info)
    start = time.monotonic()
    [got] = resolve("user/busy", progress=False, retry=FAST)
    assert time.monotonic() - start >= 1.0
    assert got.path.read_bytes() == data and len(hub.seen("/api/models/user/busy")) == 3


def test_online_hash_mismatch_leaves_nothing_in_the_cache(hub, tmp_path):
    data = lora_bytes(seed=7)
    hub_repo(hub, "user/tampered", {"lora.safetensors": data}, listed_sha256={"lora.safetensors": "0" * 64})
    with pytest.raises(HashMismatch, match="published hash"):
        resolve("user/tampered", progress=False)
    cache = tmp_path / "hub" / "models--user--tampered"
    assert [p for p in cache.rglob("*") if p.is_file() and "blobs" in p.parts] == []
    assert leftovers(tmp_path / "hub") == []


def test_online_oversize_by_listing_downloads_nothing(hub):
    hub_repo(
        hub, "user/huge", {"lora.safetensors": lora_bytes()}, listed_size={"lora.safetensors": 5 * 1024**3}
    )
    with pytest.raises(TooLarge, match="over the 2.0 GB cap"):
        resolve("user/huge", progress=False)
    assert not [r for r in hub.seen() if "/resolve/" in r.path]


def test_online_oversize_by_stream_stops_and_cleans(hub, tmp_path):
    small, big = lora_bytes(seed=1), lora_bytes(seed=2) + b"\0" * 300_000
    # The listing and the HEAD say the small size; the GET streams far more, chunked.
    hub_repo(
        hub,
        "user/liar",
        {"lora.safetensors": small},
        file_replies={"lora.safetensors": [Reply(200, big, chunked=True)]},
    )
    with pytest.raises(TooLarge, match="stream passed"):
        resolve("user/liar", max_size=len(small) + 1000, progress=False)
    assert leftovers(tmp_path / "hub") == []
    assert not list((tmp_path / "hub").rglob("blobs/*"))


def test_online_truncated_download(hub, tmp_path):
    data = lora_bytes(seed=8)
    hub_repo(
        hub,
        "user/cut",
        {"lora.safetensors": data},
        file_replies={"lora.safetensors": [Reply(200, data, truncate_at=len(data) // 2)]},
    )
    with pytest.raises(TruncatedDownload, match="retry"):
        resolve("user/cut", progress=False)
    assert leftovers(tmp_path / "hub") == []


def test_read_remote_header_uses_range_requests_only(hub):
    data = lora_bytes(seed=9, metadata={"ss_num_train_images": "40"})
    hub_repo(hub, "user/hdr", {"lora.safetensors": data})
    header = read_remote_header("hf://user/hdr/lora.safetensors")
    assert header.metadata["ss_num_train_images"] == "40"
    assert set(header.tensors) == set(load(data))
    gets = hub.seen("/user/hdr/resolve/", method="GET")
    assert gets and all(r.headers.get("range", "").startswith("bytes=") for r in gets)


def test_hub_target_paths_are_real_files(hub):
    hub_repo(hub, "user/p", {"lora.safetensors": lora_bytes()})
    [got] = resolve("user/p", progress=False)
    assert isinstance(got.path, Path) and got.path.is_file() and got.size == got.path.stat().st_size


def test_many_candidates_are_capped_with_a_note(offline_cache):
    hub_cache_repo(
        offline_cache, "user/epochs", {f"epoch-{i:02d}.safetensors": lora_bytes(seed=i) for i in range(20)}
    )
    got = resolve("user/epochs", progress=False)
    assert len(got) == 16 and got[-1].name == "epoch-15.safetensors"
    assert any("4 more candidates" in n and "--file" in n for n in got[0].notes)


def test_online_download_with_progress_bar(hub):
    data = lora_bytes(seed=10)
    hub_repo(hub, "user/bar", {"lora.safetensors": data})
    [got] = resolve("user/bar", progress=True)
    assert got.path.read_bytes() == data


def test_offline_plain_snapshot_files_and_tag_refs(offline_cache):
    # The minimal layout of REFERENCE §6: refs/<name> holding a commit, snapshots/<commit>/<file>
    # as plain files.
    data = lora_bytes(seed=11)
    storage = offline_cache / "models--user--plain"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text("d" * 40)
    (storage / "refs" / "v1").write_text("e" * 40)
    for commit, payload in (("d" * 40, data), ("e" * 40, lora_bytes(seed=12))):
        (storage / "snapshots" / commit).mkdir(parents=True)
        (storage / "snapshots" / commit / "lora.safetensors").write_bytes(payload)
    [main] = resolve("user/plain", progress=False)
    assert main.path.read_bytes() == data and not main.verified  # no blob name, so no hash to check
    [tagged] = resolve("user/plain@v1", progress=False)
    assert tagged.info["commit"] == "e" * 40 and tagged.path.read_bytes() != data
    with pytest.raises(NotFound, match="user/plain@v2"):
        resolve("user/plain@v2", progress=False)


def test_online_lfs_files_through_a_cdn_redirect(hub, tmp_path):
    data = lora_bytes(seed=13, metadata={"ss_num_train_images": "30"})
    with LoopbackServer() as cdn:
        hub_repo(hub, "user/cdn", {"lora.safetensors": data, "README.md": b"# card"}, cdn=cdn)
        [got] = resolve("user/cdn", progress=False)
        assert got.path.read_bytes() == data and got.verified
        header = read_remote_header("hf://user/cdn/lora.safetensors")
        assert header.metadata["ss_num_train_images"] == "30"
        cdn_gets = cdn.seen("/blobs/", method="GET")
        assert len(cdn_gets) >= 2 and all("authorization" not in r.headers for r in cdn_gets)
    assert leftovers(tmp_path / "hub") == []


def test_one_bad_candidate_does_not_hide_the_others(hub):
    good, bad = lora_bytes(seed=14), lora_bytes(seed=15)
    hub_repo(
        hub,
        "user/mixed",
        {"a.safetensors": bad, "b.safetensors": good},
        listed_sha256={"a.safetensors": "1" * 64},
    )
    [got] = resolve("user/mixed", progress=False)
    assert got.name == "b.safetensors" and got.path.read_bytes() == good
    assert any(
        n.startswith("not fetched:") and "a.safetensors" in n and "published hash" in n for n in got.notes
    )
