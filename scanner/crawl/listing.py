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

from ..errors import TargetError
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
    progress = state.get_meta(key) or {"listed": 0, "added": 0, "cursor": None, "done": False}
    if progress["done"] and not relist:
        return progress
    if relist:
        progress = {"listed": 0, "added": 0, "cursor": None, "done": False}
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
        start = int(cursor or 0)
        for begin in range(start, len(lines), self.page_size):
            end = min(begin + self.page_size, len(lines))
            page = [c for n in range(begin, end) if (c := self._candidate(lines[n], n + 1)) is not None]
            yield page, (end if end < len(lines) else None)

    def _candidate(self, line: str, number: int) -> Candidate | None:
        # A comment is a line starting with '#' or ' #...' after a target ('#' alone may be in a URL).
        text = re.split(r"\s#", line.strip(), maxsplit=1)[0].strip()
        if not text or text.startswith("#"):
            return None
        try:
            parse_target(text)
        except TargetError as exc:
            return Candidate(text, self.source, status="error", error=f"{self.path.name} line {number}: {one_line(exc)}")
        return Candidate(text, self.source)
