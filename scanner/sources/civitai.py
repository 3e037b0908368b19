"""CivitAI source: the REST API's model / model-version JSON, the version's primary LoRA file, its SHA-256.

``CIVITAI_ENDPOINT`` overrides the base URL (tests, mirrors); ``CIVITAI_TOKEN`` is sent as a Bearer
token to the API and to downloads on the API's own host, never elsewhere (httpx also drops it when a
download redirects to another host, as CivitAI's do to their CDN).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..download import (
    DEFAULT_MAX_SIZE,
    DEFAULT_RETRY,
    RetryPolicy,
    check_size,
    client,
    download,
    get_json,
    is_pickle_name,
    safe_filename,
)
from ..errors import BadAnswer, NoLoraFiles, NotFound, UnsafeFormat
from ..targets import Target
from .base import FetchedFile
from .schema import CivitaiFile, CivitaiModel, CivitaiVersion

DEFAULT_ENDPOINT = "https://civitai.com"
AUTH_HINT = "create an API key at https://civitai.com/user/account and set CIVITAI_TOKEN"
# Model types whose files are low-rank adapters; anything else (Checkpoint, TextualInversion...) is not.
LORA_TYPES = {"lora", "locon", "dora", "lycoris"}
MODEL_FILE_TYPES = {"model", "pruned model"}


def endpoint() -> str:
    return (os.environ.get("CIVITAI_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def auth_headers(url: str | None = None) -> dict[str, str]:
    """The Bearer token, only for the API's own host: a downloadUrl elsewhere never sees it."""
    token = os.environ.get("CIVITAI_TOKEN")
    if not token or (url is not None and urlsplit(url).netloc.lower() != urlsplit(endpoint()).netloc.lower()):
        return {}
    return {"Authorization": f"Bearer {token}"}


def fetch_version(target: Target, policy: RetryPolicy = DEFAULT_RETRY) -> CivitaiVersion:
    """The model version the target names (the latest version of a model if none), checked."""
    base, headers = endpoint(), auth_headers()
    with client(policy) as http:
        if target.version_id is not None:
            what = f"civitai version {target.version_id}"
            version = CivitaiVersion.from_json(
                _get(http, f"{base}/api/v1/model-versions/{target.version_id}", what, headers, policy), what
            )
            if target.model_id is not None and version.model_id not in (None, target.model_id):
                raise NotFound(
                    f"civitai: version {target.version_id} belongs to model {version.model_id}, "
                    f"not {target.model_id}; check the ids"
                )
            return version
        what = f"civitai model {target.model_id}"
        model = CivitaiModel.from_json(
            _get(http, f"{base}/api/v1/models/{target.model_id}", what, headers, policy), what
        )
    if not model.versions:
        raise NotFound(f"civitai model {target.model_id}: it has no published version")
    latest = model.versions[0]  # the API lists versions newest first
    if isinstance(latest, BadAnswer):
        raise latest
    return latest


def _get(http: Any, url: str, what: str, headers: dict[str, str], policy: RetryPolicy) -> Any:
    return get_json(http, url, headers=headers, what=what, auth_hint=AUTH_HINT, policy=policy)


def is_pickle_file(entry: CivitaiFile) -> bool:
    return (entry.format or "").lower() == "pickletensor" or is_pickle_name(entry.name)


def pick_file(version: CivitaiVersion, file: str | None, where: str) -> tuple[CivitaiFile, list[str]]:
    """The version's primary safetensors model file (or ``file`` by name), and notes on what was skipped."""
    files = version.files
    if file is not None:
        named = [f for f in files if f.name == file]
        if not named:
            raise NotFound(f"{where}: no file {file!r}; files: {', '.join(f.name for f in files) or 'none'}")
        if is_pickle_file(named[0]):
            raise UnsafeFormat(f"{where}: {file} is a pickle file: unsafe format, not scanned")
        return named[0], []
    models = [f for f in files if f.type.lower() in MODEL_FILE_TYPES]
    safe = [f for f in models if not is_pickle_file(f)]
    notes = [f"skipped {f.name}: unsafe format, not scanned (pickle)" for f in models if is_pickle_file(f)]
    if not safe:
        if notes:
            raise UnsafeFormat(
                f"{where}: only pickle files ({', '.join(f.name for f in models)}): "
                "unsafe format, not scanned"
            )
        raise NoLoraFiles(f"{where}: the version has no model file to scan")
    # The primary file first: CivitAI marks the one its UI downloads.
    safe.sort(key=lambda f: (not f.primary, f.name))
    return safe[0], notes


def fetch(
    target: Target,
    *,
    file: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    progress: bool = True,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[FetchedFile]:
    """Download the target's LoRA file into a fresh temp folder (``FetchedFile.cleanup`` removes it)."""
    version = fetch_version(target, policy)
    where = f"civitai:{version.model_id or target.model_id}@{version.id}"
    if version.model_type and version.model_type.lower() not in LORA_TYPES:
        raise NoLoraFiles(f"{where}: a {version.model_type} model, not a LoRA; nothing to scan")
    entry, notes = pick_file(version, file, where)
    name = safe_filename(entry.name, default=f"civitai-{version.id}.safetensors")
    check_size(entry.size, max_size, f"{where} {name}")
    url = entry.download_url or version.download_url
    if not url:
        raise NotFound(f"{where}: the API gives no downloadUrl for {name}; the file may be unpublished")
    dest = Path(tempfile.mkdtemp(prefix="lora-scan-"))
    try:
        got = download(
            url,
            dest,
            filename=name,
            headers=auth_headers(url),
            max_size=max_size,
            sha256=entry.sha256,
            progress=progress,
            policy=policy,
            auth_hint=AUTH_HINT,
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return [
        FetchedFile(
            path=got.path,
            source="civitai",
            source_id=where,
            name=entry.name or name,
            size=got.size,
            url=url,
            sha256=got.sha256,
            verified=got.verified,
            temporary=True,
            info=_info(version, entry),
            notes=notes,
        )
    ]


def _info(version: CivitaiVersion, entry: CivitaiFile) -> dict[str, Any]:
    """What CivitAI says about the LoRA, under its own field names, for the report."""
    info = {
        "modelId": version.model_id,
        "modelVersionId": version.id,
        "modelName": version.model_name,
        "versionName": version.name,
        "type": version.model_type,
        "nsfw": version.model_nsfw,
        "baseModel": version.base_model,
        "baseModelType": version.base_model_type,
        "trainedWords": list(version.trained_words) or None,
        "format": entry.format,
        "fp": entry.fp,
        "sizeKB": entry.size_kb,
        "sha256": entry.sha256,
    }
    return {k: v for k, v in info.items() if v is not None}
