"""Real stand-ins for the scanner's sources: LoRA files written by safetensors/peft, and a loopback
HTTP server (127.0.0.1 only, started and stopped by the tests) that answers like the Hub or CivitAI,
with scripted faults: error statuses, Retry-After, truncated bodies, chunked bodies, ignored Range.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save, save_file

# ---------------------------------------------------------------- LoRA files


def lora_tensors(
    style: str = "diffusers", rank: int = 4, seed: int = 0, blocks: int = 2
) -> dict[str, np.ndarray]:
    """Random low-rank A/B pairs under diffusers (lora_A/lora_B) or kohya (lora_down/lora_up + alpha) keys."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for b in range(blocks):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            path = f"down_blocks.{b}.attentions.0.transformer_blocks.0.attn1.{proj}"
            down = rng.normal(size=(rank, 32)).astype(np.float32)
            up = (rng.normal(size=(32, rank)) * 0.01).astype(np.float32)
            if style == "diffusers":
                tensors[f"unet.{path}.lora_A.weight"] = down
                tensors[f"unet.{path}.lora_B.weight"] = up
            else:
                key = "lora_unet_" + path.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = down
                tensors[f"{key}.lora_up.weight"] = up
                tensors[f"{key}.alpha"] = np.array(float(rank), dtype=np.float32)
    return tensors


def lora_bytes(
    style: str = "diffusers", rank: int = 4, seed: int = 0, metadata: dict[str, str] | None = None
) -> bytes:
    return save(lora_tensors(style, rank, seed), metadata=metadata)


def write_lora(
    path: Path, style: str = "diffusers", rank: int = 4, seed: int = 0, metadata: dict[str, str] | None = None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_tensors(style, rank, seed), str(path), metadata=metadata)
    return path


