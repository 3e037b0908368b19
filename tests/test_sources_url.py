"""Plain URLs and the download function itself: names, pickle refusal, redirects, header reads by
Range, and cleanup on every exit path (including KeyboardInterrupt)."""

import tempfile

import pytest
from safetensors.numpy import load
from sources_helpers import LoopbackServer, Reply, lora_bytes, sha256

import scanner.download as download_module
from scanner.download import ByteMeter, RetryPolicy, download
from scanner.errors import FetchError, NotFound, TooLarge, UnsafeFormat
from scanner.sources import fetched, read_remote_header, resolve


@pytest.fixture
def web(tmp_path, monkeypatch):
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with LoopbackServer() as server:
        server.temp = temp
        yield server


def test_plain_url_download_is_temporary(web):
    data = lora_bytes(seed=1)
    web.route("/files/style.safetensors", Reply(200, data))
    with fetched(f"{web.url}/files/style.safetensors", progress=False) as [got]:
        assert got.source == "url" and got.name == "style.safetensors" and got.path.read_bytes() == data
        assert got.sha256 == sha256(data) and not got.verified  # nothing published to check against
    assert list(web.temp.iterdir()) == []


def test_content_disposition_names_the_file_and_cannot_escape(web, tmp_path):
    data = lora_bytes(seed=2)
    web.route(
        "/dl/1",
        Reply(200, data, {"Content-Disposition": 'attachment; filename="../../evil name.safetensors"'}),
    )
    got = download(f"{web.url}/dl/1", tmp_path / "out", progress=False)
    assert got.path == tmp_path / "out" / "evil name.safetensors" and got.path.read_bytes() == data


def test_redirects_are_followed(web, tmp_path):
    data = lora_bytes(seed=3)
    web.route("/api/download/models/5", Reply(302, b"", {"Location": "/cdn/blob?sig=x"}))
    web.route("/cdn/blob", Reply(200, data, {"Content-Disposition": "attachment; filename=real.safetensors"}))
    got = download(
        f"{web.url}/api/download/models/5", tmp_path, headers={"Authorization": "Bearer t"}, progress=False
    )
    assert got.path.name == "real.safetensors" and got.path.read_bytes() == data


def test_pickle_urls_are_refused_before_any_request(web):
    with pytest.raises(UnsafeFormat, match="unsafe format, not scanned"):
        resolve(f"{web.url}/model.ckpt", progress=False)
    assert web.requests == []


def test_pickle_behind_an_innocent_url_is_refused_before_the_body(web):
    web.route(
        "/dl/2",
        Reply(200, b"\x80\x04" + b"x" * 100_000, {"Content-Disposition": "attachment; filename=lora.pt"}),
    )
    with pytest.raises(UnsafeFormat, match="lora.pt"):
        resolve(f"{web.url}/dl/2", progress=False)
    assert list(web.temp.rglob("*")) == []


def test_not_found_and_unreachable(web):
    with pytest.raises(NotFound, match="404"):
        resolve(f"{web.url}/nothing.safetensors", progress=False)
    fast = RetryPolicy(attempts=2, base_wait=0.01)
    with pytest.raises(FetchError, match="cannot reach"):
        resolve("http://127.0.0.1:9/x.safetensors", progress=False, retry=fast)
    assert list(web.temp.rglob("*")) == []


def test_keyboard_interrupt_mid_stream_leaves_no_partial_file(web, tmp_path, monkeypatch):
    data = lora_bytes(seed=4) + b"\0" * 3_000_000
    web.route("/big.safetensors", Reply(200, data))

    def interrupt(self, n=1):  # the user presses Ctrl-C while bytes arrive
        raise KeyboardInterrupt

    monkeypatch.setattr(download_module.ByteMeter, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download(f"{web.url}/big.safetensors", tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def test_byte_meter_caps_and_draws(capsys):
    with ByteMeter(total=10, desc="x.safetensors", max_size=100, progress=True) as meter:
        meter.update(60)
        with pytest.raises(TooLarge, match="stream passed"):
            meter.update(60)
    with pytest.raises(TooLarge):
        ByteMeter(total=1000, max_size=100, progress=False)


def test_read_remote_header_small_and_large_headers(web):
    small = lora_bytes(seed=5, metadata={"ss_num_train_images": "12"})
    large = lora_bytes(seed=6, metadata={"ss_tag_frequency": "x" * 200_000})  # header over the 64 KB probe
    web.route("/s.safetensors", Reply(200, small))
    web.route("/l.safetensors", Reply(200, large))
    assert read_remote_header(f"{web.url}/s.safetensors").metadata["ss_num_train_images"] == "12"
    header = read_remote_header(f"{web.url}/l.safetensors")
    assert len(header.metadata["ss_tag_frequency"]) == 200_000 and set(header.tensors) == set(load(large))
    assert len(web.seen("/s.safetensors")) == 1 and len(web.seen("/l.safetensors")) == 2
    assert all("range" in r.headers for r in web.requests)


def test_read_remote_header_when_the_server_ignores_range(web):
    data = lora_bytes(seed=7, metadata={"modelspec.title": "t"}) + b"\0" * 2_000_000
    web.route("/n.safetensors", Reply(200, data, ranges=False))
    assert read_remote_header(f"{web.url}/n.safetensors").metadata == {"modelspec.title": "t"}


@pytest.mark.parametrize(
    "body", [b"", b"\x01\x00", (10**12).to_bytes(8, "little"), (20).to_bytes(8, "little") + b"[1, 2]"]
)
def test_read_remote_header_rejects_non_safetensors(web, body):
    web.route("/bad.safetensors", Reply(200, body))
    with pytest.raises(FetchError, match="safetensors"):
        read_remote_header(f"{web.url}/bad.safetensors")


def test_resume_restarts_when_the_server_ignores_range(web, tmp_path):
    data = lora_bytes(seed=8)
    web.route("/r.safetensors", Reply(200, data, truncate_at=len(data) // 2), Reply(200, data, ranges=False))
    got = download(f"{web.url}/r.safetensors", tmp_path / "out", sha256=sha256(data), progress=False)
    assert got.path.read_bytes() == data and got.verified
    assert [r.headers.get("range") for r in web.seen("/r.safetensors")] == [None, f"bytes={len(data) // 2}-"]


def test_byte_meter_fits_huggingface_hubs_xet_progress_reporter():
    # Real Hub files are mostly Xet-backed: hf_hub_download then drives tqdm_class through this reporter.
    from functools import partial
    from types import SimpleNamespace

    from huggingface_hub.utils._xet_progress_reporting import XetDownloadProgressReporter

    def report(done, transferred):  # the fields hf_xet's group report carries
        return SimpleNamespace(
            total_bytes_completed=done,
            total_transfer_bytes_completed=transferred,
            total_bytes=1000,
            total_bytes_completion_rate=1.0,
            total_transfer_bytes_completion_rate=1.0,
        )

    meter = partial(ByteMeter, max_size=1500, progress=True)
    with XetDownloadProgressReporter(
        reconstruction_desc="r", total=1000, log_level=30, tqdm_class=meter
    ) as rep:
        rep.update_progress(report(400, 300))
        rep.update_progress(report(1000, 900))
        assert rep.reconstruction_bar.n == 1000
        with pytest.raises(TooLarge):
            rep.update_progress(report(2000, 900))
