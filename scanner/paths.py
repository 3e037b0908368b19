"""The one rule for names that come from outside: they stay inside the folder they are meant for.

A revision, a repo file name, a Content-Disposition, a CivitAI file name or a crawl target becomes a
path only through :func:`inside`, which refuses NUL bytes, over-long names, absolute paths and ``..``,
and then checks that the resolved path is still under the folder (so a symlink on the way cannot
lead out either). :func:`owned` answers the same question for a path we are about to delete.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UnsafePath

NAME_MAX = 255  # bytes per path component on every common file system


def check_name(name: str, what: str = "name") -> str:
    """``name`` itself, or :class:`UnsafePath` when no file system would take it as one component."""
    if "\x00" in name:
        raise UnsafePath(f"{what} {name!r} holds a NUL byte: refused")
    if len(os.fsencode(name)) > NAME_MAX:
        raise UnsafePath(f"{what} {name[:40]!r}... is over {NAME_MAX} bytes: refused")
    return name


def inside(folder: str | Path, name: str, what: str = "name") -> Path:
    """``folder / name`` for a relative, '/'-separated ``name`` that cannot leave ``folder``.

    Raises :class:`UnsafePath` for NUL bytes, components over 255 bytes, empty, absolute or ``..``
    paths, backslashes, and for any path that resolves outside ``folder`` (through symlinks too).
    """
    base = Path(folder)
    path = base.joinpath(*relative_parts(name, what))
    if not owned(base, path):
        raise UnsafePath(f"{what} {name!r} resolves outside {base}: refused")
    return path


def relative_parts(name: str, what: str = "name") -> tuple[str, ...]:
    """The components of a relative '/'-separated name, or :class:`UnsafePath` (see :func:`inside`)."""
    if not isinstance(name, str) or not name:
        raise UnsafePath(f"{what} {name!r}: empty or not text: refused")
    if name.startswith("/") or "\\" in name:
        raise UnsafePath(f"{what} {name!r}: an absolute or Windows path: refused")
    parts = tuple(name.split("/"))
    for part in parts:
        check_name(part, what)
        if part in ("", ".", ".."):
            raise UnsafePath(
                f"{what} {name!r} is not a plain relative path (empty, '.' or '..' part): refused"
            )
    return parts


def owned(folder: str | Path, path: str | Path) -> bool:
    """Whether ``path``, with every symlink resolved, lies under ``folder`` (also resolved)."""
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)
