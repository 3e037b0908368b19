"""The ``lora-scan`` command: a thin click layer over ``scanner``'s functions.

``lora-scan TARGET`` scans; ``lora-scan`` alone scans the bundled example; ``inspect``, ``crawl``,
``report`` and ``docs`` are subcommands. A first argument that is not a subcommand is a target.
With ``--json``, ``scan`` and ``inspect`` print one envelope (``scanner.envelope``) whatever
happens, errors included; the exit code is the contract in ``lora_wise.cli.tools``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from lora_wise._text import shown, shown_tree
from lora_wise.cli.docs import docs
from lora_wise.cli.tools import (
    CONTEXT_SETTINGS,
    DOCS_HINT,
    EXIT_CODES_HELP,
    console,
    error,
    json_text,
    main_for,
    output_option,
    parse_size,
    print_json,
    quiet_option,
)
from lora_wise.errors import LoraWiseError, one_line

from .crawl.cli import register as register_crawl
from .envelope import COMMANDS, envelope, failure

T = TypeVar("T")
EPILOG = f"{EXIT_CODES_HELP}\n\n{DOCS_HINT}"


class TargetFirstGroup(click.Group):
    """Route ``lora-scan TARGET`` to the ``scan`` command; no arguments scans the built-in example."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            args = ["scan"]
        elif args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["scan", *args]
        return super().parse_args(ctx, args)


@click.group(cls=TargetFirstGroup, epilog=EPILOG, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="lora-wise")
def cli() -> None:
    """Audit LoRA files: what they are, what they declare, and how many images trained them.

    \b
    lora-scan                      scan the bundled example LoRA (offline)
    lora-scan user/repo            scan a Hugging Face Hub repo's LoRA file(s)
    lora-scan civitai:12345        scan a CivitAI model's primary LoRA file
    lora-scan ./my_lora.safetensors
    lora-scan inspect FILE         describe a file without estimating
    lora-scan crawl hf --limit 50  audit many LoRAs (hf, civitai or a list), resumable
    lora-scan report STATE.db      parquet, CSV, JSON and HTML report of a crawl
    lora-scan docs                 the documents installed with the package
    """


def _answer(
    command: str,
    target: str | None,
    as_json: bool,
    work: Callable[[], list[T]],
    as_dict: Callable[[T], dict[str, Any]],
    exit_code: Callable[[T], int],
    render: Callable[[T], None],
) -> int:
    """Run ``work`` and print its results, as text or as the one JSON envelope (an error too)."""
    try:
        results = work()
    except LoraWiseError as exc:
        if not as_json:
            raise
        error(one_line(exc))
        print_json(failure(command, target, one_line(exc), exc.exit_code))
        return exc.exit_code
    code = max((exit_code(r) for r in results), default=0)
    if as_json:
        print_json(envelope(command, target, [as_dict(r) for r in results], [], code))
    else:
        for result in results:
            render(result)
    return code


@cli.command(epilog=EPILOG)
@click.argument("target", required=False)
@click.option("--file", "file", help="Scan only this file of a Hub repo, CivitAI version or folder.")
@click.option(
    "--max-size", default="2G", show_default=True, help="Refuse downloads larger than this (e.g. 500M, 2G)."
)
@click.option("--bank-dir", type=click.Path(file_okay=False), help="Use reference banks from this folder.")
@click.option(
    "--force-estimate", is_flag=True, help="Give a number even when the LoRA is unlike the bank's models."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object: the reports and errors (see `lora-scan docs scan-json`).",
)
@quiet_option
@output_option
def scan(target: str | None, file: str | None, max_size: str, bank_dir: str | None, force_estimate: bool,
         as_json: bool, quiet: bool) -> int:  # fmt: skip
    """Estimate how many images a LoRA was fine-tuned on, and report what it declares.

    TARGET is a Hub repo (user/repo, user/repo@revision, hf://user/repo/file), a CivitAI model
    (civitai:ID, civitai:ID@VERSION, a civitai.com URL), an https:// URL, or a local file or
    folder. Without TARGET the bundled example LoRA is scanned (offline), with its true size.

    Downloads are capped by --max-size and verified against published SHA-256 hashes; pickle
    files (.bin/.ckpt/.pt/.pth) are never loaded (they are a finding: exit 1). Tokens come from
    HF_TOKEN (or `hf auth login`) and CIVITAI_TOKEN; HF_ENDPOINT and CIVITAI_ENDPOINT point at
    mirrors.
    """
    from .report import ScanReport
    from .report import render as render_report

    def work() -> list[ScanReport]:
        from .scan import scan_all, working

        options = {"bank_dir": bank_dir, "force_estimate": force_estimate}
        progress = not (quiet or as_json)
        if target is None:
            from .example import scan_example

            with working("scanning the bundled example: reading, spectra, reference bank", progress):
                return [scan_example(**options)]
        return scan_all(target, file=file, max_size=parse_size(max_size), progress=progress, **options)

    out = console()
    return _answer("scan", target if target is not None else "bundled example", as_json, work,
                   ScanReport.to_dict, lambda r: r.exit_code, lambda r: render_report(r, out))  # fmt: skip


