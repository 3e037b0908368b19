"""The one JSON shape ``lora-scan --json`` prints, whatever it was asked and however it ended.

One file, a folder, a Hub repo, a CivitAI model or an error: always one object,
``{"lora_scan", "created", "command", "target", "exit_code", "reports", "errors"}``, described
by ``docs/scan.schema.json`` (see ``docs/scan-json.md``). A report is one file that could be
read (a ``ScanReport`` for ``scan``, the inspect summary for ``inspect``); an error is what
stopped the command before any report (a bad target, a missing path, a bank that cannot load).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import lora_wise

COMMANDS = ("scan", "inspect")


def envelope(
    command: str,
    target: str | None,
    reports: list[dict[str, Any]],
    errors: list[dict[str, Any]],
    exit_code: int,
) -> dict[str, Any]:
    return {
        "lora_scan": lora_wise.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "target": target,
        "exit_code": exit_code,
        "reports": reports,
        "errors": errors,
    }


def error_entry(message: str, exit_code: int, target: str | None = None) -> dict[str, Any]:
    return {"target": target, "exit_code": exit_code, "error": message}


def failure(command: str, target: str | None, message: str, exit_code: int) -> dict[str, Any]:
    """The envelope of a command that ended in an error before any report."""
    return envelope(command, target, [], [error_entry(message, exit_code, target)], exit_code)
