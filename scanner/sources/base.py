"""What every source returns (:class:`FetchedFile`) and the rule for which repo files are LoRA candidates."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..download import format_size, is_pickle_name
from ..errors import NoLoraFiles, NotFound, TooLarge, UnsafeFormat, UnsafePath
from ..paths import relative_parts


@dataclass
class FetchedFile:
    """One local file ready for ``read_lora``, with where it came from and what the source says.

    ``info`` holds the source's own claims for the report (CivitAI ``baseModel``, ``trainedWords``,
    model name, ``metadata.format/fp``; Hub card ``base_model``, tags). ``temporary`` files are deleted
    by :meth:`cleanup` (the ``fetched`` context manager calls it); Hub cache and local files never are.
    """

    path: Path
    source: str  # "hub" | "civitai" | "url" | "local"
    source_id: str  # e.g. "user/repo@<commit>:file.safetensors", "civitai:123@456", the URL, the local path
    name: str  # the file name the source declares
    size: int
    url: str | None = None
    sha256: str | None = None  # of the bytes scanned (lower-case hex), whatever the source
    verified: bool = False  # True when the bytes were checked against a hash the source publishes
    temporary: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    companions: dict[str, Path] = field(default_factory=dict)  # e.g. PEFT's adapter_config.json
    notes: list[str] = field(default_factory=list)  # e.g. files skipped in the same repo, and why

    def cleanup(self) -> None:
        """Delete a temporary download (and its companions); a no-op for cached or local files."""
        if not self.temporary:
            return
        for path in (self.path, *self.companions.values()):
            path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()  # the per-fetch temp folder, once empty
        except OSError:
            pass

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for ``--json`` reports."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["companions"] = {k: str(v) for k, v in self.companions.items()}
        return data


@dataclass(frozen=True)
class RepoEntry:
    """A file in a repo or folder listing: path relative to its root, size, published hashes."""

    path: str
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None


MAX_CANDIDATES = 16  # a repo of every epoch's checkpoint should not turn one scan into 50 downloads
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
# Full models that sit in LoRA repos (diffusers pipelines, transformers): never LoRA weights.
_FULL_CHECKPOINT = re.compile(
    r"^(diffusion_pytorch_model|model|pytorch_model|flax_model|tf_model)"
    r"(\.(fp16|bf16|fp32|non_ema|ema))?(-\d{5}-of-\d{5})?\.safetensors$"
)


def is_full_checkpoint(path: str) -> bool:
    return bool(_FULL_CHECKPOINT.match(PurePosixPath(path).name))


def companions_of(entry: RepoEntry, entries: list[RepoEntry]) -> list[RepoEntry]:
    """PEFT adapter folders: the weights need their adapter_config.json beside them."""
    if PurePosixPath(entry.path).name != PEFT_WEIGHTS:
        return []
    config = str(PurePosixPath(entry.path).with_name(PEFT_CONFIG))
    return [e for e in entries if e.path == config]


def pick_candidates(
    entries: list[RepoEntry], *, max_size: int, file: str | None = None, where: str
) -> tuple[list[RepoEntry], list[str]]:
    """The LoRA weight files of a listing, plus notes on what was skipped and why.

    With ``file``, exactly that file (or that PEFT folder's weights). Without, every safetensors
    file that is not a full checkpoint and fits under ``max_size`` (the first ``MAX_CANDIDATES`` in
    path order). Raises a typed error when nothing
    is left: too large, only pickle files, or no candidate at all.
    """
    entries, notes = _plain_names(entries)
    if file is not None:
        return [_pick_named(entries, file, max_size=max_size, where=where)], notes
    chosen: list[RepoEntry] = []
    oversize: list[RepoEntry] = []
    pickles: list[str] = []
    for entry in sorted(entries, key=lambda e: e.path):
        if is_pickle_name(entry.path):
            pickles.append(entry.path)
        elif not entry.path.endswith(".safetensors"):
            continue
        elif is_full_checkpoint(entry.path):
            notes.append(f"skipped {entry.path}: a full model checkpoint, not LoRA weights")
        elif entry.size is not None and entry.size > max_size:
            oversize.append(entry)
            notes.append(
                f"skipped {entry.path}: {format_size(entry.size)} is over the {format_size(max_size)} cap"
            )
        else:
            chosen.append(entry)
    notes += [f"skipped {p}: unsafe format, not scanned (pickle)" for p in pickles]
    if len(chosen) > MAX_CANDIDATES:
        rest = chosen[MAX_CANDIDATES:]
        notes.append(f"{len(rest)} more candidates not scanned ({rest[0].path}, ...): name one with --file")
        chosen = chosen[:MAX_CANDIDATES]
    if chosen:
        return chosen, notes
    if oversize:
        names = ", ".join(f"{e.path} ({format_size(e.size or 0)})" for e in oversize)
        raise TooLarge(
            f"{where}: every candidate is over the {format_size(max_size)} cap: {names}; "
            "pass a larger --max-size"
        )
    if pickles:
        raise UnsafeFormat(f"{where}: only pickle files ({', '.join(pickles)}): unsafe format, not scanned")
    raise NoLoraFiles(f"{where}: no LoRA weights found (no .safetensors file besides full checkpoints)")


def _plain_names(entries: list[RepoEntry]) -> tuple[list[RepoEntry], list[str]]:
    """Entries whose path could become a file under a cache or download folder; notes on the others."""
    kept, notes = [], []
    for entry in entries:
        try:
            relative_parts(entry.path, "repo file")
        except UnsafePath as exc:
            notes.append(f"skipped {entry.path[:80]!r}: {exc}")
            continue
        kept.append(entry)
    return kept, notes


def _pick_named(entries: list[RepoEntry], file: str, *, max_size: int, where: str) -> RepoEntry:
    wanted = file.strip("/")
    by_path = {e.path: e for e in entries}
    entry = by_path.get(wanted) or by_path.get(f"{wanted}/{PEFT_WEIGHTS}")
    if entry is None:
        same_name = [e for e in entries if PurePosixPath(e.path).name == wanted]
        entry = same_name[0] if len(same_name) == 1 else None
    if entry is None:
        available = ", ".join(e.path for e in entries if e.path.endswith(".safetensors")) or "none"
        raise NotFound(f"{where}: no file {file!r}; safetensors files there: {available}")
    if is_pickle_name(entry.path):
        raise UnsafeFormat(f"{where}: {entry.path} is a pickle file: unsafe format, not scanned")
    if entry.size is not None and entry.size > max_size:
        raise TooLarge(
            f"{where}: {entry.path} is {format_size(entry.size)}, over the {format_size(max_size)} cap; "
            "pass a larger --max-size"
        )
    return entry
