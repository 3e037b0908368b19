"""``crawl hf``: a Hugging Face Hub model search (``HfApi.list_models``) as crawl targets.

Each model found becomes one target per LoRA weights file (``hf://user/repo/file.safetensors``),
chosen from the listing's file names by the same rule as ``lora-scan user/repo``. A repo holding
only pickle files is recorded ``unsafe`` and one with no candidate ``no-lora``, from the listing
alone: nothing is downloaded for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from huggingface_hub import HfApi
from huggingface_hub.hf_api import ModelInfo

from lora_wise.errors import one_line

from ..errors import BadAnswer, NoLoraFiles, UnsafeFormat
from ..sources.base import RepoEntry, pick_candidates
from ..sources.hub import hub_errors, settings
from ..sources.schema import HubRepo
from ..status import Status, status_of
from .listing import Page, stored_offset
from .state import Candidate

PAGE = 100  # models per stored page (the Hub itself pages by 1000)
EXPAND = ["siblings", "sha", "tags"]  # file names for the candidate rule, the commit, base_model tags


def base_model_filter(base_model: str) -> str:
    """``--base-model REPO`` -> the Hub's tag for adapters of that model."""
    return base_model if base_model.startswith("base_model:") else f"base_model:adapter:{base_model}"


def base_model_of(tags: list[str] | None) -> str | None:
    """The base model a repo's tags name (``base_model:adapter:X`` first, then ``base_model:X``)."""
    tags = tags or []
    for prefix in ("base_model:adapter:", "base_model:"):
        for tag in tags:
            rest = tag[len(prefix) :] if tag.startswith(prefix) else ""
            if rest and (prefix != "base_model:" or ":" not in rest):
                return rest
    return None


class HubSearch:
    source = "hf"

    def __init__(
        self,
        *,
        filters: tuple[str, ...] = ("lora",),
        base_model: str | None = None,
        search: str | None = None,
        author: str | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> None:
        self.filters = [*filters, *([base_model_filter(base_model)] if base_model else [])]
        self.search, self.author, self.sort, self.limit = search, author, sort, limit or None

    def options(self) -> dict[str, Any]:
        return {
            "filter": self.filters,
            "search": self.search,
            "author": self.author,
            "sort": self.sort,
            "limit": self.limit,
        }

    def pages(self, cursor: Any) -> Iterator[Page]:
        """The Hub's paging cannot be resumed mid-way: a rerun lists again and skips ``cursor`` models."""
        page: list[Candidate] = []
        count = stored_offset(cursor)
        for model in self._models(skip=count):
            page += candidates_of(model, count)
            count += 1
            if count % PAGE == 0:
                yield page, count
                page = []
        yield page, None

    def _models(self, skip: int) -> Iterator[ModelInfo]:
        """The search results after the first ``skip``.

        huggingface_hub already retries 429/5xx on each page (``http_backoff``); a search that still
        fails ends the listing with its reason, and the rerun lists again from here.
        """
        api = HfApi(endpoint=settings().endpoint)
        with hub_errors("Hub model search", None):
            results = api.list_models(
                filter=self.filters,
                search=self.search,
                author=self.author,
                sort=self.sort,
                limit=self.limit,
                expand=EXPAND,  # type: ignore[arg-type]
            )
            for index, model in enumerate(results):
                if index >= skip:
                    yield model


def candidates_of(model: ModelInfo, number: int = 0) -> list[Candidate]:
    """One target per LoRA file of a listed repo, or one final row when the listing already decides
    (a malformed entry is one ``error`` row, named by its place in the search when it has no id)."""
    try:
        repo = HubRepo.from_info(model, "Hub model search")
    except BadAnswer as exc:
        name = getattr(model, "id", None)
        target = name if isinstance(name, str) and name else f"hf-search:#{number}"
        return [Candidate(target, "hf", None, Status.ERROR, one_line(exc))]
    listing = {"repo_id": repo.id, "sha": repo.sha, "base_model": base_model_of(list(repo.tags))}
    if repo.files is None:  # a mirror that ignores expand=siblings: the scan lists the repo itself
        return [Candidate(repo.id, "hf", listing)]
    entries = [RepoEntry(f.path, f.size) for f in repo.files]
    try:
        chosen, notes = pick_candidates(entries, max_size=2**62, where=repo.id)
    except (UnsafeFormat, NoLoraFiles) as exc:
        return [Candidate(repo.id, "hf", listing, status=status_of(exc), error=one_line(exc))]
    return [
        Candidate(f"hf://{repo.id}/{e.path}", "hf", {**listing, "file": e.path, "notes": notes})
        for e in chosen
    ]
