"""Hostile servers and hostile names (issue 15, families 1-3): nothing outside our folders is written or
deleted, every transfer ends in bounded time, and every malformed answer is one clear error (exit 2),
never a traceback. Real loopback servers, real offline Hub cache folders, real files."""

import json
import os
import time

import huggingface_hub.constants
import pytest
from sources_helpers import (
    LoopbackServer,
    Reply,
    civitai_file,
    civitai_version,
    hub_cache_repo,
    lora_bytes,
    sha256,
    trickle_server,
    write_lora,
)

from lora_wise.cli.tools import run
from scanner.cli import cli
from scanner.crawl.task import keep_files
from scanner.download import RetryPolicy, download
from scanner.errors import BadAnswer, NoLoraFiles, RedirectLoop, TargetError, TransferTimeout, UnsafePath
from scanner.sources import FetchedFile, resolve
from scanner.sources.hub import list_repo
from scanner.targets import parse_target

FAST = RetryPolicy(attempts=2, base_wait=0.05, max_wait=1)


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return cache


@pytest.fixture
def server(tmp_path, monkeypatch):
    with LoopbackServer() as srv:
        monkeypatch.setenv("CIVITAI_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield srv


# ---------------------------------------------------------------- family 1: our folders only


def test_a_cache_entry_linking_out_of_the_cache_is_never_trusted_nor_deleted(offline_cache, tmp_path):
    outside = tmp_path / "precious" / ("e" * 64)  # named like a blob whose hash will not match
    outside.parent.mkdir()
    outside.write_bytes(lora_bytes(seed=1))
    storage = hub_cache_repo(offline_cache, "user/repo", {"README.md": b"# card"})
    link = storage / "snapshots" / ("b" * 40) / "style.safetensors"
    link.symlink_to(outside)
    with pytest.raises(NoLoraFiles):
        resolve("user/repo")
    assert outside.read_bytes() == lora_bytes(seed=1)  # still there, untouched


def test_a_revision_that_climbs_out_of_refs_is_refused_before_any_write(offline_cache, tmp_path):
    hub_cache_repo(offline_cache, "user/repo", {"a.safetensors": lora_bytes()})
    before = tree(tmp_path)
    assert run(cli, ["user/repo@../../../x", "--quiet"]) == 4
    with pytest.raises(TargetError):
        parse_target("hf://user/repo@..%2F../x/a.safetensors".replace("%2F", "/"))
    with pytest.raises(UnsafePath):  # the library call, without the target parser in front
        list_repo("user/repo", "../../../x")
    assert tree(tmp_path) == before


def test_keep_with_a_target_named_dot_dot_stays_inside_the_keep_folder(tmp_path):
    keep = tmp_path / "box" / "keep"
    lora = write_lora(tmp_path / "src" / "lora.safetensors")
    files = [FetchedFile(path=lora, source="local", source_id=str(lora), name="lora.safetensors", size=1)]
    for target in ("..", ".", "../..", "/"):
        keep_files(files, keep, target)
    assert tree(tmp_path / "box") == ["keep", "keep/target", "keep/target/lora.safetensors"]


@pytest.mark.parametrize("name", ["a\x00b.safetensors", "x" * 300 + ".safetensors"])
def test_civitai_file_names_with_nul_or_over_255_bytes_are_one_clear_error(server, tmp_path, name, capsys):
    data = lora_bytes()
    version = civitai_version(server, 2, 1, [civitai_file(server, name, data)])
    server.route("/api/v1/model-versions/2", Reply.json(version))
    server.route("/api/download/files/1", Reply(200, data))
    with pytest.raises(UnsafePath):
        resolve("civitai:1@2", progress=False, retry=FAST)
    assert run(cli, ["civitai:1@2", "--quiet"]) == 2
    assert "refused" in capsys.readouterr().out
    assert not server.seen("/api/download")  # refused before the download


def test_a_content_disposition_name_over_255_bytes_is_refused(server, tmp_path):
    long_name = "y" * 400 + ".safetensors"
    server.route(
        "/dl", Reply(200, lora_bytes(), {"Content-Disposition": f'attachment; filename="{long_name}"'})
    )
    with pytest.raises(UnsafePath):
        download(f"{server.url}/dl", tmp_path / "out", progress=False, policy=FAST)
    assert tree(tmp_path / "out") == []  # not even the partial file


def test_targets_with_nul_or_overlong_names_are_usage_errors():
    assert run(cli, ["some\x00file.safetensors"]) == 4
    assert run(cli, ["/" + "z" * 300 + "/lora.safetensors"]) == 4


# ---------------------------------------------------------------- family 2: bounded in time


def test_a_server_sending_one_byte_a_second_hits_the_deadline(tmp_path):
    body = lora_bytes()
    with trickle_server(body, every=0.3) as url:
        started = time.monotonic()
        with pytest.raises(TransferTimeout, match="timed out"):
            download(
                f"{url}/slow.safetensors",
                tmp_path / "out",
                progress=False,
                policy=RetryPolicy(attempts=1, stall=2.0, deadline=1.5),
            )
        assert time.monotonic() - started < 6  # the stall timeout alone would never fire
    assert tree(tmp_path / "out") == []


def test_a_redirect_loop_ends_with_a_clear_error(tmp_path, capsys):
    with LoopbackServer() as server:
        server.route("/loop.safetensors", Reply(302, b"", {"Location": "/loop.safetensors"}, ranges=False))
        with pytest.raises(RedirectLoop):
            download(f"{server.url}/loop.safetensors", tmp_path / "out", progress=False, policy=FAST)
        assert run(cli, [f"{server.url}/loop.safetensors", "--quiet"]) == 2
        assert len(server.seen("/loop")) <= 2 * 11  # one chain per try, not a retry storm
    assert "redirect" in capsys.readouterr().out


# ---------------------------------------------------------------- family 3: answers checked at the boundary


def _version(server, data):
    return civitai_version(server, 2, 1, [civitai_file(server, "a.safetensors", data)])


def _file_field(key, value):
    def edit(version):
        version["files"][0][key] = value

    return edit


def _version_field(key, value):
    def edit(version):
        version[key] = value

    return edit


BAD_VERSIONS = {
    "sizeKB is text": _file_field("sizeKB", "big"),
    "sizeKB is a list": _file_field("sizeKB", [1]),
    "sizeKB is infinite": _file_field("sizeKB", 1e400),
    "sizeKB is true": _file_field("sizeKB", True),
    "hashes is text": _file_field("hashes", "x"),
    "hashes is a list": _file_field("hashes", ["x"]),
    "SHA256 is a number": _file_field("hashes", {"SHA256": 5}),
    "SHA256 is no hash": _file_field("hashes", {"SHA256": "../../etc"}),
    "metadata is text": _file_field("metadata", "x"),
    "name is an object": _file_field("name", {"a": 1}),
    "downloadUrl is a file URL": _file_field("downloadUrl", "file:///etc/passwd"),
    "files is text": _version_field("files", "x"),
    "files is an object": _version_field("files", {}),
    "files holds a number": _version_field("files", [1]),
    "model is text": _version_field("model", "x"),
    "id is text": _version_field("id", "2"),
    "trainedWords is text": _version_field("trainedWords", "sks"),
}


@pytest.mark.parametrize("case", list(BAD_VERSIONS))
def test_wrong_json_types_in_a_civitai_version_are_one_clear_error(server, case, capsys):
    version = _version(server, lora_bytes())
    BAD_VERSIONS[case](version)
    server.route("/api/v1/model-versions/2", Reply.json(version))
    with pytest.raises(BadAnswer):
        resolve("civitai:1@2", progress=False, retry=FAST)
    assert run(cli, ["civitai:1@2", "--quiet"]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    assert not server.seen("/api/download")


@pytest.mark.parametrize("versions", ["x", [1], [{"id": "v"}], {"0": {}}])
def test_wrong_model_versions_in_a_civitai_model_are_one_clear_error(server, versions):
    server.route(
        "/api/v1/models/1", Reply.json({"id": 1, "name": "m", "type": "LORA", "modelVersions": versions})
    )
    assert run(cli, ["civitai:1", "--quiet"]) == 2


def test_deeply_nested_json_is_a_clear_error_not_a_recursion_crash(server):
    server.route("/api/v1/model-versions/2", Reply(200, b"[" * 200_000 + b"]" * 200_000))
    with pytest.raises(BadAnswer, match="nested"):
        resolve("civitai:1@2", progress=False, retry=FAST)
    assert run(cli, ["civitai:1@2", "--quiet"]) == 2


@pytest.mark.parametrize(
    "siblings",
    [
        "x",
        [{"rfilename": 5}],
        [{"rfilename": "a.safetensors", "size": "big"}],
        [{"rfilename": "a.safetensors", "lfs": {"size": 1, "sha256": "zz", "pointerSize": 1}}],
    ],
)
def test_wrong_types_in_the_hubs_model_info_are_one_clear_error(server, siblings):
    info = {"id": "user/repo", "sha": "a" * 40, "siblings": siblings}
    for path in ("/api/models/user/repo", "/api/models/user/repo/revision/main"):
        server.route(path, Reply.json(info))
    with pytest.raises(BadAnswer):
        resolve("user/repo", progress=False, retry=FAST)
    assert run(cli, ["user/repo", "--quiet"]) == 2


def test_a_valid_answer_still_downloads_and_hashes(server):
    data = lora_bytes(seed=3)
    version = _version(server, data)
    server.route("/api/v1/model-versions/2", Reply.json(version))
    server.route("/api/download/files/1", Reply(200, data))
    [got] = resolve("civitai:1@2", progress=False, retry=FAST)
    try:
        assert got.verified and got.sha256 == sha256(data)
        assert json.loads(json.dumps(got.info))["baseModel"] == "SD 1.5"
    finally:
        got.cleanup()
    assert not os.path.exists(got.path)
