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

from lora_wise.lora.fingerprint import from_metadata

from ..errors import TargetError
from ..sources.schema import text
from ..targets import parse_target
from .state import CrawlState, Row

# name -> arrow type: a stable schema, the same for an empty crawl and a huge one.
COLUMNS: dict[str, pa.DataType] = {
    "target": pa.string(),
    "file": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "source": pa.string(),
    "name": pa.string(),
    "base_model": pa.string(),
    "format": pa.string(),
    "backbone": pa.string(),
    "rank": pa.int64(),
    "layers": pa.int64(),
    "dtype": pa.string(),
    "components": pa.string(),
    "declared_images": pa.int64(),
    "declared_steps": pa.int64(),
    "declared_base_model": pa.string(),
    "base_model_conflict": pa.string(),
    "estimate": pa.float64(),
    "low": pa.float64(),
    "high": pa.float64(),
    "vote": pa.int64(),
    "applicability": pa.float64(),
    "bank": pa.string(),
    "bank_accuracy": pa.float64(),
    "no_estimate_reason": pa.string(),
    "size_bytes": pa.int64(),
    "sha256": pa.string(),
    "verified": pa.bool_(),
    "link": pa.string(),
    "url": pa.string(),
    "warnings": pa.string(),
    "attempts": pa.int64(),
    "downloaded_bytes": pa.int64(),
    "crawl_state": pa.string(),
    "updated": pa.string(),
}


def report_rows(states: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """One row per ScanReport (or per unscanned target) of every state, in discovery order."""
    for path in states:
        with CrawlState(path, create=False) as state:
            for row in state.rows():
                yield from flatten(row, Path(path).name)


def flatten(row: Row, state_name: str) -> list[dict[str, Any]]:
    listing = _obj(row.listing)
    base = {
        "target": row.target,
        "source": row.source,
        "status": row.status,
        "error": row.error,
        "name": listing.get("modelName") or listing.get("repo_id"),
        "base_model": _text(listing.get("baseModel") or listing.get("base_model")),
        "link": link_of(row.target, listing),
        "attempts": row.attempts,
        "downloaded_bytes": row.bytes,
        "crawl_state": state_name,
        "updated": datetime.fromtimestamp(row.updated, timezone.utc).isoformat(timespec="seconds"),
    }
    header = _obj((row.header or [None])[0])
    if not row.result:
        declared = _obj(header.get("declared"))
        return [
            _complete(
                {
                    **base,
                    "file": header.get("file"),
                    "size_bytes": header.get("size"),
                    "declared_images": declared.get("unique_images"),
                }
            )
        ]
    return [_complete({**base, **scan_columns(report, base)}) for report in row.result]


def scan_columns(report: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The columns of one ``ScanReport.to_dict()`` (from a state file: any value may be of any type)."""
    report = _obj(report)
    source = _obj(report.get("source"))
    info, declared, est, bank = (
        _obj(x)
        for x in (source.get("info"), report.get("declared"), report.get("estimate"), report.get("bank"))
    )
    stated = (
        base["base_model"]
        or _text(info.get("baseModel") or info.get("base_model"))
        or _text(declared.get("base_model_version"))
    )
    base_model, conflict = base_model_verdict(stated, _text(report.get("backbone")))
    return {
        "file": source.get("file"),
        "status": report.get("status"),
        "error": report.get("error"),
        "base_model": base_model,
        "base_model_conflict": conflict,
        "format": report.get("format"),
        "backbone": report.get("backbone"),
        "rank": report.get("rank"),
        "layers": report.get("layers"),
        "dtype": report.get("dtype"),
        "components": ", ".join(f"{k}: {v}" for k, v in (report.get("components") or {}).items()) or None,
        "declared_images": declared.get("unique_images"),
        "declared_steps": declared.get("steps"),
        "declared_base_model": _text(declared.get("base_model_version") or declared.get("base_model")),
        "estimate": est.get("estimate"),
        "low": est.get("low"),
        "high": est.get("high"),
        "vote": est.get("size"),
        "applicability": est.get("applicability"),
        "bank": bank.get("name"),
        "bank_accuracy": _obj(bank.get("self_check")).get("dsire_accuracy"),
        "no_estimate_reason": report.get("estimate_absent_reason"),
        "size_bytes": source.get("size"),
        "sha256": source.get("sha256"),
        "verified": source.get("verified"),
        "url": source.get("url"),
        "warnings": "; ".join(str(w) for w in _list(report.get("warnings"))) or None,
    }


# CivitAI's names of SDXL-architecture families that name no "xl" (REFERENCE §6 lists baseModel values).
_SDXL_FAMILIES = ("pony", "illustrious", "noobai", "animagine")


def family_of(name: str | None) -> str | None:
    """The backbone a declared base model names (``SD 1.5`` -> sd15, ``stabilityai/sdxl-...`` -> sdxl),
    by the reader's own table of prefixes; None when the name says nothing we know."""
    if not name:
        return None
    short = name.lower().split(",")[0].strip().rsplit("/", 1)[-1].replace(" ", "").replace(".", "")
    if short.startswith(_SDXL_FAMILIES):
        return "sdxl"
    return from_metadata({"ss_base_model_version": short})[0]


def base_model_verdict(stated: str | None, backbone: str | None) -> tuple[str | None, str | None]:
    """The report's base model and a conflict note: the declared name when the weights agree (or say
    nothing), the weights' backbone when they contradict it, with the conflict spelled out."""
    weights = backbone if backbone not in (None, "", "unknown") else None
    if stated is None:
        return weights, None
    family = family_of(stated)
    if weights is None or family is None or family == weights:
        return stated, None
    return weights, f"declared {stated}, but the weights are {weights}"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _complete(row: dict[str, Any]) -> dict[str, Any]:
    """Every column present, values of the column's type (hostile JSON can hold anything)."""
    return {name: _coerce(row.get(name), kind) for name, kind in COLUMNS.items()}


def _coerce(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    try:
        if pa.types.is_integer(kind):
            number = int(value)
            return number if -(2**63) <= number < 2**63 else None
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_boolean(kind):
            return bool(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return _text(value)


def _text(value: Any) -> str | None:
    """Text for a string column; a lone surrogate (valid JSON, invalid UTF-8) becomes U+FFFD."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):  # a card's base_model may be a list
        return text(", ".join(str(v) for v in value))
    return text(str(value))


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
        self.by_status, self.by_format, self.by_base_model, self.by_backbone = (
            Counter(),
            Counter(),
            Counter(),
            Counter(),
        )
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
        if r["estimate"] is not None and math.isfinite(r["estimate"]):
            self.estimates[r["base_model"] or "unknown"].append(r["estimate"])
        if r["declared_images"] is not None:
            self.declared += 1
            if r["estimate"] is not None and math.isfinite(r["estimate"]):
                for column, value in zip(
                    self._pairs, (r["declared_images"], r["estimate"], r["low"], r["high"]), strict=True
                ):
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
