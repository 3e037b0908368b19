"""Loopback stand-ins for the searches a crawl runs (the Hub's /api/models with Link paging, CivitAI's
/api/v1/models with cursor paging), on top of sources_helpers' file-serving stand-ins, and small
readers of a crawl's state for the assertions."""

from __future__ import annotations

import json
import socket
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sources_helpers import LoopbackServer, Reply, Seen, civitai_file, hub_repo, write_lora

from scanner.download import RetryPolicy

FAST = RetryPolicy(attempts=2, base_wait=0.05, max_wait=5)


def redirect_temp(tmp_path: Path, monkeypatch: Any) -> Path:
    """Send downloads and the crawl's per-task caches to a folder of the test, to check none is left."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def leftover(temp: Path) -> list[Path]:
    return [p for p in temp.iterdir() if p.name.startswith("lora-scan")]  # torch keeps its own folder there


@contextmanager
def civitai_stand_in(monkeypatch: Any) -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        monkeypatch.setenv("CIVITAI_ENDPOINT", server.url)
        monkeypatch.setenv("CIVITAI_TOKEN", "civitai-loopback-token")
        yield server


def lora_list(folder: Path, count: int) -> Path:
    """``count`` local LoRA files and a list file naming them (absolute paths)."""
    paths = [write_lora(folder / f"l{i}.safetensors", seed=i) for i in range(count)]
    listed = folder / "targets.txt"
    listed.write_text("".join(f"{p}\n" for p in paths))
    return listed


def query(seen: Seen) -> dict[str, list[str]]:
    return parse_qs(urlsplit(seen.path).query)


def serve_hub_search(server: LoopbackServer, models: list[dict[str, Any]], page: int = 2) -> None:
    """``GET /api/models``: the given model entries, ``page`` per answer, next pages by a Link header."""

    def answer(seen: Seen) -> Reply:
        offset = int(query(seen).get("offset", ["0"])[0])
        body = models[offset : offset + page]
        headers = {}
        if offset + page < len(models):
            headers["Link"] = f'<{server.url}/api/models?offset={offset + page}>; rel="next"'
        return Reply.json(body, headers=headers)

    server.route("/api/models", answer)


def hub_model(
    server: LoopbackServer, repo_id: str, files: dict[str, bytes], tags: list[str] | None = None
) -> dict:
    """Serve a repo (files with Range) and return its search entry, as ``expand=siblings,sha,tags`` gives."""
    commit = (repo_id.encode().hex() * 40)[:40]
    hub_repo(server, repo_id, files, commit=commit, tags=tags)
    return {
        "id": repo_id,
        "_id": repo_id,
        "sha": commit,
        "tags": tags or [],
        "siblings": [{"rfilename": name} for name in files],
    }


def serve_civitai_search(server: LoopbackServer, models: list[dict[str, Any]], page: int = 2) -> None:
    """``GET /api/v1/models``: ``page`` models per answer, the next one by ``metadata.nextCursor``."""

    def answer(seen: Seen) -> Reply:
        params = query(seen)
        start = int(params.get("cursor", ["0"])[0])
        size = min(page, int(params.get("limit", [str(page)])[0]))
        items = models[start : start + size]
        more = start + size < len(models)
        return Reply.json({"items": items, "metadata": {"nextCursor": str(start + size) if more else None}})

    server.route("/api/v1/models", answer)


def civitai_model(
    server: LoopbackServer,
    model_id: int,
    version_id: int,
    data: bytes,
    *,
    name: str | None = None,
    replies: list[Reply] | None = None,
    download_url: str | None = None,
    **file_kw: Any,
) -> dict:
    """A search entry with one version and its primary file; the version API and the download served."""
    entry = civitai_file(server, f"lora_{model_id}.safetensors", data, file_id=version_id, **file_kw)
    entry["downloadUrl"] = download_url or entry["downloadUrl"]
    version = {
        "id": version_id,
        "modelId": model_id,
        "name": f"v{version_id}",
        "baseModel": "SD 1.5",
        "trainedWords": ["sks"],
        "files": [entry],
        "downloadUrl": entry["downloadUrl"],
    }
    model = {
        "id": model_id,
        "name": name or f"Model {model_id}",
        "type": "LORA",
        "nsfw": False,
        "creator": {"username": "someone"},
        "modelVersions": [version],
    }
    server.route(
        f"/api/v1/model-versions/{version_id}",
        Reply.json({**version, "model": {"name": model["name"], "type": "LORA", "nsfw": False}}),
    )
    server.route(f"/api/download/files/{version_id}", *(replies or [Reply(200, data)]))
    return model


@contextmanager
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers (a stalled CDN): its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def rows(state: Path) -> dict[str, dict[str, Any]]:
    """The targets table, by target, with JSON columns decoded."""
    db = sqlite3.connect(state)
    db.row_factory = sqlite3.Row
    out = {}
    for r in db.execute("SELECT * FROM targets"):
        row = dict(r)
        for key in ("listing", "header", "result"):
            row[key] = json.loads(row[key]) if row[key] else None
        out[row["target"]] = row
    db.close()
    return out


def full_downloads(server: LoopbackServer, path: str) -> int:
    """GETs of a file that asked for the whole body (no Range, or a Range from byte 0 to the end)."""
    return sum(1 for s in server.seen(path, "GET") if s.headers.get("range", "bytes=0-") == "bytes=0-")