@cli.command(epilog=EPILOG)
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object, as `lora-scan --json` does (see `lora-scan docs scan-json`).",
)
@click.option(
    "--raw", is_flag=True, help="Also show the whole header metadata, every key as the file has it."
)
@output_option
def inspect(path: str, as_json: bool, raw: bool) -> int:
    """Read a LoRA file or PEFT adapter folder and summarise it, without estimating.

    PATH is a .safetensors file or a folder with adapter_model.safetensors. Reports the
    format (kohya, PEFT, diffusers, LyCORIS...), the base model it fits, rank, layer counts per
    component, dtype and the training metadata the file declares (kohya ss_* keys, modelspec),
    and what in the declarations contradicts the weights (a finding: exit 1). Pickle files
    (.bin/.ckpt/.pt/.pth) are refused, never loaded (exit 1).

    \b
    Examples:
      lora-scan inspect my_lora.safetensors
      lora-scan inspect ./adapter_folder --json
      lora-scan inspect my_lora.safetensors --raw     # every __metadata__ key and value
    """
    out = console()
    return _answer("inspect", path, as_json, lambda: [_inspect_summary(path, raw)], dict,
                   lambda s: s["exit_code"], lambda s: _render_inspect(s, out))  # fmt: skip


def _inspect_summary(path: str, raw: bool) -> dict[str, Any]:
    """The inspect report: ``describe``'s summary, its findings and exit code, and with ``raw`` the
    header metadata as the file has it."""
    from lora_wise import read_lora

    from .inspect import describe
    from .status import Status, exit_code

    weights = read_lora(path)
    findings = list(weights.conflicts)
    summary = {"status": str(Status.OK), **describe(weights), "findings": findings}
    summary["exit_code"] = exit_code(Status.OK, findings=bool(findings))
    if raw:
        summary["metadata"] = dict(weights.header_metadata)
    return summary


def _render_inspect(summary: dict[str, Any], out: Console) -> None:
    from rich.table import Table

    from .inspect import render

    render(shown_tree(summary), out)  # a renderer that prints values as markup: escape them all first
    for finding in summary["findings"]:
        out.print(f"[bold red]finding:[/] {shown(finding)}")
    if "metadata" not in summary:
        return
    out.print("[bold]Header metadata[/] (__metadata__, every key as the file has it)")
    table = Table()
    table.add_column("key", style="cyan", overflow="fold")
    table.add_column("value", overflow="fold")
    for key, value in sorted(summary["metadata"].items()):
        table.add_row(shown(key), shown(value))
    if not summary["metadata"]:
        table.add_row("", "[dim]none: the header has no __metadata__[/]")
    out.print(table)


register_crawl(cli)
cli.add_command(docs)


def _json_error(args: list[str], message: str, code: int) -> None:
    """A usage error of ``scan`` or ``inspect`` under ``--json`` still prints the envelope."""
    # a first word that is no command is a target, as TargetFirstGroup reads it
    command = args[0] if args and args[0] in cli.commands else "scan"
    if "--json" not in args or command not in COMMANDS:  # crawl and report have JSON summaries of their own
        return
    text = json_text(failure(command, None, message, code))
    path = _option_value(args, ("-o", "--output"))
    if path is None:
        click.echo(text)
        return
    from lora_wise._files import atomic_write_text

    try:
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        error(f"cannot write {path}: {exc}")


def _option_value(args: list[str], names: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--") and "=" in arg and arg.split("=", 1)[0] in names:
            return arg.split("=", 1)[1]
    return None


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--attack",
    type=click.Path(exists=True, dir_okay=False),
    help="An attack from lora-wise leak train (default: the packaged one of the LoRA's backbone, tiny-sd or "
    "tiny-sd-v2).",
)
@click.option(
    "--candidates",
    type=click.Path(exists=True, file_okay=False),
    help="A folder with one sub-folder of images per candidate identity: rank them.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False), help="The PNG grid (default: TARGET-leak.png beside it)."
)
@click.option("--k", "k", type=click.IntRange(min=1, max=16), default=4, show_default=True)
@click.option(
    "--step", type=click.IntRange(min=0), default=None, help="Fine-tuning step (default: the file's)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def leak(
    target: str,
    attack: str | None,
    candidates: str | None,
    out: str | None,
    k: int,
    step: int | None,
    seed: int,
    as_json: bool,
) -> None:
    """What a LoRA's weights give away about its subject: recovered images beside the base model's.

    \b
    Examples:
      lora-scan leak my_lora.safetensors
      lora-scan leak my_lora.safetensors --candidates faces/ --json
    """
    from lora_wise.leak.scan import leak_scan

    report = leak_scan(target, attack, out, k=k, seed=seed, step=step, candidates=candidates)
    if as_json:
        print_json(report)
        return
    console = Console()
    console.print(f"recovered (left, LoRA applied) | base model (right, same conditioning): {report['grid']}")
    for row in report.get("candidates", []):
        console.print(f"  {row['rank']:3d}. {row['candidate']}  similarity {row['similarity']:.3f}")


def main() -> None:
    main_for(cli, "lora-scan", on_error=_json_error)
