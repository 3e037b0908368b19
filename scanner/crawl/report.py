"""``lora-scan report STATE.db --out DIR``: reports.parquet, reports.csv, summary.json, report.html.

Each file is written to a temporary name and renamed, so a report folder never holds a half-written
file (a crawl may be writing its report while someone opens the last one).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lora_wise._files import atomic_write

from .html import render_html
from .table import COLUMNS, ReportStats, report_rows

FILES = ("reports.parquet", "reports.csv", "summary.json", "report.html")
DEFAULT_HTML_ROWS = 20_000  # a browser stays responsive; parquet and CSV always hold every row
BATCH_ROWS = 5_000  # rows per parquet row group, and per step of the streaming passes


def default_out(state: str | Path) -> Path:
    """Where a crawl's report goes unless ``--out`` says: ``<state stem>-report/`` beside the state."""
    state = Path(state)
    return state.with_name(f"{state.stem}-report")


def write_report(
    states: Sequence[str | Path], out: str | Path, *, html_rows: int = DEFAULT_HTML_ROWS
) -> dict[str, Any]:
    """Write the four report files for the given crawl states; returns the summary.

    The rows stream from the states into the parquet file in batches (then from it into the CSV),
    so memory holds one batch, the first ``html_rows`` rows and the summary, however big the crawl.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats = ReportStats([str(s) for s in states])
    shown: list[dict[str, Any]] = []

    def rows() -> Iterator[dict[str, Any]]:
        for row in report_rows(states):
            stats.add(row)
            if len(shown) < html_rows:
                shown.append(row)
            yield row

    _atomic(out / "reports.parquet", lambda p: _write_parquet(rows(), p))
    _atomic(out / "reports.csv", lambda p: _write_csv(out / "reports.parquet", p))
    summary = stats.summary()
    hidden = stats.reports - len(shown)
    _atomic(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"))
    html = render_html(shown, summary, stats, hidden=hidden)
    _atomic(out / "report.html", lambda p: p.write_text(html, encoding="utf-8"))
    summary["files"] = {name: str(out / name) for name in FILES}
    return summary


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path) -> None:
    schema = pa.schema(list(COLUMNS.items()))
    with pq.ParquetWriter(path, schema) as writer:  # no batch at all still writes the schema
        while batch := list(islice(rows, BATCH_ROWS)):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))


def _write_csv(parquet: Path, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for batch in pq.ParquetFile(parquet).iter_batches(batch_size=BATCH_ROWS):
            writer.writerows({k: _csv_safe(v) for k, v in row.items()} for row in batch.to_pylist())


def _csv_safe(value: Any) -> Any:
    """Spreadsheets run a cell starting with = + - @ as a formula: quote hostile names out of it."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


_atomic = atomic_write
