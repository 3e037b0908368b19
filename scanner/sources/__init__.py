"""Turn a ``lora-scan`` target into local files to scan: Hub, CivitAI, plain URL or local path.

``resolve(target)`` returns one :class:`FetchedFile` per LoRA candidate; ``fetched(target)`` is the
same as a context manager that deletes temporary downloads afterwards; ``read_remote_header`` reads
only a safetensors header (for the crawl) without downloading the weights.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..download import DEFAULT_MAX_SIZE, RetryPolicy
from ..errors import NotFound, TargetError
from ..targets import Target, parse_target
from .base import FetchedFile, RepoEntry, pick_candidates

if TYPE_CHECKING:
    from huggingface_hub.utils import SafetensorsFileMetadata

__all__ = ["FetchedFile", "RepoEntry", "fetched", "pick_candidates", "read_remote_header", "resolve"]


def _source(kind: str) -> ModuleType:
    """The source module of a target kind, imported when first needed: a local file's scan never
    pays for huggingface_hub (a tenth of a second of every ``lora-scan FILE``)."""
    return importlib.import_module(f"{__name__}.{kind}")


def resolve(
    target: str | Target,
    *,
    file: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    retry: RetryPolicy | None = None,
) -> list[FetchedFile]:
    """Fetch the LoRA file(s) a target names. Raises ``TargetError`` or a ``FetchError`` subclass.

    ``file`` picks one file of a Hub repo, local folder or CivitAI version by name; ``max_size`` caps
    every download (bytes); ``cache_dir`` is the Hub cache (default: huggingface_hub's). CivitAI and
    URL downloads are temporary: call ``FetchedFile.cleanup`` or use :func:`fetched`.
    """
    parsed = parse_target(target) if isinstance(target, str) else target
    if max_size <= 0:
        raise TargetError(f"--max-size must be positive, got {max_size}")
    policy = retry or RetryPolicy()
    if parsed.kind == "hub":
        return _source("hub").fetch(
            parsed, file=file, max_size=max_size, cache_dir=cache_dir, progress=progress, policy=policy
        )
    if parsed.kind == "civitai":
        return _source("civitai").fetch(
            parsed, file=file, max_size=max_size, progress=progress, policy=policy
        )
    if parsed.kind == "url":
        return _source("url").fetch(parsed, max_size=max_size, progress=progress, policy=policy)
    return _source("local").fetch(parsed, file=file, max_size=max_size)


@contextmanager
def fetched(target: str | Target, **options: Any) -> Iterator[list[FetchedFile]]:
    """``resolve`` as a context manager: temporary downloads are deleted on exit, whatever happens."""
    files = resolve(target, **options)
    try:
        yield files
    finally:
        for f in files:
            f.cleanup()


def read_remote_header(target: str | Target, *, file: str | None = None) -> SafetensorsFileMetadata:
    """Only the safetensors header of a remote LoRA (HTTP Range requests; the weights are not fetched).

    ``hf://user/repo/file.safetensors`` or a Hub file URL use ``HfApi.parse_safetensors_file_metadata``;
    a CivitAI target reads its primary file's header; an http(s) URL takes two Range GETs at most.
    """
    parsed = parse_target(target) if isinstance(target, str) else target
    civitai, hub, url = _source("civitai"), _source("hub"), _source("url")
    if parsed.kind == "hub":
        name = file or parsed.filename
        if not name:
            raise TargetError(f"{parsed.text}: name the file, e.g. hf://{parsed.repo_id}/lora.safetensors")
        return hub.read_header(parsed.repo_id or "", name, parsed.revision)
    if parsed.kind == "civitai":
        version = civitai.fetch_version(parsed)
        entry, _ = civitai.pick_file(version, file, parsed.text)
        download_url = entry.download_url or version.download_url
        if not download_url:
            raise NotFound(f"{parsed.text}: the API gives no downloadUrl for {entry.name}")
        return url.read_header(download_url, headers=civitai.auth_headers(download_url))
    if parsed.kind == "url":
        return url.read_header(parsed.url or "")
    raise TargetError(f"{parsed.text}: a local file; read it with lora_wise.read_lora")
