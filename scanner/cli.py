"""The ``lora-scan`` command: a thin click layer over ``scanner``'s functions."""

from __future__ import annotations

import click
from rich.console import Console

from lora_wise.clitools import EXIT_CODES_HELP, main_for, print_json

from .inspect import inspect_path, render


@click.group(epilog=EXIT_CODES_HELP)
@click.version_option(package_name="lora-wise")
def cli() -> None:
    """Audit LoRA files: what they are, what they declare, and how many images trained them."""


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("path", type=click.Path(exists=True, dir_okay=True))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def inspect(path: str, as_json: bool) -> None:
    """Read a LoRA file or PEFT adapter folder and summarise it.

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


def main() -> None:
    main_for(cli, "lora-scan")
