"""``lora-scan crawl`` and ``lora-scan report``: a resumable batch audit of many LoRAs, and its report.

- ``listing``, ``listing_hf``, ``listing_civitai``: where targets come from (a file, a Hub search, a
  CivitAI search), as :class:`Candidate` rows.
- ``state``: the SQLite (WAL) state that makes a crawl resumable: one row per target.
- ``probe``: header first: what a target's safetensors header says, before any weight download.
- ``task``: one target end to end (probe, filters, download, scan, cleanup), in a thread or on Ray.
- ``dispatch``: the thread pool or the Ray cluster that runs tasks; ``run``: the crawl loop.
- ``table``, ``report``, ``html``: the report (parquet, CSV, summary JSON, a self-contained HTML page).

See docs/crawl.md.
"""

from typing import Any

__all__ = ["CrawlOptions", "CrawlSummary", "crawl", "write_report"]


def __getattr__(name: str) -> Any:
    # Lazy: ``lora-scan --help`` imports the click layer only, not the scan stack.
    if name in ("CrawlOptions", "CrawlSummary", "crawl"):
        from . import run

        return getattr(run, name)
    if name == "write_report":
        from .report import write_report

        return write_report
    raise AttributeError(name)
