"""``crawl civitai``: a CivitAI model search (``GET /api/v1/models``, cursor paging) as crawl targets.

Every version of every model found is one target, ``civitai:MODEL@VERSION``, with what the listing
says about its primary file (name, sizeKB, format, SHA-256, downloadUrl, base model) kept in the
state, so the size cap and the pickle check need no request. Deep paging goes through
``metadata.nextCursor`` only (page numbers past 1000 results answer 429, REFERENCE §6).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from lora_wise.errors import one_line

from ..download import RetryPolicy, client, get_json
from ..errors import BadAnswer, NoLoraFiles, NotFound, StateError, UnsafeFormat
from ..sources.civitai import AUTH_HINT, LORA_TYPES, auth_headers, endpoint, pick_file
from ..sources.schema import MAX_ID, CivitaiModel, CivitaiPage, CivitaiVersion
from ..status import Status, status_of
from .listing import Page
from .state import Candidate

PAGE_LIMIT = 100  # the API's largest page


class CivitaiSearch:
    source = "civitai"

    def __init__(
        self,
        *,
        types: tuple[str, ...] = ("LORA",),
        base_models: tuple[str, ...] = (),
        query: str | None = None,
        sort: str | None = None,
        nsfw: bool | None = None,
        limit: int | None = None,
        latest_only: bool = False,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.types, self.base_models, self.query, self.sort, self.nsfw = (
            list(types),
            list(base_models),
            query,
            sort,
            nsfw,
        )
        self.limit, self.latest_only = limit or None, latest_only
        self.policy = policy or RetryPolicy()

    def options(self) -> dict[str, Any]:
        return {
            "types": self.types,
            "baseModels": self.base_models,
            "query": self.query,
            "sort": self.sort,
            "nsfw": self.nsfw,
            "limit": self.limit,
            "latest_only": self.latest_only,
        }

    def url(self, cursor: str | None, page_limit: int) -> str:
        params: list[tuple[str, Any]] = [("types", t) for t in self.types]
        params += [("baseModels", b) for b in self.base_models]
        for key, value in (("query", self.query), ("sort", self.sort), ("cursor", cursor)):
            if value:
                params.append((key, value))
        if self.nsfw is not None:
            params.append(("nsfw", str(self.nsfw).lower()))
        params.append(("limit", page_limit))
        return f"{endpoint()}/api/v1/models?{urlencode(params)}"

    def pages(self, cursor: Any) -> Iterator[Page]:
        """One page per request; the cursor kept is ``{"next": nextCursor, "models": models so far}``."""
        state = _cursor(cursor)
        with client(self.policy) as http:
            while True:
                page_limit = (
                    PAGE_LIMIT if self.limit is None else min(PAGE_LIMIT, self.limit - state["models"])
                )
                page = self._page(http, state["next"], page_limit)
                items = page.items[:page_limit]
                here = {"next": page.next_cursor, "models": state["models"] + len(items)}
                done = (
                    not page.next_cursor
                    or not items
                    or (self.limit is not None and here["models"] >= self.limit)
                )
                first = state["models"]
                yield (
                    [c for n, item in enumerate(items) for c in self.candidates_of(item, first + n)],
                    (None if done else here),
                )
                state = here
                if done:
                    return

    def _page(self, http: Any, cursor: str | None, page_limit: int) -> CivitaiPage:
        data = get_json(
            http,
            self.url(cursor, page_limit),
            headers=auth_headers(),
            what="civitai model search",
            auth_hint=AUTH_HINT,
            policy=self.policy,
        )
        return CivitaiPage.from_json(data)

    def candidates_of(self, item: Any, number: int) -> list[Candidate]:
        """The targets of one search item; a malformed item (or version) is one ``error`` row, never the
        end of the listing. ``number`` (the item's place in the search) names an item without an id."""
        try:
            model = CivitaiModel.from_json(item, "civitai model search")
        except BadAnswer as exc:
            raw_id = item.get("id") if isinstance(item, dict) else None
            valid = isinstance(raw_id, int) and not isinstance(raw_id, bool) and 0 <= raw_id <= MAX_ID
            name = f"civitai:{raw_id}" if valid else f"civitai-search:{self.key()}#{number}"
            return [Candidate(name, "civitai", None, "error", one_line(exc))]
        versions = model.versions[:1] if self.latest_only else model.versions  # the API lists newest first
        return [version_candidate(model, v, n) for n, v in enumerate(versions)]

    def key(self) -> str:
        """A short stable name of this search (rows of malformed items are named by it)."""
        return hashlib.sha256(json.dumps(self.options(), sort_keys=True).encode()).hexdigest()[:12]


def _cursor(cursor: Any) -> dict[str, Any]:
    """The stored cursor, checked: a hand-edited state must not derail the listing with a traceback."""
    if cursor is None:
        return {"next": None, "models": 0}
    if (
        not isinstance(cursor, dict)
        or not isinstance(cursor.get("models"), int)
        or not isinstance(cursor.get("next"), (str, type(None)))
    ):
        raise StateError(
            f"the stored CivitAI listing cursor is not one this crawl wrote: {str(cursor)[:100]}; "
            "rerun with --relist"
        )
    return cursor


def version_candidate(model: CivitaiModel, version: CivitaiVersion | BadAnswer, number: int) -> Candidate:
    """The target of one model version, with what the listing says of its file; a final row when the
    listing alone decides (not a LoRA, only pickle files, no model file, a malformed version)."""
    if isinstance(version, BadAnswer):
        return Candidate(
            f"civitai:{model.id}@?{number}", "civitai", model.listing(), "error", one_line(version)
        )
    target = f"civitai:{model.id}@{version.id}"
    listing = {
        **model.listing(),
        "modelVersionId": version.id,
        "versionName": version.name,
        "baseModel": version.base_model,
    }
    if model.type and model.type.lower() not in LORA_TYPES:
        reason = f"{target}: a {model.type} model, not a LoRA"
        return Candidate(target, "civitai", listing, Status.NO_LORA, reason)
    try:
        entry, _ = pick_file(version, None, target)
    except (UnsafeFormat, NoLoraFiles) as exc:
        return Candidate(target, "civitai", listing, status_of(exc), one_line(exc))
    except NotFound as exc:  # the version lists no file at all: nothing to scan, as with no LoRA file
        return Candidate(target, "civitai", listing, Status.NO_LORA, one_line(exc))
    listing["file"] = entry.summary(version)
    return Candidate(target, "civitai", listing)
