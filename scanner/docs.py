"""``lora-scan docs``: the documents installed with the package, for a user who has only that.

``scanner/docs`` is a link to the project's ``docs/`` folder, so the files a wheel installs are
the files of the source tree (one copy of each document).
"""

from __future__ import annotations

from pathlib import Path

from .errors import DocNotFound

DOCS = Path(__file__).parent / "docs"
_SUFFIXES = (".md", ".json")


def names() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*") if p.suffix in _SUFFIXES) if DOCS.is_dir() else []


def listing() -> str:
    available = names()
    if not available:
        return "no documents are installed with this copy of lora-wise"
    lines = [f"  {Path(n).stem if n.endswith('.md') else n}" for n in available]
    return "\n".join(["Documents installed with lora-wise (lora-scan docs NAME):", *lines])


def document(name: str) -> str:
    """The text of one document, by file name or by the name without ``.md``."""
    available = names()
    for candidate in (name, f"{name}.md"):
        if candidate in available:
            return (DOCS / candidate).read_text(encoding="utf-8")
    raise DocNotFound(f"no document {name!r}; there are: {', '.join(available) or 'none'}")