def write_peft_adapter(folder: Path, rank: int = 4) -> Path:
    """A PEFT adapter folder written by peft itself (adapter_model.safetensors + adapter_config.json)."""
    import torch
    from peft import LoraConfig, get_peft_model

    class Attn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.to_q = torch.nn.Linear(16, 16)
            self.to_v = torch.nn.Linear(16, 16)

    torch.manual_seed(0)
    model = get_peft_model(Attn(), LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_v"]))
    model.save_pretrained(str(folder))
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


# ---------------------------------------------------------------- loopback HTTP server


@dataclass
class Reply:
    """One scripted answer. ``truncate_at``: announce the full length but stop sending at that offset."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None
    chunked: bool = False  # no Content-Length: the client only learns the size by reading
    ranges: bool = True  # honour Range with 206 (else answer 200 with the whole body)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


Route = list[Reply] | Callable[[Seen], Reply]


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> with scripted routes; records every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        handler = _make_handler(self)
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def route(self, path: str, *replies: Reply | Callable[[Seen], Reply]) -> None:
        """Answer ``path`` with the replies in turn (the last one repeats), or with a callable."""
        if len(replies) == 1 and callable(replies[0]):
            self.routes[path] = replies[0]  # type: ignore[assignment]
        else:
            self.routes[path] = list(replies)  # type: ignore[arg-type]

    def seen(self, path_prefix: str = "", method: str | None = None) -> list[Seen]:
        return [
            r
            for r in self.requests
            if r.path.startswith(path_prefix) and (method is None or r.method == method)
        ]

    def next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            route = self.routes.get(seen.path.split("?", 1)[0])
            if route is None:
                return Reply(404, b"no such route")
            if not callable(route):
                return route.pop(0) if len(route) > 1 else route[0]
        # Outside the lock: a slow route must not hold back (and hide) the requests that come meanwhile.
        return route(seen)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-body (cap reached, Ctrl-C) are what the tests provoke


_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._answer(head=True)

        def do_GET(self) -> None:
            self._answer(head=False)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self._answer(head=False)

        def _answer(self, head: bool) -> None:
            seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
            reply = server.next_reply(seen)
            body, status, start = reply.body, reply.status, 0
            headers = dict(reply.headers)
            match = _RANGE.match(seen.headers.get("range", ""))
            if match and status == 200 and reply.ranges:
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(body) - 1
                end = min(end, len(body) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                body, status = body[start : end + 1], 206
            if reply.ranges and reply.status == 200:
                headers.setdefault("Accept-Ranges", "bytes")
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if reply.chunked and not head:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 65536):
                    piece = body[i : i + 65536]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
                return
            self.send_header("Content-Length", headers.get("Content-Length", str(len(body))))
            self.end_headers()
            if head:
                return
            if reply.truncate_at is not None:
                # Stop at an absolute offset of the full body, then hang up mid-message.
                self.wfile.write(body[: max(0, reply.truncate_at - start)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


# ---------------------------------------------------------------- a fake Hub and a fake CivitAI


def hub_repo(
    server: LoopbackServer,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = "a" * 40,
    card: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    listed_sha256: dict[str, str] | None = None,
    listed_size: dict[str, int] | None = None,
    file_replies: dict[str, list[Reply]] | None = None,
    cdn: LoopbackServer | None = None,
) -> None:
    """Serve a model repo the way huggingface_hub 2.4 reads it: model info (with blobs), HEAD and GET
    on ``/<repo>/resolve/<rev>/<file>`` with X-Repo-Commit, ETag and Content-Length, Range on GET.

    ``listed_*`` make the listing lie (hash, size); ``file_replies`` script a file's GET answers.
    With ``cdn`` (another origin), LFS files answer as on the real Hub: a 302 to the CDN carrying
    X-Linked-Etag / X-Linked-Size, the bytes served by the CDN.
    """
    listed_sha256, listed_size = listed_sha256 or {}, listed_size or {}
    siblings = []
    for name, data in files.items():
        sibling: dict[str, Any] = {
            "rfilename": name,
            "size": listed_size.get(name, len(data)),
            "blobId": git_sha1(data),
        }
        if not name.endswith((".json", ".md", ".txt")):  # the Hub stores weights through LFS
            sibling["lfs"] = {
                "size": listed_size.get(name, len(data)),
                "sha256": listed_sha256.get(name, sha256(data)),
                "pointerSize": 134,
            }
        siblings.append(sibling)
    info = {
        "id": repo_id,
        "sha": commit,
        "private": False,
        "siblings": siblings,
        "tags": tags or [],
        "cardData": card or {},
    }
    for path in (
        f"/api/models/{repo_id}",
        f"/api/models/{repo_id}/revision/main",
        f"/api/models/{repo_id}/revision/{commit}",
    ):
        server.route(path, Reply.json(info))
    for name, data in files.items():
        is_lfs = "lfs" in next(s for s in siblings if s["rfilename"] == name)
        etag = sha256(data) if is_lfs else git_sha1(data)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        scripted = (file_replies or {}).get(name)
        route = _resolve_route(data, headers, list(scripted) if scripted else None)
        if cdn is not None and is_lfs:
            cdn.route(f"/blobs/{etag}", route)
            redirect = {
                **headers,
                "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(len(data)),
                "Location": f"{cdn.url}/blobs/{etag}?signature=loopback",
            }
            route = _redirect_route(redirect)
        for rev in ("main", commit):
            server.route(f"/{repo_id}/resolve/{rev}/{name}", route)


def _resolve_route(
    data: bytes, headers: dict[str, str], scripted: list[Reply] | None
) -> Callable[[Seen], Reply]:
    def answer(seen: Seen) -> Reply:
        if seen.method == "HEAD" or not scripted:
            return Reply(200, data, dict(headers))
        reply = scripted.pop(0) if len(scripted) > 1 else scripted[0]
        return Reply(
            reply.status,
            reply.body,
            {**headers, **reply.headers},
            reply.truncate_at,
            reply.chunked,
            reply.ranges,
        )

    return answer


def _redirect_route(headers: dict[str, str]) -> Callable[[Seen], Reply]:
    return lambda seen: Reply(302, b"", dict(headers), ranges=False)


def hub_cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "b" * 40) -> Path:
    """An offline cache folder as huggingface_hub lays it out: refs/main, blobs/<etag>, snapshot symlinks."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = storage / "blobs" / (sha256(data) if name.endswith(".safetensors") else git_sha1(data))
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    return storage


def civitai_version(
    server: LoopbackServer,
    version_id: int,
    model_id: int,
    files: list[dict[str, Any]],
    *,
    model_type: str = "LORA",
    base_model: str = "SD 1.5",
) -> dict[str, Any]:
    """The model-version JSON shape of CivitAI's API (REFERENCE §6), with files served by ``server``."""
    return {
        "id": version_id,
        "modelId": model_id,
        "name": f"v{version_id}",
        "baseModel": base_model,
        "baseModelType": "Standard",
        "trainedWords": ["sks style"],
        "model": {"name": f"Model {model_id}", "type": model_type, "nsfw": False},
        "files": files,
        "downloadUrl": f"{server.url}/api/download/models/{version_id}",
    }


def civitai_file(
    server: LoopbackServer,
    name: str,
    data: bytes,
    *,
    file_id: int = 1,
    primary: bool = True,
    fmt: str = "SafeTensor",
    published_sha256: str | None = None,
    size_kb: float | None = None,
    type_: str = "Model",
) -> dict[str, Any]:
    return {
        "id": file_id,
        "name": name,
        "type": type_,
        "primary": primary,
        "sizeKB": size_kb if size_kb is not None else len(data) / 1024,
        "metadata": {"format": fmt, "fp": "fp32", "size": "full"},
        "hashes": {"SHA256": (published_sha256 or sha256(data)).upper(), "AutoV2": sha256(data)[:10].upper()},
        "downloadUrl": f"{server.url}/api/download/files/{file_id}",
    }


def serve_civitai(
    server: LoopbackServer, model_id: int, versions: list[dict[str, Any]], downloads: dict[int, list[Reply]]
) -> None:
    """Routes for /api/v1/models/{id}, /api/v1/model-versions/{id} and each file's downloadUrl."""
    model = {
        "id": model_id,
        "name": f"Model {model_id}",
        "type": versions[0]["model"]["type"],
        "nsfw": False,
        "tags": ["style"],
        "modelVersions": [{k: v for k, v in ver.items() if k != "model"} for ver in versions],
    }
    server.route(f"/api/v1/models/{model_id}", Reply.json(model))
    for ver in versions:
        server.route(f"/api/v1/model-versions/{ver['id']}", Reply.json(ver))
    for file_id, replies in downloads.items():
        server.route(f"/api/download/files/{file_id}", *replies)


def leftovers(folder: Path) -> list[Path]:
    """Files under ``folder`` that a download may have left: partial, incomplete or temp files."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and (p.name.endswith((".part", ".incomplete")) or p.name.startswith("."))
    ]


@contextmanager
def trickle_server(body: bytes, every: float = 0.5) -> Iterator[str]:
    """A server that answers 200 with the full Content-Length at once, then sends the body one byte
    every ``every`` seconds: it never stalls, so only an overall deadline ends the transfer."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAccept-Ranges: none\r\n\r\n" % len(body)
                )
                for i in range(len(body)):
                    if stop.wait(every):
                        return
                    conn.sendall(body[i : i + 1])
            except OSError:
                return  # the client gave up: what the tests want

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
