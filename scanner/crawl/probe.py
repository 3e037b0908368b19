"""Header first: what a target's safetensors header says, read before any weight byte is downloaded.

Hub files through ``parse_safetensors_file_metadata`` (HTTP Range), CivitAI and plain URLs by two
Range GETs at most; a CivitAI listing already gives the file's size, format and download URL. The
probe applies the filters that need no weights: pickle files are refused (``UnsafeFormat``), files
over the size cap raise ``TooLarge`` (the crawl records them ``skipped``); a header that is not
safetensors raises ``InvalidHeader``. What it learns (size, tensors, dtypes, declared training
metadata, the base model the metadata names) is kept in the state even when the scan later fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from lora_wise.lora.fingerprint import from_metadata
from lora_wise.lora.metadata import parse_declared
from lora_wise.lora.safetensors_io import read_header as read_local_header
from lora_wise.lora.safetensors_io import refuse_unsafe

from ..download import RetryPolicy, check_size, is_pickle_name
from ..errors import NoLoraFiles, NotFound, UnsafeFormat
from ..sources import civitai, hub, url
from ..sources.base import pick_candidates
from ..sources.schema import Fields
from ..targets import Target, parse_target


def probe(
    target: str, listing: dict[str, Any] | None, *, max_size: int, policy: RetryPolicy
) -> list[dict[str, Any]]:
    """One header summary per file the scan would fetch; raises a typed error when a filter says no."""
    parsed = parse_target(target)
    if parsed.kind == "hub":
        return _hub(parsed, max_size, policy)
    if parsed.kind == "civitai":
        return [_civitai(parsed, listing, max_size, policy)]
    if parsed.kind == "url":
        name = PurePosixPath(urlsplit(parsed.url or "").path).name
        _refuse_pickle_name(name, target)
        return [summary(name, url.read_header(parsed.url or "", policy=policy), None, max_size, target)]
    return _local(parsed, max_size)


def _refuse_pickle_name(name: str, where: str) -> None:
    if is_pickle_name(name):
        raise UnsafeFormat(f"{where}: a pickle file ({PurePosixPath(name).name}): unsafe format, not scanned")


def _hub(parsed: Target, max_size: int, policy: RetryPolicy) -> list[dict[str, Any]]:
    repo_id = parsed.repo_id or ""
    if hub.settings().offline:
        return []  # HF_HUB_OFFLINE: no header reads; the scan reads the files from the local Hub cache
    if parsed.filename:  # a file the listing named: one Range read, no listing call
        _refuse_pickle_name(parsed.filename, parsed.text)
        header = hub.read_header(repo_id, parsed.filename, parsed.revision)
        return [summary(parsed.filename, header, None, max_size, parsed.text)]
    commit, entries, _ = hub.list_repo(repo_id, parsed.revision, policy=policy)
    chosen, _ = pick_candidates(entries, max_size=max_size, where=repo_id)
    return [
        summary(e.path, hub.read_header(repo_id, e.path, commit), e.size, max_size, parsed.text)
        for e in chosen
    ]


def _civitai(
    parsed: Target, listing: dict[str, Any] | None, max_size: int, policy: RetryPolicy
) -> dict[str, Any]:
    file = listing.get("file") if isinstance(listing, dict) else None
    if not file:  # a target from a list file: ask the API which file the scan would fetch
        version = civitai.fetch_version(parsed, policy)
        if version.model_type and version.model_type.lower() not in civitai.LORA_TYPES:
            raise NoLoraFiles(f"{parsed.text}: a {version.model_type} model, not a LoRA; nothing to scan")
        entry, _ = civitai.pick_file(version, None, parsed.text)
        file = entry.summary(version)
    # The state is a file anyone may edit: what it says of the file is checked like an API answer.
    f = Fields(file, f"{parsed.text}: the listing's file")
    name, size_kb, link = f.str("name") or "", f.number("sizeKB"), f.url("downloadUrl")
    size = int(size_kb * 1024) if size_kb is not None else None
    check_size(size, max_size, f"{parsed.text} {name}")  # before any request
    if (f.str("format") or "").lower() == "pickletensor":
        raise UnsafeFormat(f"{parsed.text}: {name} is a pickle file: unsafe format, not scanned")
    _refuse_pickle_name(name, parsed.text)
    if not link:
        raise NotFound(f"{parsed.text}: the listing gives no downloadUrl for {name}")
    header = url.read_header(link, headers=civitai.auth_headers(link), policy=policy)
    return summary(name, header, size, max_size, parsed.text)


def _local(parsed: Target, max_size: int) -> list[dict[str, Any]]:
    path = parsed.path
    if path is None or path.is_dir():
        return []  # a folder: the scan picks its candidates by the usual rule
    if not path.is_file():  # a FIFO or a device: opening it could block for ever
        raise NotFound(f"{path}: not a regular file or folder")
    refuse_unsafe(path)  # by name and by magic bytes
    header = read_local_header(path)
    tensors = [(t.dtype, t.end) for t in header.tensors.values()]
    return [_summary(path.name, header.metadata, tensors, path.stat().st_size, max_size, parsed.text)]


def summary(name: str, header: Any, size: int | None, max_size: int, where: str) -> dict[str, Any]:
    """The parts of a remote header (``SafetensorsFileMetadata``) worth keeping."""
    tensors = [(t.dtype, t.data_offsets[1]) for t in header.tensors.values()]
    return _summary(name, header.metadata, tensors, size, max_size, where)


def _summary(
    name: str, metadata: Any, tensors: Iterable[tuple[str, int]], size: int | None, max_size: int, where: str
) -> dict[str, Any]:
    tensors = list(tensors)
    # Without a listed size, the end of the last tensor's data is the file size less its header.
    size = size if size is not None else max((end for _, end in tensors), default=0)
    check_size(size, max_size, f"{where} {name}")
    # A hostile header may hold anything under __metadata__; only string values are metadata.
    meta = (
        {str(k): v for k, v in metadata.items() if isinstance(v, str)} if isinstance(metadata, dict) else {}
    )
    declared = parse_declared(meta)
    return {
        "file": name,
        "size": size,
        "tensors": len(tensors),
        "dtypes": dict(Counter(str(dtype) for dtype, _ in tensors)),
        "declared": declared.as_dict() if declared else None,
        "backbone_hint": from_metadata(meta)[0],
        "metadata_keys": len(meta),
    }
