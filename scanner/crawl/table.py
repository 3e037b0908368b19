"""The report's rows: every ScanReport in one or more crawl states, flattened to one row each, and
the summary (totals by status, format and base model; estimated vs declared sizes, with the MAE).

A target that was never scanned (left out by a filter, unsafe from the listing, failed) still gets
one row, with its status and reason, so that the report accounts for every target.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa

from ..errors import TargetError
from ..targets import parse_target
from .state import CrawlState, Row

# name -> arrow type: a stable schema, the same for an empty crawl and a huge one.
COLUMNS: dict[str, pa.DataType] = {
    "target": pa.string(), "file": pa.string(), "status": pa.string(), "error": pa.string(),
    "source": pa.string(), "name": pa.string(), "base_model": pa.string(), "format": pa.string(),
    "backbone": pa.string(), "rank": pa.int64(), "layers": pa.int64(), "dtype": pa.string(),
    "components": pa.string(), "declared_images": pa.int64(), "declared_steps": pa.int64(),
    "declared_base_model": pa.string(), "estimate": pa.float64(), "low": pa.float64(), "high": pa.float64(),
    "vote": pa.int64(), "applicability": pa.float64(), "bank": pa.string(), "bank_accuracy": pa.float64(),
    "no_estimate_reason": pa.string(),
    "size_bytes": pa.int64(), "sha256": pa.string(), "verified": pa.bool_(), "link": pa.string(),
    "url": pa.string(), "warnings": pa.string(), "attempts": pa.int64(), "downloaded_bytes": pa.int64(),
    "crawl_state": pa.string(), "updated": pa.string(),
}  # fmt: skip


def report_rows(states: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """One row per ScanReport (or per unscanned target) of every state, in discovery order."""
    for path in states:
        with CrawlState(path, create=False) as state:
            for row in state.rows():
                yield from flatten(row, Path(path).name)


def flatten(row: Row, state_name: str) -> list[dict[str, Any]]:
    listing = row.listing or {}
    base = {
        "target": row.target, "source": row.source, "status": row.status, "error": row.error,
        "name": listing.get("modelName") or listing.get("repo_id"),
        "base_model": _text(listing.get("baseModel") or listing.get("base_model")),
        "link": link_of(row.target, listing), "attempts": row.attempts, "downloaded_bytes": row.bytes,
        "crawl_state": state_name, "updated": datetime.fromtimestamp(row.updated, timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    header = (row.header or [None])[0] or {}
    if not row.result:
        declared = header.get("declared") or {}
        return [_complete({**base, "file": header.get("file"), "size_bytes": header.get("size"),
                           "declared_images": declared.get("unique_images")})]  # fmt: skip
    return [_complete({**base, **scan_columns(report, base)}) for report in row.result]


def scan_columns(report: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The columns of one ``ScanReport.to_dict()``."""
    source, info = report.get("source") or {}, (report.get("source") or {}).get("info") or {}
    declared, est, bank = report.get("declared") or {}, report.get("estimate") or {}, report.get("bank") or {}
    return {
        "file": source.get("file"), "status": report.get("status"), "error": report.get("error"),
        "base_model": base["base_model"] or _text(info.get("baseModel") or info.get("base_model"))
        or _text(declared.get("base_model_version")) or report.get("backbone"),
        "format": report.get("format"), "backbone": report.get("backbone"), "rank": report.get("rank"),
        "layers": report.get("layers"), "dtype": report.get("dtype"),
        "components": ", ".join(f"{k}: {v}" for k, v in (report.get("components") or {}).items()) or None,
        "declared_images": declared.get("unique_images"), "declared_steps": declared.get("steps"),
        "declared_base_model": _text(declared.get("base_model_version") or declared.get("base_model")),
        "estimate": est.get("estimate"), "low": est.get("low"), "high": est.get("high"), "vote": est.get("size"),
        "applicability": est.get("applicability"), "bank": bank.get("name"),
        "bank_accuracy": (bank.get("self_check") or {}).get("dsire_accuracy"),
        "no_estimate_reason": report.get("estimate_absent_reason"), "size_bytes": source.get("size"),
        "sha256": source.get("sha256"), "verified": source.get("verified"), "url": source.get("url"),
        "warnings": "; ".join(report.get("warnings") or []) or None,
    }  # fmt: skip


def _complete(row: dict[str, Any]) -> dict[str, Any]:
    """Every column present, values of the column's type (hostile JSON can hold anything)."""
    return {name: _coerce(row.get(name), kind) for name, kind in COLUMNS.items()}


