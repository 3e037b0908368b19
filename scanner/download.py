"""One streaming HTTP download, hostile-server aware: size cap, retries, resume, hash check, cleanup.

Uses ``httpx2``, the HTTP client huggingface_hub 2.4 already depends on (no new dependency). The cap
is checked three times: against the size a source declares, the Content-Length, and the bytes as
they stream, because any of the three can lie. Bytes go to a hidden ``.part`` file next to the
destination and are renamed only when complete and verified; every other exit path (error,
KeyboardInterrupt) unlinks it.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx2
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from lora_wise.lora.safetensors_io import PICKLE_SUFFIXES

from .errors import (
    AuthRequired,
    FetchError,
    HashMismatch,
    NotFound,
    RateLimited,
    TooLarge,
    TruncatedDownload,
    UnsafeFormat,
)

DEFAULT_MAX_SIZE = 2 * 1024**3  # the largest public LoRAs (Flux, high-rank SDXL) stay well under 2 GiB
MAX_JSON_BYTES = 32 * 1024 * 1024
_FILENAME_RE = re.compile(r"""filename\*?=(?:UTF-8'')?["']?([^"';]+)""", re.IGNORECASE)


def is_pickle_name(name: str) -> bool:
    """Whether a file name says pickle (never downloaded for parsing, never unpickled)."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def format_size(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # unreachable; keeps type checkers calm


def check_size(size: int | None, max_size: int, what: str) -> None:
    """Raise :class:`TooLarge` when a declared size is over the cap."""
    if size is not None and size > max_size:
        raise TooLarge(
            f"{what} is {format_size(size)}, over the {format_size(max_size)} cap: "
            "pass a larger --max-size if you really mean to fetch it"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries on 429/5xx/connection errors; a Retry-After longer than ``max_wait`` is not waited."""

    attempts: int = 4
    base_wait: float = 1.0
    max_wait: float = 60.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)


DEFAULT_RETRY = RetryPolicy()


def retry_after_seconds(headers: httpx2.Headers) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or HTTP-date), or None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class ByteMeter:
    """Counts streamed bytes against the cap and draws a rich progress bar.

    Duck-types the part of tqdm that huggingface_hub's ``http_get`` and Xet reporter use, so that
    ``functools.partial(ByteMeter, max_size=..., progress=...)`` passed as ``tqdm_class`` enforces
    the same streaming cap on Hub downloads (raising inside its loop, whose temp file it then removes).
    """

    def __init__(
        self,
        total: int | None = None,
        initial: int = 0,
        desc: str = "download",
        *,
        max_size: int,
        progress: bool = True,
        **_tqdm_kwargs: Any,
    ) -> None:
        self.n = initial
        self.total = total
        self.max_size = max_size
        self.desc = desc
        self._bar: Progress | None = None
        check_size(total, max_size, desc)
        if progress:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task(desc[-40:], total=total, completed=initial)
            self._bar.start()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.n)
        if self.n > self.max_size:
            raise TooLarge(
                f"{self.desc}: the stream passed the {format_size(self.max_size)} cap (the server's size was "
                "wrong or missing); download stopped. Pass a larger --max-size if you really mean to fetch it"
            )

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def reset(self) -> None:
        self.n = 0
        if self._bar is not None:
            self._bar.update(self._task, completed=0)

    # The rest of the tqdm surface huggingface_hub touches (its Xet download reporter).
    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.n, total=self.total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ByteMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client(timeout: float = 30.0) -> httpx2.Client:
    """An HTTP client that follows redirects (httpx drops Authorization on cross-origin hops)."""
    return httpx2.Client(follow_redirects=True, timeout=httpx2.Timeout(timeout, connect=10.0))


def raise_for_status(response: httpx2.Response, what: str, auth_hint: str) -> None:
    """Map an HTTP error status to a typed error whose message says what to do."""
    status = response.status_code
    if status < 400:
        return
    if status in (404, 410):
        raise NotFound(f"{what}: not found (HTTP {status}); check the id or URL")
    if status in (401, 403):
        raise AuthRequired(f"{what}: access denied (HTTP {status}); {auth_hint}")
    if status == 429:
        wait = retry_after_seconds(response.headers)
        hint = f"retry in {wait:.0f} s" if wait is not None else "wait a while and retry"
        raise RateLimited(f"{what}: rate limited (HTTP 429) after retries; {hint}", retry_after=wait)
    raise FetchError(f"{what}: the server answered HTTP {status}; retry later or check the URL")


def open_stream(
    http: httpx2.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    what: str,
    auth_hint: str = "set the source's token",
    policy: RetryPolicy = DEFAULT_RETRY,
) -> httpx2.Response:
    """GET ``url`` as an open stream, retrying 429/5xx/connection errors with bounded backoff.

    The caller must close the returned response. Errors are typed (see :func:`raise_for_status`).
    """
    for attempt in range(1, policy.attempts + 1):
        last = attempt == policy.attempts
        try:
            response = http.send(http.build_request("GET", url, headers=headers), stream=True)
        except httpx2.TransportError as exc:
            if last:
                raise FetchError(f"{what}: cannot reach {urlsplit(url).netloc} ({exc}); check the URL and network") from exc
            time.sleep(min(policy.base_wait * 2 ** (attempt - 1), policy.max_wait))
            continue
        if response.status_code in policy.statuses and not last:
            wait = retry_after_seconds(response.headers)
            if wait is None:
                wait = policy.base_wait * 2 ** (attempt - 1)
            if wait <= policy.max_wait:
                response.close()
                time.sleep(wait)
                continue
        try:
            raise_for_status(response, what, auth_hint)
        except BaseException:
            response.close()
            raise
        return response
    raise AssertionError("unreachable: the last attempt returns or raises")


