"""``lora-scan crawl hf|civitai|list`` and ``lora-scan report``: thin click layers over ``scanner.crawl``.

The heavy modules (the scan, pyarrow, matplotlib) are imported inside the commands, so that
``lora-scan --help`` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from lora_wise.cli.tools import (
    CONTEXT_SETTINGS,
    EXIT_CODES_HELP,
    EXIT_INPUT,
    EXIT_NO_LORA,
    EXIT_OK,
    console,
    error,
    parse_size,
    print_json,
    shown,
)

DEFAULT_STATE = "lora-scan-crawl.db"

CRAWL_EXIT_HELP = (
    "\b\nExit codes:\n"
    "  0  the crawl finished (per-target statuses, unsafe and failed included, are in the report)\n"
    "  2  the listing failed, or the state file is not a crawl state (or another crawl holds it)\n"
    "  3  no targets found\n  4  usage error"
)


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    from lora_wise.errors import ExecutorError
    from lora_wise.executors import parse_shard

    try:
        return parse_shard(value) if value else None
    except ExecutorError as exc:
        raise click.BadParameter(str(exc)) from None


def crawl_options(command: Callable) -> Callable:
    """The options every ``crawl`` source shares."""
    options = [
        click.option("--state", default=DEFAULT_STATE, show_default=True, type=click.Path(dir_okay=False),
                     help="SQLite state file; rerun the same command with it to resume."),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Report folder (default: <state name>-report beside the state file)."),
        click.option("--jobs", default=4, show_default=True, type=click.IntRange(1, 256),
                     help="Targets scanned at once (threads, or Ray tasks in flight)."),
        click.option("--max-size", default="2G", show_default=True,
                     help="Skip files larger than this (e.g. 300M); checked from the listing or header "
                          "first."),
        click.option("--keep", type=click.Path(file_okay=False),
                     help="Copy downloaded weights here (default: deleted after each scan)."),
        click.option("--attempts", default=3, show_default=True, type=click.IntRange(1, 100),
                     help="Tries per target on transient faults (429, 5xx, cut downloads) before 'failed'."),
        click.option("--target-timeout", default=900.0, show_default=True, type=click.FloatRange(min=1),
                     help="Seconds one target may take (header, download, scan); past it: an 'error' row."),
        click.option("--target-memory", default="4G", show_default=True,
                     help="Memory a crawl worker may add to what it holds at start; past it: 'error'."),
        click.option("--ray", "ray_address", metavar="ADDRESS",
                     help="Run the scans on Ray: 'auto', 'ray://host:10001', or 'local' "
                          "(a private instance)."),
        click.option("--shard", callback=_parse_shard, metavar="I/N",
                     help="Keep only the targets of shard I of N (0-based), one machine each; "
                          "merge with `report`."),
        click.option("--bank-dir", type=click.Path(file_okay=False),
                     help="Use reference banks from this folder."),
        click.option("--force-estimate", is_flag=True,
                     help="Give a number even when a LoRA is unlike the bank's models."),
        click.option("--retry-failed", is_flag=True, help="Give 'failed' targets a fresh set of attempts."),
        click.option("--relist", is_flag=True,
                     help="Run the search again although it finished (new targets are added)."),
        click.option("--no-report", is_flag=True, help="Do not write the report at the end."),
        click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end."),
        click.option("--quiet", is_flag=True, help="No progress display."),
    ]  # fmt: skip
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


@click.group(context_settings=CONTEXT_SETTINGS, epilog=CRAWL_EXIT_HELP)
def crawl() -> None:
    """Audit many LoRAs: a Hub search, a CivitAI search or a list of targets.

    Each target's safetensors header is read first (HTTP Range requests), so pickle files and files
    over --max-size are recorded without downloading them; the rest are downloaded, scanned like
    `lora-scan TARGET`, and deleted. Every target and its result is kept in a SQLite state file:
    kill the crawl at any moment and run the same command again to continue. A report (parquet,
    CSV, JSON, HTML) is written at the end. See `lora-scan docs crawl`.

    \b
    Examples:
      lora-scan crawl hf --filter lora --base-model stable-diffusion-v1-5/stable-diffusion-v1-5 --limit 200
      lora-scan crawl civitai --base-models "SD 1.5" --query anime --limit 100 --jobs 8
      lora-scan crawl list targets.txt --state audit.db --out audit-report
      lora-scan crawl civitai --limit 0 --ray auto --jobs 64     # everything, on a Ray cluster
    """


@crawl.command("hf", epilog=CRAWL_EXIT_HELP)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    default=("lora",),
    show_default=True,
    help="Hub tag to filter on (repeatable), e.g. lora, diffusers.",
)
@click.option(
    "--base-model", metavar="REPO", help="Only adapters of this base model (tag base_model:adapter:REPO)."
)
@click.option("--search", help="Text in the repo id.")
@click.option("--author", help="Only this user's or organisation's repos.")
@click.option(
    "--sort",
    type=click.Choice(["downloads", "likes", "last_modified", "created_at", "trending_score"]),
    help="Order of the search (with --limit: which models come first).",
)
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(0), help="Models to list; 0 = all."
)
@crawl_options
def crawl_hf(filters: tuple[str, ...], base_model: str | None, search: str | None, author: str | None,
             sort: str | None, limit: int, **common: Any) -> int:  # fmt: skip
    """Crawl a Hugging Face Hub model search (HfApi.list_models).

    Each repo found gives one target per LoRA weights file (hf://user/repo/file.safetensors), chosen
    as `lora-scan user/repo` does: full checkpoints are left out, pickle-only repos are 'unsafe'.

    \b
    Examples:
      lora-scan crawl hf --filter lora --limit 50
      lora-scan crawl hf --base-model stabilityai/stable-diffusion-xl-base-1.0 --sort downloads --limit 500
      lora-scan crawl hf --author someone --limit 0 --state someone.db
    """
    from .listing_hf import HubSearch

    listing = HubSearch(
        filters=filters, base_model=base_model, search=search, author=author, sort=sort, limit=limit
    )
    return _run(listing, **common)


@crawl.command("civitai", epilog=CRAWL_EXIT_HELP)
@click.option(
    "--types",
    multiple=True,
    default=("LORA",),
    show_default=True,
    help="CivitAI model type (repeatable): LORA, LoCon, DoRA.",
)
@click.option(
    "--base-models",
    "--base-model",
    "base_models",
    multiple=True,
    help='CivitAI base model name (repeatable), e.g. "SD 1.5", "SDXL 1.0", "Flux.1 D".',
)
@click.option("--query", help="Search text.")
@click.option(
    "--sort", type=click.Choice(["Highest Rated", "Most Downloaded", "Newest"]), help="Order of the search."
)
@click.option(
    "--nsfw/--sfw", default=None, help="Include (--nsfw) or exclude (--sfw) NSFW models; default: the API's."
)
@click.option(
    "--latest-only", is_flag=True, help="Only each model's newest version (default: every version)."
)
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(0), help="Models to list; 0 = all."
)
@crawl_options
def crawl_civitai(types: tuple[str, ...], base_models: tuple[str, ...], query: str | None, sort: str | None,
                  nsfw: bool | None, latest_only: bool, limit: int, **common: Any) -> int:  # fmt: skip
    """Crawl a CivitAI model search (GET /api/v1/models, cursor paging).

    Every version of every model found is a target civitai:MODEL@VERSION; the listing's file size,
    format and hash are kept, so oversize and pickle files are recorded without any download.
    CIVITAI_TOKEN is sent to the API; CIVITAI_ENDPOINT points at a mirror.

    \b
    Examples:
      lora-scan crawl civitai --base-models "SD 1.5" --limit 100
      lora-scan crawl civitai --types LORA --types LoCon --query "pixel art" --latest-only --limit 0
    """
    from .listing_civitai import CivitaiSearch

    listing = CivitaiSearch(types=types, base_models=base_models, query=query, sort=sort, nsfw=nsfw,
                            limit=limit, latest_only=latest_only)  # fmt: skip
    return _run(listing, **common)


@crawl.command("list", epilog=CRAWL_EXIT_HELP)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@crawl_options
def crawl_list(file: str, **common: Any) -> int:
    """Crawl the targets listed in FILE, one per line, in any form `lora-scan TARGET` takes.

    Blank lines and '#' comments are ignored; a line that is not a target becomes an 'error' row. Use
    it for a CivitAI collection (its API does not list items: paste the model URLs) or a Hub list.

    \b
    Example targets.txt:
      # my audit
      user/repo
      hf://user/other-repo/lora.safetensors
      civitai:12345@67890
      https://civitai.com/models/12345?modelVersionId=67890
      https://example.org/some_lora.safetensors
    """
    from .listing import TargetsFile

    return _run(TargetsFile(file), **common)


def _run(listing: Any, *, state: str, out: str | None, jobs: int, max_size: str, keep: str | None,
         attempts: int, target_timeout: float, target_memory: str,
         ray_address: str | None, shard: tuple[int, int] | None, bank_dir: str | None, force_estimate: bool,
         retry_failed: bool, relist: bool, no_report: bool, as_json: bool, quiet: bool) -> int:  # fmt: skip
    from .dispatch import Limits
    from .report import default_out, write_report
    from .run import CrawlOptions
    from .run import crawl as run_crawl

    options = CrawlOptions(
        jobs=jobs,
        max_size=parse_size(max_size),
        attempts=attempts,
        keep=keep,
        bank_dir=bank_dir,
        force_estimate=force_estimate,
        ray=ray_address,
        shard=shard,
        retry_failed=retry_failed,
        relist=relist,
        progress=not (quiet or as_json),
        limits=Limits(seconds=target_timeout, memory=parse_size(target_memory)),
    )
    try:
        summary = run_crawl(state, listing, options)
    except KeyboardInterrupt:
        console(stderr=True).print("interrupted: the targets in flight are pending again; "
                                   "run the same command to continue")  # fmt: skip
        return 130
    data = summary.to_dict()
    if not no_report and summary.targets:
        data["report"] = write_report([state], out or default_out(state))["files"]
    if as_json:
        print_json(data)
    elif not quiet:
        _print_summary(data)
    if summary.listing_error:
        error(f"listing stopped: {summary.listing_error} (rerun the same command to resume it)")
        return EXIT_INPUT
    return EXIT_OK if summary.targets else EXIT_NO_LORA


def _print_summary(data: dict[str, Any]) -> None:
    from ..download import format_size

    err = console(stderr=True)
    counts = ", ".join(f"{status} {n}" for status, n in sorted(data["counts"].items()))
    err.print(f"crawl: {data['targets']} targets ({shown(counts or 'none')}), "
              f"{format_size(data['bytes'])} downloaded, "
              f"{data['seconds']:.0f} s; state {shown(data['state'])}")  # fmt: skip
    if data.get("report"):
        err.print(f"report: {shown(data['report']['report.html'])}")


@click.command(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.argument("states", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), help="Report folder (default: <state name>-report).")
@click.option(
    "--html-rows",
    default=20_000,
    show_default=True,
    type=click.IntRange(1),
    help="Rows in the HTML table (parquet and CSV hold all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def report(states: tuple[str, ...], out: str | None, html_rows: int, as_json: bool) -> int:
    """Write the report of one or more crawl states (shards merge): parquet, CSV, JSON, HTML.

    \b
    Files in the report folder:
      reports.parquet, reports.csv   one row per scanned LoRA file (or unscanned target, with why)
      summary.json                   totals by status, format, base model; MAE of estimated vs declared
      report.html                    self-contained page: totals, plots, a sortable table with links

    \b
    Examples:
      lora-scan report lora-scan-crawl.db
      lora-scan report shard-0.db shard-1.db shard-2.db --out full-report
    """
    from .report import default_out, write_report

    summary = write_report(list(states), out or default_out(states[0]), html_rows=html_rows)
    if as_json:
        print_json(summary)
    else:
        err = console(stderr=True)
        by_status = ", ".join(f"{k} {v}" for k, v in summary["by_status"].items())
        err.print(f"{summary['targets']} targets, {summary['reports']} rows ({shown(by_status or 'none')})")
        err.print(f"report: {shown(summary['files']['report.html'])}")
    return EXIT_OK if summary["targets"] else EXIT_NO_LORA


def register(group: click.Group) -> None:
    group.add_command(crawl)
    group.add_command(report)
