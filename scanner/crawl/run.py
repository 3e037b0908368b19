"""The crawl loop: list targets into the state, claim them, run them with bounded concurrency, record.

Resumable by construction: on start, rows a killed crawl left ``running`` go back to ``pending``;
final rows are never claimed again; the listing resumes after its last stored page. The listing
runs in a thread of its own (its own SQLite connection) while the scans start, so a long search does
not delay the first scans. Only this loop writes outcomes, one transaction each.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from lora_wise.errors import LoraWiseError, one_line

from ..download import DEFAULT_MAX_SIZE, RetryPolicy, format_size
from ..status import Status
from .dispatch import Limits, dispatcher
from .listing import Listing, discover
from .state import FINAL, CrawlState, Row, exclusive
from .task import TaskOptions

MAX_BACKOFF = 3600.0  # a target is tried again within the hour at the latest


@dataclass
class CrawlOptions:
    jobs: int = 4
    max_size: int = DEFAULT_MAX_SIZE
    attempts: int = 3  # tries per target before it is ``failed``
    keep: str | None = None
    bank_dir: str | None = None
    force_estimate: bool = False
    ray: str | None = None  # a Ray address, or "local"
    shard: tuple[int, int] | None = None
    retry_failed: bool = False
    relist: bool = False
    policy: RetryPolicy = field(default_factory=RetryPolicy)  # per HTTP request, inside a task
    backoff: float = 30.0  # first wait before a target's next try (doubles per try), unless Retry-After says
    progress: bool = True
    limits: Limits = field(default_factory=Limits)  # time and memory per target (local workers)

    def task_options(self) -> TaskOptions:
        return TaskOptions(self.max_size, self.keep, self.bank_dir, self.force_estimate, self.policy)


@dataclass
class CrawlSummary:
    state: str
    counts: dict[str, int]
    bytes: int
    seconds: float
    recovered: int  # rows a killed crawl had left running
    listing: dict[str, Any] | None = None
    listing_error: str | None = None

    @property
    def targets(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "targets": self.targets}


class Finder(threading.Thread):
    """Runs the listing into the state from a thread with its own connection; keeps its error."""

    def __init__(self, path: Path, listing: Listing | None, options: CrawlOptions) -> None:
        super().__init__(name="lora-scan-crawl-listing", daemon=True)
        self.path, self.listing, self.options = path, listing, options
        self.progress: dict[str, Any] | None = None
        self.error: str | None = None

    def run(self) -> None:
        if self.listing is None:
            return
        try:
            with CrawlState(self.path) as state:
                self.progress = discover(
                    state, self.listing, shard=self.options.shard, relist=self.options.relist
                )
        except LoraWiseError as exc:
            self.error = one_line(exc)
        except Exception as exc:  # an API answer we do not understand must still end the crawl cleanly
            self.error = f"unexpected {type(exc).__name__}: {one_line(exc)}"


def crawl(
    state_path: str | Path, listing: Listing | None, options: CrawlOptions | None = None
) -> CrawlSummary:
    """List (or resume listing) and scan every target into ``state_path``; see docs/crawl.md."""
    options = options or CrawlOptions()
    started = time.time()
    path = Path(state_path)
    with CrawlState(path) as state, exclusive(path):
        recovered = state.recover()
        if options.retry_failed:
            state.retry_failed()
        finder = Finder(path, listing, options)
        finder.start()
        with Display(options.progress) as display:
            _loop(state, finder, display, options)
        finder.join()
        return CrawlSummary(
            state=str(path),
            counts=state.counts(),
            bytes=state.downloaded_bytes(),
            seconds=time.time() - started,
            recovered=recovered,
            listing=finder.progress,
            listing_error=finder.error,
        )


def _loop(state: CrawlState, finder: Finder, display: Display, options: CrawlOptions) -> None:
    pool = dispatcher(options.jobs, options.ray, options.limits)
    task_options = options.task_options()
    in_flight: dict[Future, Row] = {}
    try:
        while True:
            while len(in_flight) < options.jobs and (row := state.claim()) is not None:
                in_flight[pool.submit(row.target, row.listing, task_options)] = row
            display.update(state)
            if in_flight:
                done, _ = wait(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in done:
                    display.downloaded += record(state, in_flight.pop(future), future, options)
            elif not _idle(state, finder):
                break
    except BaseException:
        state.release(row.target for row in in_flight.values())  # Ctrl-C: their tries did not finish
        pool.close(wait=False)
        raise
    pool.close()
    display.update(state, force=True)


def _idle(state: CrawlState, finder: Finder) -> bool:
    """Nothing in flight: wait for the listing or a backoff to end; False when all is done."""
    if finder.is_alive():
        finder.join(0.2)
        return True
    due = state.next_wakeup()
    if due is None:
        return False
    time.sleep(min(max(due - time.time(), 0.02), 1.0))
    return True


def record(state: CrawlState, row: Row, future: Future, options: CrawlOptions) -> int:
    """Write one task's outcome: a final status, or a transient failure to retry after a backoff.

    Returns the bytes the task downloaded.
    """
    try:
        outcome = future.result()
    except Exception as exc:  # the worker died (Ray lost it, or a bug): a transient fault of the crawl
        error = f"the task died: {type(exc).__name__}: {one_line(exc)}"[:500]
        outcome = {"status": Status.RETRY, "error": error}
    nbytes = int(outcome.get("bytes") or 0)
    if outcome["status"] != Status.RETRY:
        state.finish(row.target, outcome["status"], error=outcome.get("error"), header=outcome.get("header"),
                     result=outcome.get("result"), nbytes=nbytes)  # fmt: skip
        return nbytes
    wait_s = outcome.get("retry_after")
    if wait_s is None:
        wait_s = options.backoff * 2**row.attempts
    state.retry_later(
        row.target,
        error=outcome["error"],
        wait=min(wait_s, MAX_BACKOFF),
        nbytes=nbytes,
        max_attempts=options.attempts,
    )
    return nbytes


class _TwoLineProgress(Progress):
    """The bar, done/known and the time on one line, the counts by status on a second: on one line
    together they pass 80 columns, and rich then squeezes the bar away first."""

    counts = ""

    def get_renderables(self):  # rich's documented hook for what a Progress draws
        yield self.make_tasks_table(self.tasks)
        counts = Text.from_markup(self.counts, overflow="ellipsis")
        counts.no_wrap = True
        yield counts


class Display:
    """A rich progress bar on stderr: done of known targets, counts by status, bytes downloaded this run."""

    def __init__(self, enabled: bool) -> None:
        self.progress: Progress | None = None
        self.last = 0.0
        self.downloaded = 0  # bytes, this run: summing the table each refresh would read every row
        if enabled:
            self.progress = _TwoLineProgress(
                TextColumn("[bold]crawl"),
                BarColumn(bar_width=50),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
            )
            self.task = self.progress.add_task("", total=None)

    def __enter__(self) -> Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def update(self, state: CrawlState, force: bool = False) -> None:
        if self.progress is None or (time.monotonic() - self.last < 1.0 and not force):
            return
        self.last = time.monotonic()
        counts = state.counts()
        done = sum(counts.get(s, 0) for s in FINAL)
        ok, failed, skipped = counts.get("ok", 0), counts.get("failed", 0), counts.get("skipped", 0)
        other = done - ok - failed - skipped
        text = (f"[green]ok {ok}[/] · [red]failed {failed}[/] · skipped {skipped} · "
                f"unsafe/error/no-lora {other} · "
                f"running {counts.get('running', 0)} · {format_size(self.downloaded)} fetched")  # fmt: skip
        self.progress.counts = text  # type: ignore[attr-defined]
        self.progress.update(self.task, completed=done, total=sum(counts.values()))
