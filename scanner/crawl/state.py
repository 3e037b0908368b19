"""The crawl's state: one SQLite database in WAL mode, one row per target, one transaction per change.

Why SQLite: a crawl is killed (Ctrl-C, ``kill -9``, a reboot) and rerun. Every state change is a
single ``BEGIN IMMEDIATE ... COMMIT``, so a row is either before or after a change, never half
written; WAL lets the report (and the discovery thread) read while the crawl writes.

Statuses: ``pending`` (to do), ``running`` (claimed by a live crawl), then a final one: ``ok``,
``error``, ``unsafe``, ``no-lora`` (as ``ScanReport.status``), ``skipped`` (left out by a filter, e.g.
over ``--max-size``) or ``failed`` (kept failing for transient reasons after ``--attempts``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_wise._files import exclusive_lock

from ..errors import StateError
from ..status import FINAL, Status

STATUSES = (Status.PENDING, Status.RUNNING, *FINAL)

SCHEMA = """
CREATE TABLE IF NOT EXISTS targets (
    target   TEXT PRIMARY KEY,             -- what `lora-scan TARGET` would take
    source   TEXT NOT NULL,                -- hf | civitai | list
    status   TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,   -- finished tries (a killed crawl's try does not count)
    error    TEXT,                         -- the last reason, one line
    listing  TEXT,                         -- JSON: what the source's listing said (sizes, hashes, base model)
    header   TEXT,                         -- JSON: what the safetensors header(s) said, before any download
    result   TEXT,                         -- JSON: list of ScanReport.to_dict()
    bytes    INTEGER NOT NULL DEFAULT 0,   -- weight bytes downloaded for this target
    next_try REAL NOT NULL DEFAULT 0,      -- not before this time (backoff after a transient failure)
    seq      INTEGER NOT NULL,             -- discovery order: targets are scanned first-found first
    updated  REAL NOT NULL                 -- unix time of the last change
);
-- claim: the first pending row in discovery order; counts by status read this index alone
CREATE INDEX IF NOT EXISTS targets_todo ON targets (status, seq);
CREATE INDEX IF NOT EXISTS targets_seq ON targets (seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Candidate:
    """A target as a listing found it; ``status`` is final already when the listing alone decides
    (only pickle files: ``unsafe``; no model file: ``no-lora``), so nothing is downloaded for it."""

    target: str
    source: str
    listing: dict[str, Any] | None = None
    status: str = "pending"
    error: str | None = None


@dataclass(frozen=True)
class Row:
    target: str
    source: str
    status: str
    attempts: int
    error: str | None
    listing: dict[str, Any] | None
    header: dict[str, Any] | None
    result: list[dict[str, Any]] | None
    bytes: int
    updated: float


COLUMNS = (
    "target",
    "source",
    "status",
    "attempts",
    "error",
    "listing",
    "header",
    "result",
    "bytes",
    "updated",
)


def _json(text: Any, kind: type, name: str, problems: list[str]) -> Any:
    """A JSON column as ``kind`` (a list: of objects), or None with a note (anyone may edit a state)."""
    if text is None or text == "":
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        problems.append(f"{name} is not JSON")
        return None
    if not isinstance(value, kind) or (kind is list and not all(isinstance(v, dict) for v in value)):
        problems.append(f"{name} is not a JSON {'list of objects' if kind is list else 'object'}")
        return None
    return value


def row_of(r: tuple) -> Row:
    """A ``Row`` from the database's values, whatever they hold: a value of the wrong type is dropped,
    an unknown status reads as ``error``, and the row's ``error`` says what was wrong."""
    problems: list[str] = []
    status = r[2] if r[2] in STATUSES else "error"
    if status != r[2]:
        problems.append(f"unknown status {str(r[2])[:40]!r}")
    listing = _json(r[5], dict, "listing", problems)
    header = _json(r[6], list, "header", problems)
    result = _json(r[7], list, "result", problems)
    error = r[4] if isinstance(r[4], str) or r[4] is None else str(r[4])
    if problems:
        error = "; ".join(
            [f"the state row was edited by hand ({', '.join(problems)})", *([error] if error else [])]
        )
    return Row(
        target=str(r[0]),
        source=str(r[1]),
        status=status,
        attempts=r[3] if _is_int(r[3]) else 0,
        error=error,
        listing=listing,
        header=header,
        result=result,
        bytes=r[8] if _is_int(r[8]) else 0,
        updated=float(r[9]) if isinstance(r[9], (int, float)) and abs(r[9]) < 1e11 else 0.0,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and 0 <= value < 2**63


def _dumps(data: Any) -> str | None:
    return None if data is None else json.dumps(data, default=str)


class CrawlState:
    """A connection to one state file. Use one per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StateError(f"{self.path}: no such crawl state file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions; each change opens its own, explicitly.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=60)
        try:
            self.db.execute("PRAGMA busy_timeout = 60000")
            if create:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a process kill loses nothing
                self.db.executescript(SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StateError(f"{self.path}: not a lora-scan crawl state ({exc})") from None

    def _check_schema(self) -> None:
        names = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "targets" not in names or "meta" not in names:
            raise StateError(f"{self.path}: not a lora-scan crawl state (no targets or meta table)")
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(targets)")}
        missing = [c for c in (*COLUMNS, "next_try", "seq") if c not in columns]
        if missing:
            raise StateError(f"{self.path}: not a lora-scan crawl state (no column {', '.join(missing)})")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> CrawlState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: BEGIN IMMEDIATE takes the write lock up front (no upgrade deadlocks)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ discovery

    def add(self, candidates: Iterable[Candidate], progress: tuple[str, Any] | None = None) -> int:
        """Insert newly found targets in one transaction; known targets are left as they are.

        ``progress`` (a meta key and value: the listing's cursor) is saved in the same transaction,
        so a rerun resumes the listing exactly after the last page whose rows are in.
        """
        now = time.time()
        added = 0
        with self.transaction() as db:
            if progress is not None:
                db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (progress[0], json.dumps(progress[1])),
                )
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM targets").fetchone()[0]
            for c in candidates:
                seq += 1
                cursor = db.execute(
                    "INSERT OR IGNORE INTO targets (target, source, status, error, listing, seq, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (c.target, c.source, c.status, c.error, _dumps(c.listing), seq, now),
                )
                added += cursor.rowcount
        return added

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        try:
            return json.loads(row[0]) if row else None
        except (TypeError, ValueError, RecursionError):
            raise StateError(
                f"{self.path}: the stored {key[:60]!r} is not JSON (edited by hand?); rerun with --relist"
            ) from None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # ------------------------------------------------------------ the crawl loop

    def recover(self) -> int:
        """Rows a killed crawl left ``running`` go back to ``pending`` (their try did not finish)."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE targets SET status = 'pending', updated = ? WHERE status = 'running'", (time.time(),)
            ).rowcount

    def retry_failed(self) -> int:
        """``--retry-failed``: failed targets get a fresh set of attempts."""
        with self.transaction() as db:
            return db.execute(
                "UPDATE targets SET status = 'pending', attempts = 0, next_try = 0, updated = ? "
                "WHERE status = 'failed'",
                (time.time(),),
            ).rowcount

    def claim(self, now: float | None = None) -> Row | None:
        """The next pending target whose backoff is over, marked ``running``; None when there is none."""
        now = time.time() if now is None else now
        with self.transaction() as db:
            row = db.execute(
                "SELECT target FROM targets WHERE status = 'pending' AND next_try <= ? ORDER BY seq LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE targets SET status = 'running', updated = ? WHERE target = ?", (now, row[0]))
        return self.row(row[0])

    def finish(
        self, target: str, status: str, *, error: str | None, header: Any, result: Any, nbytes: int
    ) -> None:
        """Record a final status with everything learnt, in one transaction."""
        assert status in FINAL, status
        with self.transaction() as db:
            db.execute(
                "UPDATE targets SET status = ?, attempts = attempts + 1, error = ?, "
                "header = COALESCE(?, header), "
                "result = ?, bytes = bytes + ?, updated = ? WHERE target = ?",
                (status, error, _dumps(header), _dumps(result), nbytes, time.time(), target),
            )

    def retry_later(self, target: str, *, error: str, wait: float, nbytes: int, max_attempts: int) -> str:
        """A transient failure: back to pending after ``wait`` s, or ``failed`` once attempts run out."""
        now = time.time()
        with self.transaction() as db:
            (attempts,) = db.execute(
                "SELECT attempts + 1 FROM targets WHERE target = ?", (target,)
            ).fetchone()
            status = Status.FAILED if attempts >= max_attempts else Status.PENDING
            reason = f"{error} (gave up after {attempts} attempts)" if status == Status.FAILED else error
            db.execute(
                "UPDATE targets SET status = ?, attempts = ?, error = ?, next_try = ?, bytes = bytes + ?, "
                "updated = ? WHERE target = ?",
                (status, attempts, reason, now + wait, nbytes, now, target),
            )
        return status

    def release(self, targets: Iterable[str]) -> None:
        """An interrupted crawl hands its running targets back (a kill leaves that to ``recover``)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE targets SET status = 'pending', updated = ? WHERE target = ? AND status = 'running'",
                [(time.time(), t) for t in targets],
            )

    # ------------------------------------------------------------ reading

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for status, n in self.db.execute("SELECT status, COUNT(*) FROM targets GROUP BY status"):
            key = status if status in STATUSES else "error"  # as rows() reads a hand-edited status
            counts[key] = counts.get(key, 0) + n
        return counts

    def downloaded_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM targets").fetchone()[0])

    def next_wakeup(self) -> float | None:
        """When the earliest backed-off pending target becomes due (None: nothing pending)."""
        row = self.db.execute("SELECT MIN(next_try) FROM targets WHERE status = 'pending'").fetchone()
        return row[0]

    def row(self, target: str) -> Row:
        return next(self.rows("WHERE target = ?", (target,)))

    def rows(self, where: str = "", params: tuple = ()) -> Iterator[Row]:
        query = f"SELECT {', '.join(COLUMNS)} FROM targets {where} ORDER BY seq"
        try:
            for r in self.db.execute(query, params):
                yield row_of(r)
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot read the crawl state ({exc})") from None


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Refuse a second crawl on the same state while the first is alive.

    An OS lock (flock) on ``<state>.lock``: the kernel drops it when its process dies, so a crawl
    killed with ``kill -9`` never blocks its rerun.
    """
    lock = Path(f"{path}.lock")
    busy = f"another crawl is running on {path} (lock {lock.name}); wait for it or stop it"
    with exclusive_lock(lock, lambda: StateError(busy)):
        yield
