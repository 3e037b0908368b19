"""Parse what the user typed after ``lora-scan`` into a typed :class:`Target`.

Forms: ``user/repo[@revision]``, ``hf://user/repo[@revision]/path``, ``https://huggingface.co/...``,
``civitai:MODEL_ID[@VERSION_ID]``, ``https://civitai.com/models/...``, a plain ``https://`` URL, or a
local file or folder. Parsing touches no network; an existing local path wins over a Hub id of the
same spelling (``./user/repo`` is what people mean when the folder is there).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import TargetError

TargetKind = Literal["hub", "civitai", "url", "local"]

HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
CIVITAI_HOSTS = {"civitai.com", "www.civitai.com", "civitai.green", "www.civitai.green"}
# The Hub's own repo id rule: namespace/name of letters, digits, '-', '_', '.'.
_REPO_ID = r"[A-Za-z0-9][\w.\-]*/[\w.\-]+"
_HUB_ID_RE = re.compile(rf"^(?P<repo>{_REPO_ID})(?:@(?P<rev>[^\s@]+))?$")
_HF_URI_RE = re.compile(
    rf"^hf://(?:models/)?(?P<repo>{_REPO_ID})(?:@(?P<rev>refs/(?:pr|convert)/[^/\s]+|[^/\s]+))?(?:/(?P<path>.*))?$"
)
_CIVITAI_RE = re.compile(r"^civitai:(?P<model>\d+)?(?:@(?P<version>\d+))?$", re.IGNORECASE)

USAGE = (
    "a target is one of: user/repo[@revision], hf://user/repo/file.safetensors, "
    "https://huggingface.co/user/repo, "
    "civitai:MODEL_ID[@VERSION_ID], https://civitai.com/models/ID, an https:// URL, or a local file or folder"
)


@dataclass(frozen=True)
class Target:
    """One parsed target; only the fields of its ``kind`` are set."""

    kind: TargetKind
    text: str
    repo_id: str | None = None
    revision: str | None = None
    filename: str | None = None
    model_id: int | None = None
    version_id: int | None = None
    url: str | None = None
    path: Path | None = None


def parse_target(text: str) -> Target:
    """Turn a target string into a :class:`Target`, or raise :class:`TargetError` saying the forms."""
    raw = text.strip()
    if not raw:
        raise TargetError(f"empty target: {USAGE}")
    if raw.lower().startswith("civitai:"):
        return _parse_civitai_id(raw)
    if raw.startswith("hf://"):
        return _parse_hf_uri(raw)
    if re.match(r"^[a-z][a-z0-9+.\-]*://", raw, re.IGNORECASE):
        return _parse_url(raw)
    if "\x00" in raw:
        raise TargetError(f"{raw!r}: a target never holds a NUL byte")
    path = Path(raw).expanduser()
    if _exists(path):
        return Target(kind="local", text=raw, path=path)
    match = _HUB_ID_RE.match(raw)
    if match and not raw.startswith((".", "/", "~")):
        return Target(kind="hub", text=raw, repo_id=match["repo"], revision=_revision(match["rev"], raw))
    raise TargetError(f"{raw!r} is not an existing file or folder, nor a known target: {USAGE}")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long for the file system is no local file (nor anything else)
        raise TargetError(f"{str(path)[:60]!r}...: not a usable path ({exc.strerror})") from None


def _revision(revision: str | None, raw: str) -> str | None:
    """A branch, tag or commit; never a path (the Hub cache keeps branches as files under refs/)."""
    if revision is None:
        return None
    parts = revision.split("/")
    if "\\" in revision or "\x00" in revision or any(p in ("", ".", "..") or len(p) > 255 for p in parts):
        raise TargetError(f"{raw!r}: {revision!r} is not a branch, tag or commit name")
    return revision


def _parse_civitai_id(raw: str) -> Target:
    match = _CIVITAI_RE.match(raw)
    if not match or not (match["model"] or match["version"]):
        raise TargetError(
            f"{raw!r}: write civitai:MODEL_ID or civitai:MODEL_ID@VERSION_ID (numbers, as in the model URL)"
        )
    return Target(
        kind="civitai",
        text=raw,
        model_id=int(match["model"]) if match["model"] else None,
        version_id=int(match["version"]) if match["version"] else None,
    )


def _parse_hf_uri(raw: str) -> Target:
    if raw.startswith(("hf://datasets/", "hf://spaces/", "hf://buckets/")):
        raise TargetError(f"{raw!r}: LoRAs live in model repos; give hf://user/repo[/file]")
    match = _HF_URI_RE.match(raw)
    if not match:
        raise TargetError(f"{raw!r}: write hf://user/repo[@revision][/path/in/repo.safetensors]")
    return Target(
        kind="hub",
        text=raw,
        repo_id=match["repo"],
        revision=_revision(match["rev"], raw),
        filename=match["path"] or None,
    )


def _hub_hosts() -> set[str]:
    # A mirror set with HF_ENDPOINT serves the same URL layout as huggingface.co.
    hosts = set(HUB_HOSTS)
    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint:
        hosts.add(urlsplit(endpoint).netloc.lower())
    return hosts


def _parse_url(raw: str) -> Target:
    parts = urlsplit(raw)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise TargetError(f"{raw!r}: only http(s) URLs can be fetched; {USAGE}")
    host = parts.netloc.lower()
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if host in _hub_hosts():
        return _parse_hub_url(raw, segments)
    if host in CIVITAI_HOSTS:
        return _parse_civitai_url(raw, segments, parse_qs(parts.query))
    return Target(kind="url", text=raw, url=raw)


def _parse_hub_url(raw: str, segments: list[str]) -> Target:
    if segments and segments[0] in ("datasets", "spaces", "buckets"):
        raise TargetError(f"{raw!r}: LoRAs live in model repos; give https://huggingface.co/user/repo")
    if len(segments) < 2:
        raise TargetError(
            f"{raw!r}: a Hub URL names a repo: https://huggingface.co/user/repo[/blob/REV/FILE]"
        )
    repo_id = "/".join(segments[:2])
    if len(segments) == 2:
        return Target(kind="hub", text=raw, repo_id=repo_id)
    if segments[2] in ("blob", "resolve", "tree") and len(segments) >= 4:
        filename = "/".join(segments[4:]) or None
        if segments[2] == "tree":
            filename = None  # a folder view: scan the repo's candidates at that revision
        return Target(
            kind="hub", text=raw, repo_id=repo_id, revision=_revision(segments[3], raw), filename=filename
        )
    raise TargetError(f"{raw!r}: expected https://huggingface.co/user/repo[/blob/REV/FILE]")


def _parse_civitai_url(raw: str, segments: list[str], query: dict[str, list[str]]) -> Target:
    version = query.get("modelVersionId", [None])[0]
    if len(segments) >= 2 and segments[0] == "models" and segments[1].isdigit():
        if version is not None and not version.isdigit():
            raise TargetError(f"{raw!r}: modelVersionId must be a number")
        return Target(
            kind="civitai", text=raw, model_id=int(segments[1]), version_id=int(version) if version else None
        )
    # The site's download links: /api/download/models/<VERSION_ID>
    if segments[:3] == ["api", "download", "models"] and len(segments) == 4 and segments[3].isdigit():
        return Target(kind="civitai", text=raw, version_id=int(segments[3]))
    raise TargetError(f"{raw!r}: expected https://civitai.com/models/ID[/slug][?modelVersionId=VERSION]")
