"""One streaming HTTP download, hostile-server aware: size and time caps, retries, resume, hash check.

Uses ``httpx2``, the HTTP client huggingface_hub 2.4 already depends on (no new dependency). The cap
is checked three times: against the size a source declares, the Content-Length, and the bytes as
they stream, because any of the three can lie. Time is capped twice: a stall timeout (no byte for
``RetryPolicy.stall`` seconds) and an overall deadline (``RetryPolicy.deadline``), because a server
sending one byte a second never stalls. Bytes go to a hidden ``.part`` file next to the
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

from lora_wise.errors import one_line
from lora_wise.lora.safetensors_io import PICKLE_SUFFIXES

from .errors import (
    AuthRequired,
    BadAnswer,
    FetchError,
    HashMismatch,
    NotFound,
    RateLimited,
    RedirectLoop,
    Refused,
    TooLarge,
    TransferTimeout,
    TruncatedDownload,
    UnsafeFormat,
)
from .paths import check_name, inside

DEFAULT_MAX_SIZE = 2 * 1024**3  # the largest public LoRAs (Flux, high-rank SDXL) stay well under 2 GiB
MAX_JSON_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 10  # CivitAI and the Hub use one or two hops (API -> CDN); more is a loop or a trap
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
    """How one request is treated: bounded retries on 429/5xx/connection errors (a Retry-After longer
    than ``max_wait`` is not waited), a stall timeout and an overall deadline per transfer (seconds)."""

    attempts: int = 4
    base_wait: float = 1.0
    max_wait: float = 60.0
    statuses: tuple[int, ...] = (429, 500, 502, 503, 504)
    stall: float = 30.0  # no byte for this long: the connection is dead
    deadline: float = 3600.0  # a whole download, retries and resumes included: 2 GiB at 0.6 MB/s


class Deadline:
    """The moment a transfer must be over; ``check`` raises :class:`TransferTimeout` once it has passed."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            self.fail()

    def fail(self) -> None:
        raise TransferTimeout(
            f"{self.what}: timed out: the transfer ran past its {self.seconds:g} s deadline "
            "(a slow or stalling server); "
            "retry later"
        )


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
        deadline: Deadline | float | None = None,
        **_tqdm_kwargs: Any,
    ) -> None:
        self.n = initial
        # A number starts the clock now: huggingface_hub makes one meter per file it streams.
        self.deadline = Deadline(deadline, desc) if isinstance(deadline, (int, float)) else deadline
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
        if self.deadline is not None:
            self.deadline.check()

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


def client(policy: RetryPolicy | None = None) -> httpx2.Client:
    """An HTTP client that follows a few redirects (httpx drops Authorization on cross-origin hops),
    with the policy's stall timeout on every read."""
    stall = (policy or DEFAULT_RETRY).stall
    return httpx2.Client(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=httpx2.Timeout(stall, connect=min(stall, 10.0)),
    )


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
    if status < 500 and status != 408:
        raise Refused(f"{what}: the server refused the request (HTTP {status}); check the URL or id")
    raise FetchError(f"{what}: the server answered HTTP {status}; retry later or check the URL")


def open_stream(
    http: httpx2.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    what: str,
    auth_hint: str = "set the source's token",
    policy: RetryPolicy = DEFAULT_RETRY,
    deadline: Deadline | None = None,
) -> httpx2.Response:
    """GET ``url`` as an open stream, retrying 429/5xx/connection errors with bounded backoff.

    The caller must close the returned response. Errors are typed (see :func:`raise_for_status`);
    no wait between tries runs past ``deadline``.
    """
    deadline = deadline or Deadline(policy.deadline, what)
    for attempt in range(1, policy.attempts + 1):
        last = attempt == policy.attempts
        deadline.check()
        try:
            response = _send(http, url, headers, what)
        except httpx2.TransportError as exc:
            if last or isinstance(exc, httpx2.UnsupportedProtocol):
                raise _unreachable(exc, url, what) from exc
            _sleep(min(policy.base_wait * 2 ** (attempt - 1), policy.max_wait), deadline)
            continue
        if response.status_code in policy.statuses and not last:
            wait = retry_after_seconds(response.headers)
            if wait is None:
                wait = policy.base_wait * 2 ** (attempt - 1)
            if wait <= min(policy.max_wait, deadline.left()):
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


def _send(http: httpx2.Client, url: str, headers: dict[str, str] | None, what: str) -> httpx2.Response:
    """One GET; the errors a server's redirects or a listing's URL can cause become typed errors."""
    try:
        return http.send(http.build_request("GET", url, headers=headers), stream=True)
    except httpx2.TooManyRedirects as exc:
        raise RedirectLoop(
            f"{what}: over {MAX_REDIRECTS} redirects (a redirect loop?); check the URL"
        ) from exc
    except (httpx2.InvalidURL, ValueError) as exc:  # also a redirect to an unparsable Location
        raise BadAnswer(f"{what}: not a valid http(s) URL ({one_line(exc)})") from exc