def _coerce(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    try:
        if pa.types.is_integer(kind):
            return int(value)
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_boolean(kind):
            return bool(value)
    except (TypeError, ValueError):
        return None
    return _text(value)


def _text(value: Any) -> str | None:
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):  # a card's base_model may be a list
        return ", ".join(str(v) for v in value)
    return str(value)


def link_of(target: str, listing: dict[str, Any]) -> str | None:
    """The web page of a target's source: the Hub repo or file, the CivitAI model version, the URL."""
    try:
        parsed = parse_target(target)
    except TargetError:
        return None
    if parsed.kind == "hub":
        page = f"https://huggingface.co/{quote(parsed.repo_id or '')}"
        if parsed.filename:
            page += f"/blob/{quote(parsed.revision or 'main', safe='')}/{quote(parsed.filename)}"
        return page
    if parsed.kind == "civitai":
        model, version = parsed.model_id or listing.get("modelId"), parsed.version_id
        if model is None:
            return f"https://civitai.com/api/download/models/{version}"
        return f"https://civitai.com/models/{model}" + (f"?modelVersionId={version}" if version else "")
    return parsed.url if parsed.kind == "url" else None


class ReportStats:
    """The summary, plot points and estimated-vs-declared pairs, gathered one row at a time.

    A report streams its rows (a full crawl has half a million): only these totals and a few
    float64 numbers per estimated row (in compact arrays) stay in memory, never the rows themselves.
    """

    def __init__(self, states: list[str]) -> None:
        self.states = states
        self.reports = 0
        self.bytes_by_target: dict[str, int] = {}  # a target with two files has two rows, one download
        self.by_status, self.by_format, self.by_base_model, self.by_backbone = Counter(), Counter(), Counter(), Counter()
        self.estimates: dict[str, array] = defaultdict(lambda: array("d"))  # base model -> estimates
        self._pairs = tuple(array("d") for _ in range(4))  # declared, estimate, low, high (NaN: none)
        self.declared = 0

    def add(self, r: dict[str, Any]) -> None:
        self.reports += 1
        self.bytes_by_target[r["target"]] = r["downloaded_bytes"] or 0
        self.by_status[_key(r["status"])] += 1
        self.by_base_model[_key(r["base_model"])] += 1
        if r["status"] == "ok":
            self.by_format[_key(r["format"])] += 1
            self.by_backbone[_key(r["backbone"])] += 1
        if r["estimate"] is not None:
            self.estimates[r["base_model"] or "unknown"].append(r["estimate"])
        if r["declared_images"] is not None:
            self.declared += 1
            if r["estimate"] is not None:
                for column, value in zip(self._pairs, (r["declared_images"], r["estimate"], r["low"], r["high"]), strict=True):
                    column.append(math.nan if value is None else value)

    @property
    def pairs(self) -> np.ndarray:
        """(n, 4) float64: declared images, estimate, low, high (NaN where the interval is missing)."""
        return np.stack([np.frombuffer(column, dtype=np.float64) for column in self._pairs], axis=1)

    def summary(self) -> dict[str, Any]:
        """Totals and the estimated-vs-declared comparison, for summary.json and the HTML page."""
        return {
            "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "states": self.states,
            "targets": len(self.bytes_by_target),
            "reports": self.reports,
            "downloaded_bytes": sum(self.bytes_by_target.values()),
            "by_status": dict(self.by_status.most_common()),
            "by_format": dict(self.by_format.most_common()),
            "by_base_model": dict(self.by_base_model.most_common()),
            "by_backbone": dict(self.by_backbone.most_common()),
            "estimates": sum(len(values) for values in self.estimates.values()),
            "declared": self.declared,
            "estimate_vs_declared": compare_declared(self.pairs),
        }


def _key(value: Any) -> str:
    return str(value) if value is not None else "unknown"


def compare_declared(pairs: np.ndarray) -> dict[str, Any]:
    """MAE (images) of the estimate against the declared unique images, on the LoRAs that have both."""
    if len(pairs) == 0:
        return {"n": 0, "mae": None, "median_abs_error": None, "within_interval": None}
    declared, estimate, low, high = pairs.T
    errors = np.abs(estimate - declared)
    inside = (low <= declared) & (declared <= high)  # False where the interval is missing (NaN)
    return {
        "n": len(pairs),
        "mae": float(errors.mean()),
        "median_abs_error": float(np.median(errors)),
        "within_interval": float(inside.mean()),
    }
