"""Hugging Face Hub source: list a repo, pick its LoRA weights, fetch them into the standard cache.

All HTTP goes through huggingface_hub (token from ``HF_TOKEN`` or ``hf auth login``, its cache, its
retries). ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` are read when called, not only
when huggingface_hub was imported, so a test or the crawl may set them late. Offline, the listing
comes from the cache's snapshot folder and the files through ``hf_hub_download(local_files_only=True)``.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.repocard import metadata_load
from huggingface_hub.utils import SafetensorsFileMetadata

from lora_wise._files import atomic_write_text, git_blob_sha1, sha256_file

from ..download import DEFAULT_RETRY, ByteMeter, RetryPolicy, retry_after_seconds
from ..errors import (
    AuthRequired,
    BadAnswer,
    FetchError,
    HashMismatch,
    InvalidHeader,
    NotFound,
    RateLimited,
    RedirectLoop,
    TruncatedDownload,
)
from ..paths import inside, owned
from ..targets import Target
from .base import FetchedFile, RepoEntry, companions_of, pick_candidates
from .schema import HubRepo

CARD_KEYS = ("base_model", "license", "tags", "instance_prompt", "library_name", "pipeline_tag", "datasets")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TOKEN_HINT = "set HF_TOKEN or run `hf auth login` (and accept the repo's terms on the Hub if it is gated)"


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache_dir: str
    offline: bool


def settings(cache_dir: str | Path | None = None) -> HubSettings:
    """Endpoint, cache and offline mode as the environment says now."""
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return HubSettings(
        endpoint=(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
        cache_dir=str(cache_dir or os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE),
        offline=offline_env or constants.is_offline_mode(),
    )


def fetch(
    target: Target,
    *,
    file: str | None,
    max_size: int,
    cache_dir: str | Path | None,
    progress: bool,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[FetchedFile]:
    """Every LoRA candidate of the repo (or ``file``), downloaded into the Hub cache and hash-checked."""
    assert target.repo_id is not None
    repo_id = target.repo_id
    hub = settings(cache_dir)
    with hub_errors(repo_id, target.revision):
        commit, entries, card = list_repo(repo_id, target.revision, cache_dir=cache_dir, policy=policy)
        chosen, notes = pick_candidates(
            entries, max_size=max_size, file=file or target.filename, where=repo_id
        )
        info = {"repo_id": repo_id, "commit": commit, "revision": target.revision or "main"}
        info.update({k: card[k] for k in CARD_KEYS if card.get(k) is not None})
        fetched: list[FetchedFile] = []
        failures: list[FetchError] = []
        for entry in chosen:
            try:
                fetched.append(
                    _fetch_entry(
                        hub,
                        repo_id,
                        entry,
                        entries,
                        commit,
                        max_size=max_size,
                        progress=progress,
                        policy=policy,
                    )
                )
            except Exception as exc:  # one bad candidate must not hide the repo's other LoRAs
                failures.append(
                    exc if isinstance(exc, FetchError) else _translate(exc, f"{repo_id}:{entry.path}")
                )
        if not fetched:
            raise failures[0]
        notes += [f"not fetched: {failure}" for failure in failures]
        for f in fetched:
            f.info, f.notes = dict(info), list(notes)
        return fetched


def list_repo(
    repo_id: str,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> tuple[str, list[RepoEntry], dict]:
    """The repo's commit, files (sizes, published hashes) and card data; from the cache when offline."""
    hub = settings(cache_dir)
    with hub_errors(repo_id, revision):
        if hub.offline:
            return _offline_listing(hub, repo_id, revision)
        commit, entries, card = _with_retries(lambda: _online_listing(hub, repo_id, revision), policy)
        _remember_ref(hub, repo_id, revision or "main", commit)
        return commit, entries, card


def _fetch_entry(
    hub: HubSettings,
    repo_id: str,
    entry: RepoEntry,
    entries: list[RepoEntry],
    commit: str,
    *,
    max_size: int,
    progress: bool,
    policy: RetryPolicy,
) -> FetchedFile:
    path = _download(hub, repo_id, entry, commit, max_size=max_size, progress=progress, policy=policy)
    companions = {
        Path(c.path).name: _download(
            hub, repo_id, c, commit, max_size=max_size, progress=False, policy=policy
        )
        for c in companions_of(entry, entries)
    }
    return FetchedFile(
        path=path,
        source="hub",
        source_id=f"{repo_id}@{commit}:{entry.path}",
        name=entry.path,
        size=path.stat().st_size,
        url=f"{hub.endpoint}/{repo_id}/blob/{commit}/{entry.path}",
        # _verify checked the bytes against the LFS SHA-256 (or the git blob id: then hash them here)
        sha256=(entry.sha256 or sha256_file(path)).lower(),
        verified=entry.sha256 is not None or entry.git_sha1 is not None,
        companions=companions,
    )