def get_json(http: httpx2.Client, url: str, *, headers: dict[str, str] | None = None, what: str,
             auth_hint: str = "set the source's token", policy: RetryPolicy = DEFAULT_RETRY) -> Any:
    """GET a JSON document (bounded in size) with the same retries and typed errors."""
    response = open_stream(http, url, headers=headers, what=what, auth_hint=auth_hint, policy=policy)
    try:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise FetchError(f"{what}: the API answer is over {format_size(MAX_JSON_BYTES)}; not a JSON API")
    finally:
        response.close()
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FetchError(f"{what}: the answer is not JSON; check that the endpoint is right") from exc


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    verified: bool


def safe_filename(name: str | None, default: str = "download.safetensors") -> str:
    """The last path part of a server-given name, never a path (no '..', no separators)."""
    base = PurePosixPath(unquote(name or "").replace("\\", "/")).name.strip()
    return base if base and base not in (".", "..") else default


def _name_from(response: httpx2.Response, url: str) -> str:
    match = _FILENAME_RE.search(response.headers.get("content-disposition", ""))
    if match:
        return safe_filename(match.group(1))
    return safe_filename(urlsplit(str(response.url)).path or urlsplit(url).path)


def _content_length(response: httpx2.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def download(
    url: str,
    dest_dir: Path,
    *,
    filename: str | None = None,
    headers: dict[str, str] | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    policy: RetryPolicy = DEFAULT_RETRY,
    auth_hint: str = "set the source's token",
    resumes: int = 3,
) -> Downloaded:
    """Stream ``url`` into ``dest_dir``, capped, resumed with Range after a cut, and hash-checked.

    ``filename`` (else Content-Disposition, else the URL) names the result; a name that says
    pickle raises :class:`UnsafeFormat` before any body byte is read. ``sha256`` is the published
    hash: a mismatch raises :class:`HashMismatch` and leaves nothing behind.
    """
    check_size(expected_size, max_size, filename or url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f".{uuid.uuid4().hex}.part"
    try:
        with client() as http, open(part, "wb") as out:
            name, size, digest = _stream_resuming(
                http, url, out, filename=filename, headers=dict(headers or {}), max_size=max_size,
                progress=progress, policy=policy, auth_hint=auth_hint, resumes=resumes,
            )
        if expected_size is not None and size != expected_size:
            raise TruncatedDownload(
                f"{name}: got {size} bytes, the source says {expected_size}; retry the download"
            )
        if sha256 is not None and digest != sha256.lower():
            raise HashMismatch(
                f"{name}: SHA-256 {digest[:16]}... does not match the published {sha256.lower()[:16]}...; "
                "the file was altered or corrupted in transit: do not trust it, retry later"
            )
        final = dest_dir / name
        os.replace(part, final)
        return Downloaded(path=final, size=size, sha256=digest, verified=sha256 is not None)
    finally:
        part.unlink(missing_ok=True)


def _stream_resuming(
    http: httpx2.Client, url: str, out: Any, *, filename: str | None, headers: dict[str, str], max_size: int,
    progress: bool, policy: RetryPolicy, auth_hint: str, resumes: int,
) -> tuple[str, int, str]:
    """Write the body to ``out``; on a cut, resume with a Range request when the server allows it."""
    hasher = hashlib.sha256()
    what = filename or url
    with ByteMeter(desc=safe_filename(what), max_size=max_size, progress=progress) as meter:
        for attempt in range(resumes + 1):
            have = meter.n
            # identity: Content-Length, the cap and the published hash all refer to the raw bytes
            request_headers = {**headers, "Accept-Encoding": "identity"}
            if have:
                request_headers["Range"] = f"bytes={have}-"
            response = open_stream(http, url, headers=request_headers, what=what, auth_hint=auth_hint, policy=policy)
            try:
                name = filename or _name_from(response, url)
                if is_pickle_name(name):
                    raise UnsafeFormat(f"{name}: a pickle file; unsafe format, not scanned (ask for .safetensors)")
                if have and response.status_code != 206:  # the server ignored Range: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    meter.reset()
                    have = 0
                elif have and not response.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    raise TruncatedDownload(f"{what}: the server resumed at the wrong offset; retry the download")
                length = _content_length(response)
                total = have + length if length is not None else None
                check_size(total, max_size, name)
                meter.set_total(total)
                complete = _copy_body(response, out, hasher, meter)
            finally:
                response.close()
            if complete and (total is None or meter.n == total):
                return name, meter.n, hasher.hexdigest()
            if response.headers.get("accept-ranges", "").lower() != "bytes" or attempt == resumes:
                break
        raise TruncatedDownload(
            f"{what}: the connection ended after {meter.n} of {total if total is not None else '?'} bytes "
            f"({attempt} resume(s) tried); retry later"
        )


def _copy_body(response: httpx2.Response, out: Any, hasher: Any, meter: ByteMeter) -> bool:
    """Copy the body; False when the connection broke before its end."""
    try:
        for chunk in response.iter_raw():  # unbuffered: a cut keeps every byte received
            out.write(chunk)
            hasher.update(chunk)
            meter.update(len(chunk))
    except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout):
        return False
    return True
