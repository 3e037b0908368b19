"""One crawl target end to end, as a plain function of plain data (so it runs in a thread or on Ray).

probe the header -> filters -> download -> ``scan_file`` per LoRA file -> delete the weights (or
copy them to ``--keep``). The answer is an outcome dict the crawl loop writes to the state; the task
itself never touches the state, so a worker on another machine needs no access to it.

Outcome ``status``: a final status (``ok``, ``error``, ``unsafe``, ``no-lora``, ``skipped``) or
``retry`` for a transient fault (429, 5xx, a cut connection, a timeout, a hash mismatch), which the
crawl retries with backoff until ``--attempts`` run out.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_wise.errors import LoraWiseError, one_line

from ..download import DEFAULT_MAX_SIZE, RetryPolicy, safe_filename
from ..errors import (
    AuthRequired,
    BadAnswer,
    FetchError,
    InvalidHeader,
    NotFound,
    RateLimited,
    RedirectLoop,
    Refused,
    TargetLimit,
    UnsafePath,
)
from ..paths import inside
from ..report import ScanReport
from ..scan import scan_file
from ..sources import FetchedFile, fetched
from ..sources.hub import settings as hub_settings
from ..status import Status, status_of
from .probe import probe

# Faults of the file, the request or the answer, not of the moment: retrying cannot help. Transient:
# 429, 5xx, cut connections, stalls and deadlines, hash mismatches (a CDN serving a bad copy).
PERMANENT = (NotFound, AuthRequired, InvalidHeader, BadAnswer, RedirectLoop, Refused, UnsafePath, TargetLimit)


@dataclass(frozen=True)
class TaskOptions:
    max_size: int = DEFAULT_MAX_SIZE
    keep: str | None = None  # copy the downloaded weights here instead of only deleting them
    bank_dir: str | None = None
    force_estimate: bool = False
    policy: RetryPolicy = RetryPolicy()


def outcome_of(exc: BaseException) -> Status:
    """The outcome status of an error: the filters' verdicts, a permanent error, or ``retry``."""
    if isinstance(exc, MemoryError):  # the worker's memory limit: this file would take it again
        return Status.ERROR
    status = status_of(exc)
    if status is not Status.ERROR or isinstance(exc, PERMANENT):
        return status
    if isinstance(exc, LoraWiseError) and not isinstance(exc, FetchError):
        return status
    # any other FetchError (429, 5xx, cut, timeout, hash mismatch), or an unexpected fault
    return Status.RETRY


def run_task(target: str, listing: dict[str, Any] | None, options: TaskOptions) -> dict[str, Any]:
    """Probe, filter, fetch and scan one target; never raises for what a target or a server can cause."""
    header: list[dict[str, Any]] | None = None
    try:
        header = probe(target, listing, max_size=options.max_size, policy=options.policy)
        reports, nbytes = _fetch_and_scan(target, options)
    except Exception as exc:  # one target's fault must not stop the crawl: it becomes the outcome
        return _error_outcome(exc, header)
    ok = [r for r in reports if r.status == Status.OK]
    return {
        "status": Status.OK if ok else reports[0].status,
        "error": None if ok else reports[0].error,
        "header": header,
        "result": [r.to_dict() for r in reports],
        "bytes": nbytes,
    }


def _error_outcome(exc: Exception, header: list[dict[str, Any]] | None) -> dict[str, Any]:
    status = outcome_of(exc)
    if isinstance(exc, MemoryError):
        reason = "the scan ran over the memory limit per target (--target-memory): a pathological file?"
    elif isinstance(exc, LoraWiseError):
        reason = one_line(exc)
    else:
        reason = f"unexpected {type(exc).__name__}: {one_line(exc)}"
    return {
        "status": status,
        "error": reason,
        "header": header,
        "result": None,
        "bytes": 0,
        "retry_after": exc.retry_after if isinstance(exc, RateLimited) else None,
    }


def _fetch_and_scan(target: str, options: TaskOptions) -> tuple[list[ScanReport], int]:
    """Download (capped, verified) and scan; fetch errors propagate (``outcome_of`` sorts them)."""
    hub = hub_settings()
    # Hub files go to a cache of this task alone, deleted after; offline, the user's cache is the source.
    cache = None if hub.offline else tempfile.mkdtemp(prefix="lora-scan-crawl-")
    try:
        with fetched(
            target, max_size=options.max_size, cache_dir=cache, progress=False, retry=options.policy
        ) as files:
            reports = [
                scan_file(f, target, bank_dir=options.bank_dir, force_estimate=options.force_estimate)
                for f in files
            ]
            if options.keep:
                keep_files(files, Path(options.keep), target)
            return reports, sum(f.size for f in files if f.source != "local")
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def keep_files(files: list[FetchedFile], keep: Path, target: str) -> None:
    """Copy each fetched file (and its companions) to ``keep/<target as a folder name>/``."""
    folder = inside(keep, keep_folder_name(target), "--keep folder")
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        for path in (f.path, *f.companions.values()):
            shutil.copyfile(os.path.realpath(path), inside(folder, safe_filename(path.name), "kept file"))


def keep_folder_name(target: str) -> str:
    """A target as one folder name: no separators, never ``.`` or ``..``, at most 150 characters."""
    name = re.sub(r"[^\w.@-]+", "_", target).strip("_.")[:150]
    return name or "target"