def read_header(repo_id: str, filename: str, revision: str | None = None) -> SafetensorsFileMetadata:
    """Only the safetensors header of a Hub file, through HTTP Range requests."""
    hub = settings()
    with hub_errors(repo_id, revision):
        try:
            return HfApi(endpoint=hub.endpoint).parse_safetensors_file_metadata(
                repo_id, filename, revision=revision
            )
        except SafetensorsParsingError as exc:
            raise InvalidHeader(f"{repo_id}/{filename}: not a valid safetensors header ({exc})") from exc


def _online_listing(
    hub: HubSettings, repo_id: str, revision: str | None
) -> tuple[str, list[RepoEntry], dict]:
    # One call gives the commit (to pin every download to), sizes, LFS hashes and the card data.
    info = HfApi(endpoint=hub.endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    repo = HubRepo.from_info(info, f"{repo_id}: the Hub's model info")
    entries = [
        RepoEntry(path=f.path, size=f.size, sha256=f.sha256, git_sha1=f.git_sha1) for f in repo.files or ()
    ]
    card = dict(repo.card)
    if repo.tags:
        card["tags"] = list(repo.tags)
    return repo.sha or revision or "main", entries, card


def _with_retries(call: Callable[[], Any], policy: RetryPolicy) -> Any:
    """Retry a Hub API call on 429/5xx, honouring Retry-After up to ``policy.max_wait``.

    huggingface_hub retries downloads itself but not ``model_info``: a busy Hub would fail a crawl.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except HfHubHTTPError as exc:
            response = exc.response
            if response is None or response.status_code not in policy.statuses or attempt == policy.attempts:
                raise
            wait = retry_after_seconds(response.headers)
            wait = policy.base_wait * 2 ** (attempt - 1) if wait is None else wait
            if wait > policy.max_wait:
                raise
            time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _storage(hub: HubSettings, repo_id: str) -> Path:
    """The repo's folder in the cache; the repo id is a name from outside like any other."""
    return inside(hub.cache_dir, repo_folder_name(repo_id=repo_id, repo_type="model"), "repo id")


def _offline_listing(
    hub: HubSettings, repo_id: str, revision: str | None
) -> tuple[str, list[RepoEntry], dict]:
    storage = _storage(hub, repo_id)
    revision = revision or "main"
    commit = revision if _HEX40.match(revision) else _read_ref(inside(storage / "refs", revision, "revision"))
    if commit is not None and not _HEX40.match(commit):
        raise BadAnswer(f"{repo_id}@{revision}: the cache's ref holds {commit[:60]!r}, not a commit hash")
    snapshot = storage / "snapshots" / (commit or "")
    if commit is None or not snapshot.is_dir() or not owned(storage, snapshot):
        raise NotFound(
            f"{repo_id}@{revision} is not in the Hub cache {hub.cache_dir} and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE to download it, or point HF_HUB_CACHE at a cache that has it"
        )
    # An entry whose link leads out of the cache is not part of the repo: never read, trusted or deleted.
    entries = [
        _cached_entry(snapshot, p) for p in sorted(snapshot.rglob("*")) if p.is_file() and owned(storage, p)
    ]
    readme = snapshot / "README.md"
    card = (metadata_load(readme) or {}) if readme.is_file() else {}
    return commit, entries, card


def _remember_ref(hub: HubSettings, repo_id: str, revision: str, commit: str) -> None:
    """Record branch -> commit in the cache (refs/<revision>), as hf_hub_download does for a branch.

    Downloads are pinned to the listed commit so that every file comes from the same one; without
    this ref an offline run would not find what an online run cached.
    """
    if _HEX40.match(revision) or not _HEX40.match(commit):
        return
    ref = inside(_storage(hub, repo_id) / "refs", revision, "revision")
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text() != commit:
            atomic_write_text(ref, commit)
    except OSError:
        pass  # a read-only cache still serves this run; only the offline shortcut is lost


def _read_ref(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None


def _cached_entry(snapshot: Path, path: Path) -> RepoEntry:
    # The cache names each blob by its ETag: the SHA-256 for LFS files, the git blob id otherwise.
    blob = Path(os.path.realpath(path)).name
    return RepoEntry(
        path=path.relative_to(snapshot).as_posix(),
        size=path.stat().st_size,
        sha256=blob if _HEX64.match(blob) else None,
        git_sha1=blob if _HEX40.match(blob) else None,
    )


def _download(
    hub: HubSettings,
    repo_id: str,
    entry: RepoEntry,
    commit: str,
    *,
    max_size: int,
    progress: bool,
    policy: RetryPolicy,
) -> Path:
    # Enforces --max-size and the transfer deadline while huggingface_hub streams, and draws the rich bar.
    meter = functools.partial(ByteMeter, max_size=max_size, progress=progress, deadline=policy.deadline)
    path = Path(
        hf_hub_download(
            repo_id,
            entry.path,
            revision=commit,
            cache_dir=hub.cache_dir,
            endpoint=hub.endpoint,
            local_files_only=hub.offline,
            tqdm_class=meter,  # type: ignore[arg-type]
        )
    )
    _verify(path, entry, repo_id, _storage(hub, repo_id))
    return path


def _verify(path: Path, entry: RepoEntry, repo_id: str, storage: Path) -> None:
    """Check the cached bytes against the Hub's LFS SHA-256 (or git blob id); evict them if wrong."""
    if entry.sha256 is not None:
        ok = sha256_file(path) == entry.sha256.lower()
    elif entry.git_sha1 is not None:
        ok = git_blob_sha1(path) == entry.git_sha1.lower()
    else:
        return
    if not ok:
        removed = _evict(path, storage)
        raise HashMismatch(
            f"{repo_id}/{entry.path}: the bytes do not match the Hub's published hash; "
            + ("removed from the cache. " if removed else "left in place: it lies outside the cache. ")
            + "Retry; if it persists the mirror (HF_ENDPOINT) serves altered files"
        )


def _evict(path: Path, storage: Path) -> bool:
    """Delete a bad snapshot entry and its blob, only where both lie in the repo's cache folder.

    A snapshot entry may be a symlink to anywhere (a hand-made or hostile cache): following it
    for deletion would delete a file that is not ours.
    """
    blob = Path(os.path.realpath(path))
    if not (owned(storage, path.parent) and owned(storage / "blobs", blob)):
        return False
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)
    return True


class hub_errors:
    """Translate huggingface_hub's exceptions into the scanner's typed errors (messages say what to do)."""

    def __init__(self, repo_id: str, revision: str | None) -> None:
        self.where = f"{repo_id}@{revision}" if revision else repo_id

    def __enter__(self) -> hub_errors:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc is None or isinstance(exc, (FetchError, KeyboardInterrupt)) or not isinstance(exc, Exception):
            return False
        raise _translate(exc, self.where) from exc


def _translate(exc: Exception, where: str) -> FetchError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError):
        return AuthRequired(f"{where}: a gated repo; {TOKEN_HINT}")
    if isinstance(exc, RevisionNotFoundError):
        return NotFound(f"{where}: no such revision (branch, tag or commit) in this repo")
    if isinstance(exc, RepositoryNotFoundError):
        if status == 401:
            return AuthRequired(f"{where}: not found or private; {TOKEN_HINT}")
        return NotFound(f"{where}: no such model repo on the Hub; check the spelling (user/repo)")
    if isinstance(exc, LocalEntryNotFoundError):
        return NotFound(f"{where}: the file is not in the Hub cache and the Hub cannot be reached (offline?)")
    if isinstance(exc, EntryNotFoundError):
        return NotFound(f"{where}: no such file in the repo")
    if isinstance(exc, HFValidationError):
        return NotFound(f"{where}: not a valid repo id or file name ({exc})")
    if isinstance(exc, OfflineModeIsEnabled):
        return NotFound(f"{where}: HF_HUB_OFFLINE is set and this is not cached; unset it to download")
    if isinstance(exc, HfHubHTTPError) and status == 429:
        return RateLimited(
            f"{where}: the Hub rate-limited us (HTTP 429) after retries; "
            "wait a few minutes, log in for higher limits"
        )
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return AuthRequired(f"{where}: access denied (HTTP {status}); {TOKEN_HINT}")
    if isinstance(exc, HfHubHTTPError):
        return FetchError(f"{where}: the Hub answered HTTP {status}; retry later")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return TruncatedDownload(f"{where}: the download ended early (size mismatch); retry")
    if isinstance(exc, (KeyError, TypeError, AttributeError, ValueError, RecursionError)):
        # huggingface_hub parsing an answer of the wrong shape (a mirror, or a hostile server)
        return BadAnswer(
            f"{where}: the Hub's answer is not what it should be ({type(exc).__name__}: {exc})"[:300]
        )
    if isinstance(exc, httpx2.TooManyRedirects):
        return RedirectLoop(f"{where}: too many redirects (a redirect loop?); check HF_ENDPOINT")
    if isinstance(exc, (httpx2.RemoteProtocolError, httpx2.ReadError)):
        return TruncatedDownload(
            f"{where}: the connection ended mid-file after huggingface_hub's resumes; retry later"
        )
    if isinstance(exc, httpx2.TransportError):
        return FetchError(f"{where}: cannot reach the Hub ({exc}); check the network or HF_ENDPOINT")
    return FetchError(f"{where}: {type(exc).__name__}: {exc}")
