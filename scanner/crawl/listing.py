"""Where a crawl's targets come from, and the one loop that stores what a listing finds.

A listing yields pages of :class:`Candidate` rows, each with the cursor that comes after it. The
cursor is saved with the page's rows, so a killed crawl resumes its listing after the last stored
page, and a finished listing is not run again (``--relist`` runs it again; known targets stay as
they are). ``--shard I/N`` keeps only the targets of shard I, so N machines share one search.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from lora_wise.errors import one_line
from lora_wise.executors import shard_of

from ..errors import StateError, TargetError
from ..targets import parse_target
from .state import Candidate, CrawlState

Page = tuple[list[Candidate], Any]  # the candidates and the cursor after them (None: the end)


class Listing(Protocol):
    source: str  # hf | civitai | list

    def options(self) -> dict[str, Any]:
        """What identifies this search (its progress is kept under it)."""

    def pages(self, cursor: Any) -> Iterator[Page]:
        """Pages of candidates from ``cursor`` (None: from the start)."""


def progress_key(listing: Listing) -> str:
    return "listing " + json.dumps({"source": listing.source, **listing.options()}, sort_keys=True)


def discover(
    state: CrawlState, listing: Listing, *, shard: tuple[int, int] | None = None, relist: bool = False
) -> dict[str, Any]:
    """Run (or resume) a listing into the state; returns its progress record."""
    key = progress_key(listing)
    fresh = {"listed": 0, "added": 0, "cursor": None, "done": False}
    progress = fresh if relist else state.get_meta(key) or fresh
    if not (
        isinstance(progress, dict)
        and all(isinstance(progress.get(k), int) for k in ("listed", "added"))
        and isinstance(progress.get("done"), bool)
    ):
        raise StateError(
            f"{state.path}: the stored progress of this listing is not one a crawl wrote "
            "(edited by hand?); rerun with --relist"
        )
    if progress["done"]:
        return progress
    for candidates, cursor in listing.pages(progress["cursor"]):
        mine = [c for c in candidates if shard is None or shard_of(c.target, shard[1]) == shard[0]]
        progress = {
            "listed": progress["listed"] + len(candidates),
            "added": progress["added"],
            "cursor": cursor,
            "done": cursor is None,
        }
        progress["added"] += state.add(mine, progress=(key, progress))
    if not progress["done"]:  # an empty listing yields no page at all
        progress["done"] = True
        state.set_meta(key, progress)
    return progress


class TargetsFile:
    """``crawl list FILE``: one target per line (ids, URLs, ``user/repo``, paths); ``#`` comments.

    A line that is not a target becomes an ``error`` row with the reason, so a typo in a long list
    shows in the report instead of stopping the crawl.
    """

    source = "list"
    page_size = 1000

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def options(self) -> dict[str, Any]:
        return {"file": str(self.path.resolve())}

    def pages(self, cursor: Any) -> Iterator[Page]:
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        start = stored_offset(cursor)
        for begin in range(start, len(lines), self.page_size):
            end = min(begin + self.page_size, len(lines))
            page = [c for n in range(begin, end) if (c := self._candidate(lines[n], n + 1)) is not None]
            yield page, (end if end < len(lines) else None)

    def _candidate(self, line: str, number: int) -> Candidate | None:
        # A comment is a line starting with '#' or ' #...' after a target ('#' alone may be in a URL).
        text = re.split(r"\s#", line.strip(), maxsplit=1)[0].strip()
        if not text or text.startswith("#"):
            return None
        local = self.local_path(text)
        if local is not None:  # a file or folder of ours: never asked of the Hub, wherever the crawl runs
            return Candidate(str(local), self.source)
        try:
            parse_target(text)
        except TargetError as exc:
            return Candidate(
                text, self.source, status="error", error=f"{self.path.name} line {number}: {one_line(exc)}"
            )
        return Candidate(text, self.source)

    def local_path(self, text: str) -> Path | None:
        """An existing file or folder the line names (relative to the list's folder, then to the current
        one), as an absolute path; None for ids, URLs and names that exist nowhere here."""
        if "\x00" in text or re.match(r"^([a-z][a-z0-9+.\-]*://|civitai:)", text, re.IGNORECASE):
            return None
        path = Path(text).expanduser()
        for candidate in [path] if path.is_absolute() else [self.path.parent / path, Path.cwd() / path]:
            try:
                if candidate.exists():
                    return candidate.resolve()
            except (OSError, ValueError):  # a name no file system takes: parse_target says why
                return None
        return None


def stored_offset(cursor: Any) -> int:
    """A stored cursor that counts lines or models; a hand-edited one is a clear error, not a traceback."""
    if cursor is None:
        return 0
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise StateError(
            f"the stored listing cursor {str(cursor)[:60]!r} is not one a crawl wrote; rerun with --relist"
        )
    return cursor
