"""Local files and folders: the same candidate rule as a Hub repo, nothing downloaded, nothing deleted."""

from __future__ import annotations

from pathlib import Path

from lora_wise._files import sha256_file

from ..errors import NotFound
from ..targets import Target
from .base import FetchedFile, RepoEntry, companions_of, pick_candidates

MAX_FOLDER_FILES = 10_000  # a LoRA folder, not a disk: refuse to walk more


def fetch(target: Target, *, file: str | None, max_size: int) -> list[FetchedFile]:
    """The LoRA candidates of a local file or folder (a PEFT adapter folder gives its adapter_model)."""
    assert target.path is not None
    path = target.path
    if not path.exists():
        raise NotFound(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
        raise NotFound(f"{path}: not a regular file or folder")
    if path.is_file():
        root, entries, file = path.parent, [RepoEntry(path.name, path.stat().st_size)], path.name
    else:
        root, entries = path, _listing(path)
    chosen, notes = pick_candidates(entries, max_size=max_size, file=file, where=str(path))
    return [
        FetchedFile(
            path=root / entry.path,
            source="local",
            source_id=str((root / entry.path).resolve()),
            name=entry.path,
            size=entry.size or 0,
            sha256=sha256_file(root / entry.path),
            info={},
            companions={Path(c.path).name: root / c.path for c in companions_of(entry, entries)},
            notes=list(notes),
        )
        for entry in chosen
    ]


def _listing(folder: Path) -> list[RepoEntry]:
    entries = []
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            entries.append(RepoEntry(p.relative_to(folder).as_posix(), p.stat().st_size))
            if len(entries) > MAX_FOLDER_FILES:
                raise NotFound(
                    f"{folder}: over {MAX_FOLDER_FILES} files; point at the LoRA file or its folder"
                )
    return entries
