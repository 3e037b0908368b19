"""``lora-scan report STATE.db --out DIR``: reports.parquet, reports.csv, summary.json, report.html.

Each file is written to a temporary name and renamed, so a report folder never holds a half-written
file (a crawl may be writing its report while someone opens the last one).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .html import render_html
from .table import COLUMNS, report_rows, summarize

FILES = ("reports.parquet", "reports.csv", "summary.json", "report.html")
DEFAULT_HTML_ROWS = 20_000  # a browser stays responsive; parquet and CSV always hold every row


def default_out(state: str | Path) -> Path:
    """Where a crawl's report goes unless ``--out`` says: ``<state stem>-report/`` beside the state."""
    state = Path(state)
    return state.with_name(f"{state.stem}-report")


def write_report(
    states: Sequence[str | Path], out: str | Path, *, html_rows: int = DEFAULT_HTML_ROWS
) -> dict[str, Any]:
    """Write the four report files for the given crawl states; returns the summary."""
    rows = list(report_rows(states))
    summary = summarize(rows, [str(s) for s in states])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _atomic(out / "reports.parquet", lambda p: pq.write_table(_arrow(rows), p))
    _atomic(out / "reports.csv", lambda p: _write_csv(rows, p))
    _atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    _atomic(out / "report.html", lambda p: p.write_text(render_html(rows, summary, max_rows=html_rows), encoding="utf-8"))
    summary["files"] = {name: str(out / name) for name in FILES}
    return summary


def _arrow(rows: list[dict[str, Any]]) -> pa.Table:
    schema = pa.schema(list(COLUMNS.items()))
    return pa.Table.from_pylist(rows, schema=schema)


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({k: _csv_safe(v) for k, v in row.items()} for row in rows)


def _csv_safe(value: Any) -> Any:
    """Spreadsheets run a cell starting with = + - @ as a formula: quote hostile names out of it."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _atomic(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
