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
from ..errors import FetchError, NoLoraFiles, NotFound, UnsafeFormat
from ..targets import Target
from .base import FetchedFile

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


def fetch_version(target: Target, policy: RetryPolicy = DEFAULT_RETRY) -> tuple[dict[str, Any], str | None]:
    """The model-version JSON the target names (latest version of a model if none) and the model's type."""
    base, headers = endpoint(), auth_headers()
    with client() as http:
        if target.version_id is not None:
            version = _get(http, f"{base}/api/v1/model-versions/{target.version_id}", f"civitai version {target.version_id}", headers, policy)
            if target.model_id is not None and version.get("modelId") not in (None, target.model_id):
                raise NotFound(
                    f"civitai: version {target.version_id} belongs to model {version.get('modelId')}, "
                    f"not {target.model_id}; check the ids"
                )
            return version, (version.get("model") or {}).get("type")
        model = _get(http, f"{base}/api/v1/models/{target.model_id}", f"civitai model {target.model_id}", headers, policy)
    versions = model.get("modelVersions") or []
    if not versions:
        raise NotFound(f"civitai model {target.model_id}: it has no published version")
    # The API lists versions newest first; keep the model's name for the report.
    version = dict(versions[0], model={"name": model.get("name"), "type": model.get("type"), "nsfw": model.get("nsfw")})
    version.setdefault("modelId", target.model_id)
    return version, model.get("type")


def _get(http: Any, url: str, what: str, headers: dict[str, str], policy: RetryPolicy) -> dict[str, Any]:
    data = get_json(http, url, headers=headers, what=what, auth_hint=AUTH_HINT, policy=policy)
    if not isinstance(data, dict):
        raise FetchError(f"{what}: unexpected API answer (not a JSON object); check CIVITAI_ENDPOINT")
    return data


def is_pickle_file(entry: dict[str, Any]) -> bool:
    fmt = str((entry.get("metadata") or {}).get("format") or "")
    return fmt.lower() == "pickletensor" or is_pickle_name(str(entry.get("name", "")))


def pick_file(version: dict[str, Any], file: str | None, where: str) -> tuple[dict[str, Any], list[str]]:
    """The version's primary safetensors model file (or ``file`` by name), and notes on what was skipped."""
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    if file is not None:
        named = [f for f in files if f.get("name") == file]
        if not named:
            raise NotFound(f"{where}: no file {file!r}; files: {', '.join(str(f.get('name')) for f in files) or 'none'}")
        if is_pickle_file(named[0]):
            raise UnsafeFormat(f"{where}: {file} is a pickle file: unsafe format, not scanned")
        return named[0], []
    models = [f for f in files if str(f.get("type", "Model")).lower() in MODEL_FILE_TYPES]
    safe = [f for f in models if not is_pickle_file(f)]
    notes = [f"skipped {f.get('name')}: unsafe format, not scanned (pickle)" for f in models if is_pickle_file(f)]
    if not safe:
        if notes:
            raise UnsafeFormat(f"{where}: only pickle files ({', '.join(str(f.get('name')) for f in models)}): unsafe format, not scanned")
        raise NoLoraFiles(f"{where}: the version has no model file to scan")
    # The primary file first: CivitAI marks the one its UI downloads.
    safe.sort(key=lambda f: (not f.get("primary"), str(f.get("name"))))
    return safe[0], notes


def fetch(
    target: Target, *, file: str | None = None, max_size: int = DEFAULT_MAX_SIZE, progress: bool = True,
    policy: RetryPolicy = DEFAULT_RETRY,
) -> list[FetchedFile]:
    """Download the target's LoRA file into a fresh temp folder (``FetchedFile.cleanup`` removes it)."""
    version, model_type = fetch_version(target, policy)
    where = f"civitai:{version.get('modelId', target.model_id)}@{version.get('id', target.version_id)}"
    if model_type and model_type.lower() not in LORA_TYPES:
        raise NoLoraFiles(f"{where}: a {model_type} model, not a LoRA; nothing to scan")
    entry, notes = pick_file(version, file, where)
    name = safe_filename(str(entry.get("name") or ""), default=f"civitai-{version.get('id')}.safetensors")
    size_kb = entry.get("sizeKB")
    check_size(int(float(size_kb) * 1024) if size_kb is not None else None, max_size, f"{where} {name}")
    url = entry.get("downloadUrl") or version.get("downloadUrl")
    if not url:
        raise NotFound(f"{where}: the API gives no downloadUrl for {name}; the file may be unpublished")
    sha256 = ((entry.get("hashes") or {}).get("SHA256") or None)
    dest = Path(tempfile.mkdtemp(prefix="lora-scan-"))
    try:
        got = download(
            str(url), dest, filename=name, headers=auth_headers(str(url)), max_size=max_size,
            sha256=sha256.lower() if sha256 else None, progress=progress, policy=policy, auth_hint=AUTH_HINT,
        )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return [
        FetchedFile(
            path=got.path, source="civitai", source_id=where, name=str(entry.get("name") or name), size=got.size,
            url=str(url), sha256=sha256.lower() if sha256 else None, verified=got.verified, temporary=True,
            info=_info(version, entry), notes=notes,
        )
    ]


def _info(version: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """What CivitAI says about the LoRA, under its own field names, for the report."""
    model = version.get("model") or {}
    meta = entry.get("metadata") or {}
    info = {
        "modelId": version.get("modelId"),
        "modelVersionId": version.get("id"),
        "modelName": model.get("name"),
        "versionName": version.get("name"),
        "type": model.get("type"),
        "nsfw": model.get("nsfw"),
        "baseModel": version.get("baseModel"),
        "baseModelType": version.get("baseModelType"),
        "trainedWords": version.get("trainedWords"),
        "format": meta.get("format"),
        "fp": meta.get("fp"),
        "sizeKB": entry.get("sizeKB"),
    }
    return {k: v for k, v in info.items() if v is not None}
