"""File primitives every writer shares: atomic replace, exclusive locks, content hashes.

One owner for each, because the crash-safety and hashing rules must not differ between the
factory, the dataset builder, the bank writer, the crawl and the downloader.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Suffix of every temp file we write; hidden (leading dot) so listings and uploads skip it.
TMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20


def temp_path(path: Path) -> Path:
    """The hidden temp name next to ``path`` (per process, so concurrent writers never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(TMP_SUFFIX)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` then rename over ``path``: a kill mid-write leaves the old file intact."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextmanager
def exclusive_lock(lock_path: str | Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold an OS lock (flock) on ``lock_path``; raise ``busy()`` if another process holds it.

    The kernel drops the lock when its process dies, so a run killed with ``kill -9`` never
    blocks its rerun. Not POSIX: run unguarded.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        yield


def _digest(path: Path, digest: Any, prefix: bytes = b"") -> str:
    digest.update(prefix)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return _digest(Path(path), hashlib.sha256())


def git_blob_sha1(path: str | Path) -> str:
    """git's object id of a regular (non-LFS) file: sha1(b"blob <size>\\0" + content)."""
    path = Path(path)
    return _digest(path, hashlib.sha1(), f"blob {path.stat().st_size}\0".encode())
