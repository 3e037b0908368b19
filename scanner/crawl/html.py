"""The self-contained HTML report: totals, two plots as embedded PNGs, a sortable table of every row.

Self-contained: no CDN, no external request; the plots are base64 PNGs drawn with matplotlib's Agg
canvas (no pyplot, no display). Everything from a crawl is untrusted (model names, file names,
errors quoting server answers): jinja2 autoescapes it, links are kept only when http(s), and a
Content-Security-Policy allows only our own script (by its hash), inline styles and data: images.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, FileSystemLoader, select_autoescape
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from ..download import format_size
from .table import ReportStats

TEMPLATES = Path(__file__).parent / "templates"
MAX_GROUPS = 12  # base models shown in the distribution plot (the rest are "other")
MAX_POINTS = 20_000  # points drawn per plot
# (column, % of the table's width): they add up to 100, so the table fits any screen from 1366 px.
TABLE_COLUMNS = (
    ("target", 12),
    ("file", 8),
    ("status", 6),
    ("base_model", 8),
    ("format", 5),
    ("backbone", 5),
    ("rank", 3),
    ("declared_images", 5),
    ("estimate", 5),
    ("interval", 6),
    ("applicability", 5),
    ("bank_accuracy", 5),
    ("size", 5),
    ("sha256", 7),
    ("warnings", 8),
    ("reason", 7),
)


def render_html(
    rows: list[dict[str, Any]], summary: dict[str, Any], stats: ReportStats, *, hidden: int = 0
) -> str:
    """The page: ``rows`` are the rows shown (``hidden`` more are only in parquet/CSV); the plots
    and totals come from ``stats`` and ``summary``, which cover every row."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True))
    env.filters["size"] = lambda n: format_size(n) if n is not None else ""
    script = (TEMPLATES / "report.js").read_text()
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    return env.get_template("report.html.j2").render(
        summary=summary,
        rows=[table_row(r) for r in rows],
        hidden=hidden,
        columns=TABLE_COLUMNS,
        sizes_png=sizes_plot(stats.estimates),
        scatter_png=scatter_plot(stats.pairs, summary),
        script=script,
        script_hash=f"sha256-{digest}",
    )


def table_row(r: dict[str, Any]) -> dict[str, Any]:
    """What one table row shows; ``sort`` values make numeric columns sort as numbers."""
    link = r["link"] if (r["link"] or "").startswith(("https://", "http://")) else None
    interval = f"{r['low']:.0f}–{r['high']:.0f}" if r["low"] is not None and r["high"] is not None else ""
    return {
        **r,
        "link": link,
        "interval": interval,
        "reason": (r["error"] or r["no_estimate_reason"] or "")[:300],
        "estimate_text": f"{r['estimate']:.0f}" if r["estimate"] is not None else "",
        "applicability_text": f"{r['applicability']:.2f}" if r["applicability"] is not None else "",
        "bank_accuracy_text": f"{r['bank_accuracy']:.0f}%" if r["bank_accuracy"] is not None else "",
    }


def _log_axis(ax: Any, which: str) -> None:
    """A log scale labelled in plain image counts (1, 10, 100, 1,000), not in powers of ten, with
    unlabelled minor ticks at 2-9 x each power so that a reader can still place a point."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(base=10))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    axis.grid(True, which="major", alpha=0.3)


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def shown(values: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` evenly spaced rows of ``values``: a plot of 500,000 points costs gigabytes
    in matplotlib and shows no more than one of 20,000 (the statistics still use every row)."""
    if len(values) <= limit:
        return values
    return values[np.linspace(0, len(values) - 1, limit).astype(np.int64)]


def sizes_plot(estimates: dict[str, Sequence[float]]) -> str | None:
    """The distribution of estimated dataset sizes per base model (log scale), or None without estimates."""
    if not estimates:
        return None
    ordered = sorted(
        ((name, np.maximum(np.asarray(values, dtype=np.float64), 1.0)) for name, values in estimates.items()),
        key=lambda kv: -len(kv[1]),
    )
    if len(ordered) > MAX_GROUPS:
        rest = np.concatenate([values for _, values in ordered[MAX_GROUPS - 1 :]])
        ordered = [*ordered[: MAX_GROUPS - 1], ("other", rest)]
    fig = Figure(figsize=(max(6.0, 0.8 * len(ordered) + 2), 4.5))
    ax = fig.subplots()
    ax.boxplot([values for _, values in ordered], showfliers=False)
    for i, (_, values) in enumerate(ordered, start=1):
        points = shown(values, MAX_POINTS // len(ordered))
        jitter = i + 0.15 * np.sin(7.3 * np.arange(len(points)))  # deterministic spread
        ax.scatter(jitter, points, s=8, alpha=0.5, color="tab:blue")
    ax.set_xticks(
        range(1, len(ordered) + 1),
        [f"{name[:32]}\n(n={len(values)})" for name, values in ordered],
        rotation=30,
        ha="right",
        parse_math=False,
    )  # names are untrusted: no $mathtext$
    _log_axis(ax, "y")
    ax.set_ylabel("estimated fine-tuning images")
    ax.set_title("Estimated dataset size per base model")
    return _png(fig)


def scatter_plot(pairs: np.ndarray, summary: dict[str, Any]) -> str | None:
    """Estimated vs declared unique images (log-log, interval bars, y = x), or None without pairs."""
    if len(pairs) == 0:
        return None
    declared, estimate, low, high = shown(pairs, MAX_POINTS).T
    x, y = np.maximum(declared, 1.0), np.maximum(estimate, 1.0)
    below = np.maximum(y - np.maximum(np.where(np.isnan(low), y, low), 1.0), 0.0)
    above = np.maximum(np.where(np.isnan(high), y, high) - y, 0.0)
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.errorbar(x, y, yerr=[below, above], fmt="o", ms=4, alpha=0.6, elinewidth=0.8)
    top = max(x.max(), y.max()) * 1.5
    ax.plot([1, top], [1, top], color="gray", linestyle="--", linewidth=1, label="estimate = declared")
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    ax.set_xlabel("declared unique images")
    ax.set_ylabel("estimated images")
    stats = summary["estimate_vs_declared"]
    drawn = f", {len(x):,} drawn" if len(x) < stats["n"] else ""
    ax.set_title(f"Estimated vs declared (MAE {stats['mae']:.1f} images, n = {stats['n']:,}{drawn})")
    ax.legend(loc="upper left")
    return _png(fig)
