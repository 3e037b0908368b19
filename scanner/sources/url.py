"""Plain http(s) URLs: a capped, resumable download, and a safetensors header read with two Range GETs."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub.utils import SafetensorsFileMetadata, TensorInfo

from ..download import (
    DEFAULT_MAX_SIZE,
    DEFAULT_RETRY,
    Deadline,
    RetryPolicy,
    client,
    download,
    format_size,
    is_pickle_name,
    open_stream,
    safe_filename,
)
from ..errors import FetchError, InvalidHeader, TransferTimeout, UnsafeFormat
from ..targets import Target
from .base import FetchedFile

# safetensors itself refuses headers over 100 MB; real LoRA headers are a few hundred KB.
MAX_HEADER_BYTES = 100_000_000
PROBE_BYTES = 64 * 1024


def fetch(
    target: Target,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    progress: bool = True,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[FetchedFile]:
    """Download the URL into a fresh temp folder (``FetchedFile.cleanup`` removes it)."""
    assert target.url is not None
    url = target.url
    name = safe_filename(urlsplit(url).path)
    if is_pickle_name(name):  # refused before any request: the bytes would be useless and unsafe
        raise UnsafeFormat(f"{url}: a pickle file ({name}): unsafe format, not scanned")
    dest = Path(tempfile.mkdtemp(prefix="lora-scan-"))
    try:
        got = download(
            url,
            dest,
            max_size=max_size,
            progress=progress,
            policy=policy,
            auth_hint="the URL needs credentials",
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return [
        FetchedFile(
            path=got.path,
            source="url",
            source_id=url,
            name=got.path.name,
            size=got.size,
            url=url,
            sha256=got.sha256,
            verified=False,
            temporary=True,
        )
    ]


def read_header(
    url: str, *, headers: dict[str, str] | None = None, policy: RetryPolicy = DEFAULT_RETRY
) -> SafetensorsFileMetadata:
    """The safetensors header of a remote file: 8 bytes for its length, then the JSON, by Range GETs."""
    with client(policy) as http:
        # Like huggingface_hub: one GET of the first 64 KB holds most LoRA headers whole.
        head = _read_range(http, url, 0, PROBE_BYTES, headers, policy)
        if len(head) < 8:
            raise InvalidHeader(f"{url}: fewer than 8 bytes: not a safetensors file")
        (length,) = struct.unpack("<Q", head[:8])
        if length > MAX_HEADER_BYTES:
            raise InvalidHeader(
                f"{url}: header length {format_size(length)} is implausible: not a safetensors file"
            )
        raw = (
            head[8 : 8 + length]
            if 8 + length <= len(head)
            else _read_range(http, url, 8, length, headers, policy)
        )
    if len(raw) < length:
        raise InvalidHeader(
            f"{url}: the file ends inside its safetensors header: truncated or not safetensors"
        )
    return parse_header(raw, url)


def parse_header(raw: bytes, where: str) -> SafetensorsFileMetadata:
    """Validate and wrap a safetensors JSON header (the same type huggingface_hub returns for the Hub)."""
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("not an object")
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not an object")
        return SafetensorsFileMetadata(
            metadata=metadata,
            tensors={key: _tensor(t) for key, t in header.items() if key != "__metadata__"},
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise InvalidHeader(
            f"{where}: not a valid safetensors header ({type(exc).__name__}: {exc})"[:300]
        ) from exc


def _tensor(entry: Any) -> TensorInfo:
    """One tensor's entry, with the types safetensors itself requires (a header is outside input)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        raise ValueError("a tensor entry without a dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ValueError("a tensor shape that is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ValueError("data_offsets that are not two byte offsets")
    return TensorInfo(dtype=entry["dtype"], shape=shape, data_offsets=(offsets[0], offsets[1]))


def _read_range(
    http: httpx2.Client, url: str, start: int, count: int, headers: dict[str, str] | None, policy: RetryPolicy
) -> bytes:
    """Up to ``count`` bytes from ``start``; if the server ignores Range (200), skip ahead and stop early."""
    request_headers = {
        **(headers or {}),
        "Range": f"bytes={start}-{start + count - 1}",
        "Accept-Encoding": "identity",
    }
    deadline = Deadline(policy.deadline, url)
    response = open_stream(http, url, headers=request_headers, what=url, policy=policy, deadline=deadline)
    skip = start if response.status_code == 200 else 0
    out = bytearray()
    try:
        for chunk in response.iter_raw():  # unbuffered: a cut keeps every byte received
            deadline.check()
            if skip:
                dropped = min(skip, len(chunk))
                chunk, skip = chunk[dropped:], skip - dropped
            out += chunk
            if len(out) >= count:
                break
    except httpx2.TimeoutException as exc:
        raise TransferTimeout(
            f"{url}: the header read stalled (no byte within the stall timeout); retry"
        ) from exc
    except (httpx2.RemoteProtocolError, httpx2.ReadError) as exc:
        raise FetchError(f"{url}: the connection broke while reading the header; retry") from exc
    finally:
        response.close()
    return bytes(out[:count])
