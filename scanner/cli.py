"""The ``lora-scan`` command: a thin click layer over ``scanner``'s functions.

``lora-scan TARGET`` scans; ``lora-scan`` alone scans the bundled example; ``inspect``, ``crawl``
and ``report`` are subcommands. A first argument that is not a subcommand is a target.
"""

from __future__ import annotations

import click
from rich.console import Console

from lora_wise.cli.tools import EXIT_CODES_HELP, main_for, parse_size, print_json

from .crawl.cli import register as register_crawl
from .inspect import inspect_path, render


class TargetFirstGroup(click.Group):
    """Route ``lora-scan TARGET`` to the ``scan`` command; no arguments scans the built-in example."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args:
            args = ["scan"]
        elif args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["scan", *args]
        return super().parse_args(ctx, args)


@click.group(cls=TargetFirstGroup, epilog=EXIT_CODES_HELP)
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
    """


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("target", required=False)
@click.option("--file", "file", help="Scan only this file of a Hub repo, CivitAI version or folder.")
@click.option("--max-size", default="2G", show_default=True,
              help="Refuse downloads larger than this (e.g. 500M, 2G).")
@click.option("--bank-dir", type=click.Path(file_okay=False), help="Use reference banks from this folder.")
@click.option("--force-estimate", is_flag=True, help="Give a number even when the LoRA is unlike the bank's models.")
@click.option("--json", "as_json", is_flag=True, help="Print the ScanReport(s) as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def scan(target: str | None, file: str | None, max_size: str, bank_dir: str | None, force_estimate: bool,
         as_json: bool, quiet: bool) -> int:
    """Estimate how many images a LoRA was fine-tuned on, and report what it declares.

    TARGET is a Hub repo (user/repo, user/repo@revision, hf://user/repo/file), a CivitAI model
    (civitai:ID, civitai:ID@VERSION, a civitai.com URL), an https:// URL, or a local file or
    folder. Without TARGET the bundled example LoRA is scanned (offline), with its true size.

    Downloads are capped by --max-size and verified against published SHA-256 hashes; pickle
    files (.bin/.ckpt/.pt/.pth) are never loaded. Tokens come from HF_TOKEN (or
    `huggingface-cli login`) and CIVITAI_TOKEN; HF_ENDPOINT and CIVITAI_ENDPOINT point at mirrors.
    """
    from .report import render as render_report
    from .scan import scan_all

    options = {"bank_dir": bank_dir, "force_estimate": force_estimate}
    if target is None:
        from .example import scan_example

        reports = [scan_example(**options)]
    else:
        reports = scan_all(target, file=file, max_size=parse_size(max_size), progress=not (quiet or as_json), **options)
    if as_json:
        print_json([r.to_dict() for r in reports] if len(reports) > 1 else reports[0].to_dict())
    else:
        console = Console()
        for report in reports:
            render_report(report, console)
    return max(r.exit_code for r in reports)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def inspect(path: str, as_json: bool) -> None:
    """Read a LoRA file or PEFT adapter folder and summarise it, without estimating.

    PATH is a .safetensors file or a folder with adapter_model.safetensors. Reports the
    format (kohya, PEFT, diffusers, LyCORIS...), the base model it fits, rank, layer counts per
    component, dtype and the training metadata the file declares (kohya ss_* keys, modelspec).
    Pickle files (.bin/.ckpt/.pt/.pth) are refused, never loaded.

    \b
    Examples:
      lora-scan inspect my_lora.safetensors
      lora-scan inspect ./adapter_folder --json
    """
    summary = inspect_path(path)
    if as_json:
        print_json(summary)
    else:
        render(summary, Console())


register_crawl(cli)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("target", type=click.Path(exists=True, dir_okay=False))
@click.option("--attack", type=click.Path(exists=True, dir_okay=False),
              help="An attack from lora-wise leak train (default: the packaged tiny-sd attack).")
@click.option("--candidates", type=click.Path(exists=True, file_okay=False),
              help="A folder with one sub-folder of images per candidate identity: rank them.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="The PNG grid (default: TARGET-leak.png beside it).")
@click.option("--k", "k", type=click.IntRange(min=1, max=16), default=4, show_default=True)
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="Fine-tuning step (default: the file's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def leak(target: str, attack: str | None, candidates: str | None, out: str | None, k: int, step: int | None,
         seed: int, as_json: bool) -> None:
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
    main_for(cli, "lora-scan")
