"""The fields we use of the CivitAI and Hub answers, declared once and checked where they enter.

A server (or a mirror, or a man in the middle) can answer any JSON. Each ``from_json`` checks the
type of every field we read and raises :class:`~scanner.errors.BadAnswer` naming the field; past
it, code reads typed attributes, never ``dict.get`` chains. Fields we do not use are ignored, a
field we use may be missing or null where the API itself leaves it out. Strings are made
encodable (a lone surrogate such as ``"\\ud800"`` becomes U+FFFD), so no report fails on them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import BadAnswer

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_ID = 2**63 - 1  # SQLite's integer, and far above any real id


_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs: any left is a lone one


def text(value: str) -> str:
    """``value`` with lone surrogates (which JSON allows and UTF-8 does not) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


class Fields:
    """Typed reads from one JSON object of an answer; every failure names the answer and the field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise BadAnswer(f"{where}: expected a JSON object, got {_kind(data)}")
        self.data, self.where = data, where

    def _fail(self, key: str, wanted: str) -> BadAnswer:
        return BadAnswer(f"{self.where}: field {key!r} should be {wanted}, got {_kind(self.data[key])}")

    def str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return text(value)

    def bool(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, bool):
            raise self._fail(key, "true or false")
        return value

    def id(self, key: str, required: bool = False) -> int | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
            raise BadAnswer(f"{self.where}: field {key!r} should be a numeric id, got {_kind(value)}")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise self._fail(key, "a finite number >= 0")
        return float(value)

    def object(self, key: str) -> Fields:
        value = self.data.get(key)
        return Fields({} if value is None else value, f"{self.where} {key}")

    def list(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(key, "a list")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.list(key)
        if not all(isinstance(v, str) for v in values):
            raise self._fail(key, "a list of strings")
        return tuple(text(v) for v in values)

    def url(self, key: str) -> str | None:
        value = self.str(key)
        if value is not None and not value.lower().startswith(("https://", "http://")):
            raise BadAnswer(f"{self.where}: field {key!r} is not an http(s) URL: {value[:80]!r}")
        return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {str(value)[:40]!r}"


# ---------------------------------------------------------------- CivitAI (REFERENCE §6)


@dataclass(frozen=True)
class CivitaiFile:
    """One entry of a version's ``files``."""

    name: str
    type: str
    primary: bool
    size_kb: float | None
    format: str | None
    fp: str | None
    sha256: str | None  # lower-case hex
    autov2: str | None
    download_url: str | None

    @classmethod
    def from_json(cls, data: Any, where: str) -> CivitaiFile:
        f = Fields(data, f"{where} file")
        meta, hashes = f.object("metadata"), f.object("hashes")
        sha256 = hashes.str("SHA256")
        if sha256 is not None and not _HEX64.match(sha256):
            raise BadAnswer(f"{where} file: hashes.SHA256 is not a SHA-256: {sha256[:80]!r}")
        return cls(
            name=f.str("name") or "",
            type=f.str("type") or "Model",
            primary=bool(f.bool("primary")),
            size_kb=f.number("sizeKB"),
            format=meta.str("format"),
            fp=meta.str("fp"),
            sha256=sha256.lower() if sha256 else None,
            autov2=hashes.str("AutoV2"),
            download_url=f.url("downloadUrl"),
        )

    @property
    def size(self) -> int | None:
        """Bytes, from ``sizeKB`` (the API's only size)."""
        return int(self.size_kb * 1024) if self.size_kb is not None else None

    def summary(self, version: CivitaiVersion) -> dict[str, Any]:
        """What a crawl keeps of the file a scan will fetch (the state's ``listing.file``)."""
        return {
            "name": self.name,
            "sizeKB": self.size_kb,
            "format": self.format,
            "fp": self.fp,
            "sha256": self.sha256,
            "autov2": self.autov2,
            "primary": self.primary,
            "downloadUrl": self.download_url or version.download_url,
        }


@dataclass(frozen=True)
class CivitaiVersion:
    """A model version, from ``/model-versions/{id}`` or from a model's ``modelVersions``."""

    id: int
    model_id: int | None
    name: str | None
    base_model: str | None
    base_model_type: str | None
    trained_words: tuple[str, ...]
    files: tuple[CivitaiFile, ...]
    download_url: str | None
    model_name: str | None = None
    model_type: str | None = None
    model_nsfw: bool | None = None

    @classmethod
    def from_json(cls, data: Any, where: str, model: CivitaiModel | None = None) -> CivitaiVersion:
        f = Fields(data, where)
        version_id = f.id("id", required=True)
        assert version_id is not None
        here = f"{where} version {version_id}"
        parent = f.object("model")
        return cls(
            id=version_id,
            model_id=f.id("modelId") if model is None else model.id,
            name=f.str("name"),
            base_model=f.str("baseModel"),
            base_model_type=f.str("baseModelType"),
            trained_words=f.strings("trainedWords"),
            files=tuple(CivitaiFile.from_json(entry, here) for entry in f.list("files")),
            download_url=f.url("downloadUrl"),
            model_name=model.name if model else parent.str("name"),
            model_type=model.type if model else parent.str("type"),
            model_nsfw=model.nsfw if model else parent.bool("nsfw"),
        )


