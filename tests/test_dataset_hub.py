"""The Hub code paths, with no Hub: offline loading from a cache folder, publishing to a loopback stand-in.

``HubStandIn`` is a real HTTP server on 127.0.0.1 answering the calls huggingface_hub 2.4.0 makes
for ``list_repo_tree``, ``create_repo``, ``create_commit`` (README validation, preupload, the
git-LFS batch API with basic single-part PUTs, the ndjson commit), plus ``repo_info`` and
``resolve`` so that a published folder downloads back through ``snapshot_download``. It stores
what it receives, so the tests compare the "remote" repo with the local folder byte for byte.
hf_xet is disabled for these tests (the stand-in does not speak the Xet CAS protocol): the real Hub takes Xet
uploads for the same commit, and that path was not exercised here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import huggingface_hub.constants
import numpy as np
import pytest
import yaml
from dataset_helpers import isolated_datasets_cache, make_factory  # noqa: F401

from lora_wise.dataset.build import build_dataset
from lora_wise.dataset.hub import download, local_files, publish
from lora_wise.dataset.load import load_benchmark
from lora_wise.errors import HubError

CONFIG = "medium-tiny_sd-r8"
REPO = "user/lora-wise"
TOKEN = "hf_loopback_test_token"
LFS_SUFFIXES = (".parquet", ".safetensors", ".arrow")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn(ThreadingHTTPServer):
    """The Hub's repo / upload endpoints, in memory. ``log`` records (method, path) of every call."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos: dict[str, dict[str, bytes]] = {}  # repo_id -> path -> content
        self.lfs_paths: dict[str, set[str]] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> content
        self.commits: dict[str, list[str]] = {}
        self.log: list[tuple[str, str]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def head(self, repo_id: str) -> str:
        return self.commits[repo_id][-1] if self.commits[repo_id] else "0" * 40

    def tree(self, repo_id: str) -> list[dict]:
        files, entries, folders = self.repos[repo_id], [], set()
        for path, data in sorted(files.items()):
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
            if path in self.lfs_paths[repo_id]:
                sha = hashlib.sha256(data).hexdigest()
                pointer = (
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n"
                ).encode()
                entry.update(
                    oid=git_blob_id(pointer), lfs={"oid": sha, "size": len(data), "pointerSize": len(pointer)}
                )
            entries.append(entry)
            parts = path.split("/")[:-1]
            folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        return entries


class _Handler(BaseHTTPRequestHandler):
    server: HubStandIn

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload=None, headers: dict | None = None) -> None:
        body = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._send(401, {"error": "Invalid credentials"})
        return False

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        self.server.log.append(("GET", path))
        if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(match.group(1), match.group(3), body=True)
        match = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)(?:/revision/([^/]+)|/tree/([^/]+)(/.*)?)?", path)
        if not match:
            return self._send(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})
        repo_id = match.group(1)
        if repo_id not in self.server.repos:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if match.group(3) is None:  # repo_info
            files = [{"rfilename": p} for p in sorted(self.server.repos[repo_id])]
            return self._send(
                200, {"id": repo_id, "sha": self.server.head(repo_id), "siblings": files, "private": False}
            )
        self._send(200, self.server.tree(repo_id))

    def do_HEAD(self):
        path = unquote(urlsplit(self.path).path)
        self.server.log.append(("HEAD", path))
        if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(match.group(1), match.group(3), body=False)
        self._send(404, {"error": "not found"}, {"X-Error-Code": "EntryNotFound"})

    def _resolve(self, repo_id: str, file: str, body: bool):
        data = self.server.repos.get(repo_id, {}).get(file)
        if data is None:
            return self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        lfs = file in self.server.lfs_paths[repo_id]
        etag = hashlib.sha256(data).hexdigest() if lfs else git_blob_id(data)
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", self.server.head(repo_id))
        if lfs:
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_PUT(self):
        path = urlsplit(self.path).path
        self.server.log.append(("PUT", path))
        data = self._body()
        oid = path.rsplit("/", 1)[-1]
        if hashlib.sha256(data).hexdigest() != oid:
            return self._send(400, {"error": "sha256 mismatch"})
        self.server.lfs_store[oid] = data
        self._send(200)

    def do_POST(self):
        path = urlsplit(self.path).path
        self.server.log.append(("POST", path))
        body = self._body()
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                yaml.safe_load(content.split("---")[1])
            except yaml.YAMLError as exc:
                return self._send(400, {"errors": [{"message": str(exc)}]})
            return self._send(200, {"errors": [], "warnings": []})
        if not self._authorized():
            return None
        if path == "/api/repos/create":
            return self._create(json.loads(body))
        if match := re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            return self._lfs_batch(json.loads(body))
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/preupload/([^/]+)", path):
            return self._preupload(match.group(1), json.loads(body))
        if match := re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/commit/([^/]+)", path):
            return self._commit(
                match.group(1), [json.loads(line) for line in body.splitlines() if line.strip()]
            )
        self._send(404, {"error": f"no route {path}"})

    def _create(self, payload: dict):
        assert payload["type"] == "dataset"
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.server.repos:
            return self._send(409, {"error": "You already created this dataset repo", "url": repo_id})
        self.server.repos[repo_id], self.server.lfs_paths[repo_id], self.server.commits[repo_id] = (
            {},
            set(),
            [],
        )
        self.server.repos[repo_id][".gitattributes"] = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"
        self._send(200, {"url": f"{self.server.url}/datasets/{repo_id}", "name": repo_id})

    def _preupload(self, repo_id: str, payload: dict):
        if repo_id not in self.server.repos:
            return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        files = []
        for f in payload["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10_000_000
            existing = self.server.repos[repo_id].get(f["path"])
            oid = None
            if existing is not None:
                oid = hashlib.sha256(existing).hexdigest() if lfs else git_blob_id(existing)
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._send(200, {"files": files})

    def _lfs_batch(self, payload: dict):
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server.lfs_store:
                entry["actions"] = {
                    "upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}", "header": {}}
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _commit(self, repo_id: str, lines: list[dict]):
        files, lfs_paths = dict(self.server.repos[repo_id]), set(self.server.lfs_paths[repo_id])
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.server.lfs_store:
                    return self._send(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                files[value["path"]] = self.server.lfs_store[value["oid"]]
                lfs_paths.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"])
                lfs_paths.discard(value["path"])
        self.server.repos[repo_id], self.server.lfs_paths[repo_id] = files, lfs_paths
        oid = hashlib.sha1(json.dumps(lines).encode()).hexdigest()
        self.server.commits[repo_id].append(oid)
        self._send(200, {"commitUrl": f"{self.server.url}/datasets/{repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})  # fmt: skip


@pytest.fixture
def hub(monkeypatch):
    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # The suite runs offline; these tests talk to 127.0.0.1 only. No Xet CAS in the stand-in.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def folder(tmp_path):
    make_factory(tmp_path / "factory", n_micro=3, sizes=(1, 10), steps=(100, 200))
    build_dataset(tmp_path / "factory", tmp_path / "ds", weights=True)
    return tmp_path / "ds"


def remote_equals_local(hub: HubStandIn, folder: Path) -> bool:
    remote = {p: d for p, d in hub.repos[REPO].items() if p != ".gitattributes"}
    return remote == {rel: path.read_bytes() for rel, path in local_files(folder).items()}


def writes(hub: HubStandIn) -> list[tuple[str, str]]:
    return [call for call in hub.log if call[0] != "GET"]


def test_publish_creates_the_repo_and_a_second_publish_uploads_nothing(hub, folder):
    plan = publish(folder, REPO, private=True)
    assert not plan.repo_exists and plan.commit_url
    assert {f.path for f in plan.uploads} == set(local_files(folder)) and all(
        f.reason == "new" for f in plan.uploads
    )
    assert ("POST", "/api/repos/create") in hub.log
    assert sum(m == "PUT" for m, _ in hub.log) == sum(p.endswith(".parquet") for p in local_files(folder))
    assert remote_equals_local(hub, folder)

    hub.log.clear()
    again = publish(folder, REPO)
    assert again.uploads == [] and again.deletions == [] and again.commit_url is None
    assert sorted(again.unchanged) == sorted(local_files(folder))
    assert writes(hub) == []  # no create, no preupload, no LFS, no commit
    assert len(hub.commits[REPO]) == 1


def test_publish_sends_only_what_changed_and_removes_stale_shards(hub, folder, tmp_path):
    publish(folder, REPO)
    build_dataset(tmp_path / "factory", folder, weights=False)  # same spectra, weights config dropped
    hub.log.clear()
    plan = publish(folder, REPO)
    assert {f.path for f in plan.uploads} == {"README.md", "lora_wise.json"}
    assert plan.deletions and all(p.startswith(f"data/{CONFIG}-weights/") for p in plan.deletions)
    assert not any(m == "PUT" for m, _ in hub.log)  # the spectra shards did not go up again
    assert remote_equals_local(hub, folder)


def test_dry_run_lists_what_would_go_up_and_sends_nothing(hub, folder):
    plan = publish(folder, REPO, dry_run=True)
    assert plan.dry_run and not plan.repo_exists
    assert {f.path for f in plan.uploads} == set(local_files(folder))
    assert plan.upload_bytes == sum(p.stat().st_size for p in local_files(folder).values())
    assert writes(hub) == [] and REPO not in hub.repos


def test_publish_without_a_valid_token_is_a_one_line_error(hub, folder, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HubError) as info:
        publish(folder, REPO)
    assert "\n" not in str(info.value)


def test_publish_command_dry_run_then_real(hub, folder, capsys):
    import click

    from lora_wise.cli.dataset import publish as publish_command
    from lora_wise.cli.tools import run

    cli = click.Group("lora-wise", commands={"publish": publish_command})
    assert run(cli, ["publish", str(folder), "--repo-id", REPO, "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and len(plan["uploads"]) == len(local_files(folder)) and REPO not in hub.repos
    assert run(cli, ["publish", str(folder), "--repo-id", REPO]) == 0
    assert remote_equals_local(hub, folder)
    assert run(cli, ["publish", str(folder), "--repo-id", REPO]) == 0
    assert "is up to date" in capsys.readouterr().out


def test_published_dataset_downloads_and_loads_back(hub, folder, tmp_path, monkeypatch):
    publish(folder, REPO)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    table = load_benchmark(REPO, CONFIG, split="train")  # only this config's shards come down
    fetched = [p for m, p in hub.log if m == "GET" and "/resolve/" in p]
    assert fetched and not any("-weights/" in p for p in fetched)
    local = load_benchmark(folder, CONFIG, split="train")
    assert table.model_id.tolist() == local.model_id.tolist()
    np.testing.assert_array_equal(table.ba, local.ba)


# --------------------------------------------------------------------------- offline download / load


def offline_cache(tmp_path: Path, folder: Path, revision: str = "a" * 40) -> Path:
    """A Hub cache holding ``folder`` as revision ``main`` of dataset ``user/lora-wise``."""
    repo = tmp_path / "hub" / "datasets--user--lora-wise"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(folder, repo / "snapshots" / revision)
    return tmp_path / "hub"


def test_load_benchmark_through_the_hub_path_offline(folder, tmp_path):
    cache = offline_cache(tmp_path, folder)
    script = (
        "import json; from lora_wise.dataset.load import load_benchmark; "
        "from lora_wise.dataset.hub import download\n"
        f"t = load_benchmark('{REPO}', '{CONFIG}', split='test', step=200)\n"
        f"print(json.dumps({{'folder': str(download('{REPO}')), 'ids': t.model_id.tolist(), "
        "'ba': t.ba.tolist(), 'layers': t.layers}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "home"), "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(got["folder"]) == cache / "datasets--user--lora-wise" / "snapshots" / ("a" * 40)
    local = load_benchmark(folder, CONFIG, split="test", step=200, cache_dir=str(tmp_path / "c"))
    assert got["ids"] == local.model_id.tolist() and got["layers"] == local.layers
    np.testing.assert_array_equal(np.array(got["ba"]), local.ba)


def test_offline_download_of_an_uncached_repo_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError) as info:
        download("user/not-cached", allow_patterns=["data/*"], token=False)
    assert "\n" not in str(info.value)
