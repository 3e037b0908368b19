"""CivitAI targets against a loopback server answering the REST API's JSON shapes (REFERENCE §6) and
serving real safetensors LoRA files: the primary file, its SHA-256, the token, and every fault."""

import tempfile
import time

import pytest
from safetensors.numpy import load
from sources_helpers import (
    LoopbackServer,
    Reply,
    civitai_file,
    civitai_version,
    lora_bytes,
    serve_civitai,
)

from scanner.download import RetryPolicy
from scanner.errors import (
    AuthRequired,
    HashMismatch,
    NoLoraFiles,
    NotFound,
    RateLimited,
    TooLarge,
    TruncatedDownload,
    UnsafeFormat,
)
from scanner.sources import fetched, read_remote_header, resolve

FAST = RetryPolicy(attempts=3, base_wait=0.05, max_wait=5)


@pytest.fixture
def civitai(tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where temp downloads go, to check nothing is left
    with LoopbackServer() as server:
        monkeypatch.setenv("CIVITAI_ENDPOINT", server.url)
        monkeypatch.setenv("CIVITAI_TOKEN", "civitai-loopback-token")
        server.temp = temp
        yield server


def _one_version(server, data, *, version_id=11, model_id=7, replies=None, **file_kw):
    entry = civitai_file(server, "sks_style.safetensors", data, **file_kw)
    version = civitai_version(server, version_id, model_id, [entry])
    serve_civitai(server, model_id, [version], {1: replies or [Reply(200, data)]})
    return version


def test_model_id_fetches_latest_version_primary_file_verified(civitai):
    data = lora_bytes(style="kohya", metadata={"ss_num_train_images": "24"})
    newer = civitai_version(
        civitai,
        12,
        7,
        [
            civitai_file(civitai, "training_data.zip", b"zip", file_id=3, type_="Training Data", fmt="Other"),
            civitai_file(civitai, "sks_style_v2.safetensors", data, file_id=2, primary=True),
            civitai_file(civitai, "sks_style_v2_fp16.safetensors", b"nope", file_id=4, primary=False),
        ],
    )
    older = civitai_version(civitai, 11, 7, [civitai_file(civitai, "sks_style_v1.safetensors", b"old")])
    serve_civitai(civitai, 7, [newer, older], {2: [Reply(200, data)]})
    [got] = resolve("civitai:7", progress=False)
    assert got.source == "civitai" and got.source_id == "civitai:7@12"
    assert got.name == "sks_style_v2.safetensors" and got.path.read_bytes() == data
    assert got.verified and got.temporary and got.size == len(data)
    assert got.info["baseModel"] == "SD 1.5" and got.info["trainedWords"] == ["sks style"]
    assert (
        got.info["modelName"] == "Model 7" and got.info["format"] == "SafeTensor" and got.info["fp"] == "fp32"
    )
    assert load(got.path.read_bytes()).keys() == load(data).keys()
    for request in civitai.seen("/api/"):
        assert request.headers["authorization"] == "Bearer civitai-loopback-token"
    got.cleanup()
    assert not got.path.exists() and list(civitai.temp.iterdir()) == []


def test_version_id_and_site_url_forms(civitai):
    data = lora_bytes(seed=3)
    _one_version(civitai, data, version_id=21, model_id=9)
    [by_version] = resolve("civitai:9@21", progress=False)
    assert civitai.seen("/api/v1/model-versions/21") and not civitai.seen("/api/v1/models/9")
    [by_url] = resolve("https://civitai.com/models/9/some-slug?modelVersionId=21", progress=False)
    assert by_version.path.read_bytes() == by_url.path.read_bytes() == data
    with pytest.raises(NotFound, match="belongs to model 9"):
        resolve("civitai:8@21", progress=False)


def test_fetched_context_manager_deletes_on_exit_and_on_error(civitai):
    _one_version(civitai, lora_bytes(seed=4))
    with fetched("civitai:7", progress=False) as files:
        path = files[0].path
        assert path.is_file()
    assert not path.exists()
    with pytest.raises(RuntimeError):
        with fetched("civitai:7", progress=False) as files:
            path = files[0].path
            raise RuntimeError("scan failed")
    assert not path.exists() and list(civitai.temp.iterdir()) == []


def test_pickle_primary_is_skipped_for_the_safetensors_file(civitai):
    data = lora_bytes(seed=5)
    version = civitai_version(
        civitai,
        11,
        7,
        [
            civitai_file(civitai, "style.pt", b"\x80\x04pickle", file_id=1, primary=True, fmt="PickleTensor"),
            civitai_file(civitai, "style.safetensors", data, file_id=2, primary=False),
        ],
    )
    serve_civitai(civitai, 7, [version], {1: [Reply(200, b"\x80\x04")], 2: [Reply(200, data)]})
    [got] = resolve("civitai:7", progress=False)
    assert got.name == "style.safetensors"
    assert any("style.pt" in note and "unsafe format, not scanned" in note for note in got.notes)
    assert not civitai.seen("/api/download/files/1")


def test_pickle_only_version_is_refused_without_download(civitai):
    version = civitai_version(
        civitai,
        11,
        7,
        [
            civitai_file(
                civitai, "style.safetensors", b"\x80\x04pickle", fmt="PickleTensor"
            ),  # the format says pickle
        ],
    )
    serve_civitai(civitai, 7, [version], {1: [Reply(200, b"\x80\x04")]})
    with pytest.raises(UnsafeFormat, match="unsafe format, not scanned") as info:
        resolve("civitai:7", progress=False)
    assert info.value.exit_code == 1  # an unsafe file is a finding (the 0/1/2/3/4 contract)
    assert not civitai.seen("/api/download/")


def test_checkpoint_models_are_not_loras(civitai):
    version = civitai_version(
        civitai, 11, 7, [civitai_file(civitai, "model.safetensors", b"x")], model_type="Checkpoint"
    )
    serve_civitai(civitai, 7, [version], {})
    with pytest.raises(NoLoraFiles, match="Checkpoint") as info:
        resolve("civitai:7", progress=False)
    assert info.value.exit_code == 3


def test_missing_model_and_auth_required_download(civitai):
    civitai.route("/api/v1/models/404", Reply.json({"error": "No model with id 404"}, status=404))
    with pytest.raises(NotFound, match="civitai model 404"):
        resolve("civitai:404", progress=False)
    _one_version(civitai, lora_bytes(), replies=[Reply(401, b"Unauthorized")])
    with pytest.raises(AuthRequired, match="CIVITAI_TOKEN") as info:
        resolve("civitai:7", progress=False)
    assert "\n" not in str(info.value)
    assert list(civitai.temp.iterdir()) == []


def test_429_with_retry_after_then_success(civitai):
    data = lora_bytes(seed=6)
    _one_version(civitai, data, replies=[Reply(429, b"", {"Retry-After": "1"}), Reply(200, data)])
    start = time.monotonic()
    [got] = resolve("civitai:7", progress=False, retry=FAST)
    assert time.monotonic() - start >= 1.0
    assert got.path.read_bytes() == data and len(civitai.seen("/api/download/files/1")) == 2


def test_429_forever_is_rate_limited_and_long_waits_are_not_slept(civitai):
    _one_version(civitai, lora_bytes(), replies=[Reply(429, b"", {"Retry-After": "0"})])
    with pytest.raises(RateLimited, match="429"):
        resolve("civitai:7", progress=False, retry=FAST)
    assert len(civitai.seen("/api/download/files/1")) == FAST.attempts
    civitai.route("/api/v1/models/7", Reply(429, b"", {"Retry-After": "3600"}))
    start = time.monotonic()
    with pytest.raises(RateLimited, match="retry in 3600 s") as info:
        resolve("civitai:7", progress=False, retry=FAST)
    assert time.monotonic() - start < 5 and info.value.retry_after == 3600


def test_500_then_success(civitai):
    data = lora_bytes(seed=7)
    _one_version(civitai, data, replies=[Reply(500, b"oops"), Reply(502, b""), Reply(200, data)])
    [got] = resolve("civitai:7", progress=False, retry=FAST)
    assert got.path.read_bytes() == data


def test_hash_mismatch_leaves_nothing(civitai):
    _one_version(civitai, lora_bytes(seed=8), published_sha256="ab" * 32)
    with pytest.raises(HashMismatch, match="does not match the published"):
        resolve("civitai:7", progress=False)
    assert list(civitai.temp.rglob("*")) == []


def test_oversize_by_declared_size_downloads_nothing(civitai):
    _one_version(civitai, lora_bytes(), size_kb=3 * 1024 * 1024)
    with pytest.raises(TooLarge, match="--max-size"):
        resolve("civitai:7", progress=False)
    assert not civitai.seen("/api/download/")


def test_oversize_by_content_length_and_by_stream(civitai):
    big = lora_bytes() + b"\0" * 200_000
    _one_version(civitai, big, size_kb=1)  # the API understates the size
    with pytest.raises(TooLarge, match="over the"):
        resolve("civitai:7", max_size=100_000, progress=False)
    _one_version(civitai, big, size_kb=1, replies=[Reply(200, big, chunked=True)])  # and no Content-Length
    with pytest.raises(TooLarge, match="stream passed"):
        resolve("civitai:7", max_size=100_000, progress=False)
    assert list(civitai.temp.rglob("*")) == []


def test_truncated_download_without_range_support(civitai):
    data = lora_bytes(seed=9)
    _one_version(civitai, data, replies=[Reply(200, data, truncate_at=len(data) // 3, ranges=False)])
    with pytest.raises(TruncatedDownload, match="connection ended"):
        resolve("civitai:7", progress=False)
    assert list(civitai.temp.rglob("*")) == []


def test_truncated_download_resumes_with_range(civitai):
    data = lora_bytes(seed=10)
    _one_version(civitai, data, replies=[Reply(200, data, truncate_at=len(data) // 3), Reply(200, data)])
    [got] = resolve("civitai:7", progress=False)
    assert got.path.read_bytes() == data and got.verified
    second = civitai.seen("/api/download/files/1")[1]
    assert second.headers["range"] == f"bytes={len(data) // 3}-"


def test_remote_header_of_the_primary_file(civitai):
    data = lora_bytes(seed=11, metadata={"ss_network_dim": "4"})
    _one_version(civitai, data)
    header = read_remote_header("civitai:7")
    assert header.metadata == {"ss_network_dim": "4"} and set(header.tensors) == set(load(data))
    assert all("range" in r.headers for r in civitai.seen("/api/download/"))


def test_token_never_leaves_the_api_host(civitai):
    data = lora_bytes(seed=12)
    with LoopbackServer() as cdn:  # another origin: another port
        cdn.route("/blob", Reply(200, data))
        entry = civitai_file(civitai, "x.safetensors", data)
        entry["downloadUrl"] = f"{cdn.url}/blob"
        serve_civitai(civitai, 7, [civitai_version(civitai, 11, 7, [entry])], {})
        [got] = resolve("civitai:7", progress=False)
        assert got.path.read_bytes() == data
        assert "authorization" not in cdn.seen("/blob")[0].headers
    assert civitai.seen("/api/v1/models/7")[0].headers["authorization"] == "Bearer civitai-loopback-token"


def test_progress_bar_on(civitai, capsys):
    data = lora_bytes(seed=13)
    _one_version(civitai, data)
    [got] = resolve("civitai:7", progress=True)
    assert got.path.read_bytes() == data
