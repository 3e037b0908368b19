"""``lora-scan docs`` and ``lora-wise docs``: the documents installed with the package, for a user
who has only that.

``lora_wise/docs`` is a link to the project's ``docs/`` folder, so the files a wheel installs are
the files of the source tree (one copy of each document).
"""

from __future__ import annotations

from pathlib import Path

import click

from lora_wise.cli.tools import CONTEXT_SETTINGS, EXIT_CODES_HELP
from lora_wise.errors import DocNotFound

DOCS = Path(__file__).resolve().parents[1] / "docs"
_SUFFIXES = (".md", ".json")


def names() -> list[str]:
    return sorted(p.name for p in DOCS.glob("*") if p.suffix in _SUFFIXES) if DOCS.is_dir() else []


def listing() -> str:
    available = names()
    if not available:
        return "no documents are installed with this copy of lora-wise"
    lines = [f"  {n.removesuffix('.md')}" for n in available]
    return "\n".join(["Documents installed with lora-wise (docs NAME prints one):", *lines])


def document(name: str) -> str:
    """The text of one document, by file name or by the name without ``.md``."""
    available = names()
    for candidate in (name, f"{name}.md"):
        if candidate in available:
            return (DOCS / candidate).read_text(encoding="utf-8")
    raise DocNotFound(f"no document {name!r}; there are: {', '.join(available) or 'none'}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.argument("name", required=False)
def docs(name: str | None) -> None:
    """Print a document installed with the package; without NAME, list them.

    \b
    Examples:
      docs                   the list
      docs scan-json         the lora-scan --json envelope, field by field
      docs scan.schema.json  the JSON Schema of that envelope
      docs crawl             crawls: options, state, resume, costs
    """
    click.echo(document(name) if name else listing())