def _unreachable(exc: httpx2.TransportError, url: str, what: str) -> FetchError:
    if isinstance(exc, httpx2.TimeoutException):
        return TransferTimeout(
            f"{what}: timed out: no answer from {urlsplit(url).netloc} within the stall timeout; retry later"
        )
    if isinstance(exc, httpx2.UnsupportedProtocol):
        return BadAnswer(f"{what}: not an http(s) URL (or a redirect to one that is not): {url[:200]!r}")
    return FetchError(f"{what}: cannot reach {urlsplit(url).netloc} ({exc}); check the URL and network")


def _sleep(seconds: float, deadline: Deadline) -> None:
    if seconds >= deadline.left():  # waiting would end past the deadline: fail now, not then
        deadline.fail()
    time.sleep(seconds)


def get_json(
    http: httpx2.Client,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    what: str,
    auth_hint: str = "set the source's token",
    policy: RetryPolicy = DEFAULT_RETRY,
) -> Any:
    """GET a JSON document (bounded in size and time) with the same retries and typed errors."""
    deadline = Deadline(policy.deadline, what)
    response = open_stream(
        http, url, headers=headers, what=what, auth_hint=auth_hint, policy=policy, deadline=deadline
    )
    try:
        body = bytearray()
        for chunk in _chunks(response, what):
            body += chunk
            deadline.check()
            if len(body) > MAX_JSON_BYTES:
                raise BadAnswer(
                    f"{what}: the API answer is over {format_size(MAX_JSON_BYTES)}; not a JSON API"
                )
    finally:
        response.close()
    try:
        return json.loads(body)
    except RecursionError as exc:  # json's C parser recurses once per nesting level
        raise BadAnswer(f"{what}: the answer is JSON nested too deeply to be an API answer") from exc
    except ValueError as exc:
        raise BadAnswer(f"{what}: the answer is not JSON; check that the endpoint is right") from exc


def _chunks(response: httpx2.Response, what: str) -> Any:
    try:
        yield from response.iter_bytes()
    except httpx2.TimeoutException as exc:
        raise TransferTimeout(
            f"{what}: timed out: the answer stalled (no byte within the stall timeout)"
        ) from exc
    except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.DecodingError) as exc:
        raise TruncatedDownload(f"{what}: the connection broke mid-answer ({one_line(exc)}); retry") from exc


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    verified: bool


def safe_filename(name: str | None, default: str = "download.safetensors") -> str:
    """The last path part of a server-given name, never a path (no '..', no separators).

    Raises :class:`~scanner.errors.UnsafePath` for a NUL byte or a name over 255 bytes: no file
    system takes it, and shortening it silently could merge two files into one name.
    """
    base = PurePosixPath(unquote(name or "").replace("\\", "/")).name.strip()
    return check_name(base, "file name") if base and base not in (".", "..") else default


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
    if filename is not None:
        filename = safe_filename(filename)
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest_dir / f".{uuid.uuid4().hex}.part"
    try:
        with client(policy) as http, open(part, "wb") as out:
            name, size, digest = _stream_resuming(
                http,
                url,
                out,
                filename=filename,
                headers=dict(headers or {}),
                max_size=max_size,
                progress=progress,
                policy=policy,
                auth_hint=auth_hint,
                resumes=resumes,
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
        final = inside(dest_dir, name, "file name")
        os.replace(part, final)
        return Downloaded(path=final, size=size, sha256=digest, verified=sha256 is not None)
    finally:
        part.unlink(missing_ok=True)


def _stream_resuming(
    http: httpx2.Client,
    url: str,
    out: Any,
    *,
    filename: str | None,
    headers: dict[str, str],
    max_size: int,
    progress: bool,
    policy: RetryPolicy,
    auth_hint: str,
    resumes: int,
) -> tuple[str, int, str]:
    """Write the body to ``out``; on a cut, resume with a Range request when the server allows it."""
    hasher = hashlib.sha256()
    what = filename or url
    deadline = Deadline(policy.deadline, what)
    with ByteMeter(
        desc=safe_filename(what), max_size=max_size, progress=progress, deadline=deadline
    ) as meter:
        for attempt in range(resumes + 1):
            have = meter.n
            # identity: Content-Length, the cap and the published hash all refer to the raw bytes
            request_headers = {**headers, "Accept-Encoding": "identity"}
            if have:
                request_headers["Range"] = f"bytes={have}-"
            response = open_stream(
                http,
                url,
                headers=request_headers,
                what=what,
                auth_hint=auth_hint,
                policy=policy,
                deadline=deadline,
            )
            try:
                name = filename or _name_from(response, url)
                if is_pickle_name(name):
                    raise UnsafeFormat(
                        f"{name}: a pickle file; unsafe format, not scanned (ask for .safetensors)"
                    )
                if have and response.status_code != 206:  # the server ignored Range: start over
                    out.seek(0)
                    out.truncate()
                    hasher = hashlib.sha256()
                    meter.reset()
                    have = 0
                elif have and not response.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    raise TruncatedDownload(
                        f"{what}: the server resumed at the wrong offset; retry the download"
                    )
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