@dataclass(frozen=True)
class CivitaiModel:
    """A model from ``/models/{id}`` or a search page; ``versions`` holds, per entry of the answer's
    ``modelVersions``, the parsed version or the error that entry gave (one bad version, one error)."""

    id: int
    name: str | None
    type: str | None
    nsfw: bool | None
    creator: str | None
    versions: tuple[CivitaiVersion | BadAnswer, ...]

    @classmethod
    def from_json(cls, data: Any, where: str) -> CivitaiModel:
        f = Fields(data, where)
        model_id = f.id("id", required=True)
        assert model_id is not None
        here = f"{where} model {model_id}"
        model = cls(
            model_id, f.str("name"), f.str("type"), f.bool("nsfw"), f.object("creator").str("username"), ()
        )
        versions: list[CivitaiVersion | BadAnswer] = []
        for entry in f.list("modelVersions"):
            try:
                versions.append(CivitaiVersion.from_json(entry, here, model))
            except BadAnswer as exc:
                versions.append(exc)
        return cls(model.id, model.name, model.type, model.nsfw, model.creator, tuple(versions))

    def listing(self) -> dict[str, Any]:
        """What a crawl keeps of the model (the state's ``listing``), before the version's own fields."""
        return {
            "modelId": self.id,
            "modelName": self.name,
            "type": self.type,
            "nsfw": self.nsfw,
            "creator": self.creator,
        }


@dataclass(frozen=True)
class CivitaiPage:
    """One answer of ``GET /api/v1/models``: the items (each checked on its own) and the next cursor."""

    items: tuple[Any, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: Any, where: str = "civitai model search") -> CivitaiPage:
        f = Fields(data, where)
        items = f.data.get("items")
        if not isinstance(items, list):
            raise BadAnswer(f"{where}: unexpected API answer (no items list); check CIVITAI_ENDPOINT")
        cursor = f.object("metadata").data.get("nextCursor")
        if cursor is not None and (isinstance(cursor, bool) or not isinstance(cursor, (str, int))):
            raise BadAnswer(f"{where}: metadata.nextCursor should be a string, got {_kind(cursor)}")
        return cls(tuple(items), text(str(cursor)) if cursor not in (None, "") else None)


# ---------------------------------------------------------------- the Hub (huggingface_hub's ModelInfo)


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int | None
    sha256: str | None  # LFS files
    git_sha1: str | None  # the others


@dataclass(frozen=True)
class HubRepo:
    """What we read of a ``ModelInfo`` (``model_info`` or a ``list_models`` entry): checked once here,
    since huggingface_hub passes the JSON's values through without checking their types."""

    id: str
    sha: str | None
    tags: tuple[str, ...]
    files: tuple[HubFile, ...] | None  # None: the answer did not list the files
    card: dict[str, Any]

    @classmethod
    def from_info(cls, info: Any, where: str) -> HubRepo:
        f = Fields(vars(info) if hasattr(info, "__dict__") else info, where)
        repo_id = f.str("id")
        if not repo_id:
            raise BadAnswer(f"{where}: the answer names no repo id")
        sha = f.str("sha")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise BadAnswer(f"{where}: field 'sha' is not a commit hash: {sha[:60]!r}")
        siblings = f.data.get("siblings")
        files = None if siblings is None else tuple(_hub_file(s, where) for s in f.list("siblings"))
        card = f.data.get("card_data")
        card = card.to_dict() if hasattr(card, "to_dict") else Fields(card or {}, f"{where} card").data
        return cls(repo_id, sha, f.strings("tags"), files, card)


def _hub_file(sibling: Any, where: str) -> HubFile:
    f = Fields(vars(sibling) if hasattr(sibling, "__dict__") else sibling, f"{where} file")
    path = f.str("rfilename")
    if not path:
        raise BadAnswer(f"{where}: a file entry has no name")
    lfs = f.data.get("lfs")
    lfs = Fields(vars(lfs) if hasattr(lfs, "__dict__") else (lfs or {}), f"{where} {path} lfs")
    size = lfs.data.get("size") if lfs.data else f.data.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise BadAnswer(f"{where}: {path}: the size should be a byte count, got {_kind(size)}")
    sha256 = lfs.str("sha256")
    if sha256 is not None and not _HEX64.match(sha256):
        raise BadAnswer(f"{where}: {path}: the LFS sha256 is not a SHA-256: {sha256[:80]!r}")
    blob = f.str("blob_id") or f.str("blobId")
    return HubFile(path, size, sha256.lower() if sha256 else None, None if lfs.data else blob)
