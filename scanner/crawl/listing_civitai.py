"""``crawl civitai``: a CivitAI model search (``GET /api/v1/models``, cursor paging) as crawl targets.

Every version of every model found is one target, ``civitai:MODEL@VERSION``, with what the listing
says about its primary file (name, sizeKB, format, SHA-256, downloadUrl, base model) kept in the
state, so the size cap and the pickle check need no request. Deep paging goes through
``metadata.nextCursor`` only (page numbers past 1000 results answer 429, REFERENCE §6).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from lora_wise.errors import one_line

from ..download import RetryPolicy, client, get_json
from ..errors import FetchError, NoLoraFiles, NotFound, UnsafeFormat
from ..sources.civitai import AUTH_HINT, LORA_TYPES, auth_headers, endpoint, pick_file
from ..status import Status, status_of
from .listing import Page
from .state import Candidate

PAGE_LIMIT = 100  # the API's largest page


class CivitaiSearch:
    source = "civitai"

    def __init__(
        self, *, types: tuple[str, ...] = ("LORA",), base_models: tuple[str, ...] = (), query: str | None = None,
        sort: str | None = None, nsfw: bool | None = None, limit: int | None = None, latest_only: bool = False,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.types, self.base_models, self.query, self.sort, self.nsfw = list(types), list(base_models), query, sort, nsfw
        self.limit, self.latest_only = limit or None, latest_only
        self.policy = policy or RetryPolicy()

    def options(self) -> dict[str, Any]:
        return {"types": self.types, "baseModels": self.base_models, "query": self.query, "sort": self.sort,
                "nsfw": self.nsfw, "limit": self.limit, "latest_only": self.latest_only}  # fmt: skip

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
        state = cursor or {"next": None, "models": 0}
        with client() as http:
            while True:
                page_limit = PAGE_LIMIT if self.limit is None else min(PAGE_LIMIT, self.limit - state["models"])
                items, next_cursor = self._page(http, state["next"], page_limit)
                items = items[:page_limit]
                state = {"next": next_cursor, "models": state["models"] + len(items)}
                done = not next_cursor or not items or (self.limit is not None and state["models"] >= self.limit)
                yield [c for model in items for c in self.candidates_of(model)], (None if done else state)
                if done:
                    return

    def _page(self, http: Any, cursor: str | None, page_limit: int) -> tuple[list[dict], str | None]:
        data = get_json(http, self.url(cursor, page_limit), headers=auth_headers(), what="civitai model search",
                        auth_hint=AUTH_HINT, policy=self.policy)  # fmt: skip
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise FetchError("civitai model search: unexpected API answer (no items list); check CIVITAI_ENDPOINT")
        meta = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        next_cursor = meta.get("nextCursor")
        return [m for m in data["items"] if isinstance(m, dict)], (str(next_cursor) if next_cursor else None)

    def candidates_of(self, model: dict[str, Any]) -> list[Candidate]:
        versions = [v for v in model.get("modelVersions") or [] if isinstance(v, dict)]
        if self.latest_only:
            versions = versions[:1]  # the API lists versions newest first
        return [c for v in versions if (c := version_candidate(model, v)) is not None]


def version_candidate(model: dict[str, Any], version: dict[str, Any]) -> Candidate | None:
    """The target of one model version, or None when the API gives no numeric ids."""
    model_id, version_id = model.get("id"), version.get("id")
    if not isinstance(model_id, int) or not isinstance(version_id, int):
        return None
    target = f"civitai:{model_id}@{version_id}"
    listing = {
        "modelId": model_id, "modelVersionId": version_id, "modelName": model.get("name"),
        "versionName": version.get("name"), "type": model.get("type"), "nsfw": model.get("nsfw"),
        "baseModel": version.get("baseModel"), "creator": (model.get("creator") or {}).get("username"),
    }
    model_type = str(model.get("type") or "")
    if model_type and model_type.lower() not in LORA_TYPES:
        reason = f"{target}: a {model_type} model, not a LoRA"
        return Candidate(target, "civitai", listing, Status.NO_LORA, reason)
    try:
        entry, _ = pick_file(version, None, target)
    except (UnsafeFormat, NoLoraFiles) as exc:
        return Candidate(target, "civitai", listing, status_of(exc), one_line(exc))
    except NotFound as exc:  # the version lists no file at all: nothing to scan, as with no LoRA file
        return Candidate(target, "civitai", listing, Status.NO_LORA, one_line(exc))
    listing["file"] = file_summary(entry, version)
    return Candidate(target, "civitai", listing)


def file_summary(entry: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    """What the listing says of the file the scan will fetch: enough for the size cap and the header read."""
    meta = entry.get("metadata") or {}
    hashes = entry.get("hashes") or {}
    return {
        "name": entry.get("name"), "sizeKB": entry.get("sizeKB"), "format": meta.get("format"), "fp": meta.get("fp"),
        "sha256": hashes.get("SHA256"), "autov2": hashes.get("AutoV2"), "primary": entry.get("primary"),
        "downloadUrl": entry.get("downloadUrl") or version.get("downloadUrl"),
    }
