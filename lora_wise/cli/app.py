"""The ``lora-wise`` command: the benchmark and the science, as thin click layers over library functions."""

from __future__ import annotations

import click
from rich.table import Table

from lora_wise.cli.tools import (
    CONTEXT_SETTINGS,
    DOCS_HINT,
    EXIT_CODES_HELP,
    console,
    main_for,
    output_option,
    print_json,
    shown,
)


@click.group(epilog=f"{EXIT_CODES_HELP}\n\n{DOCS_HINT}", context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="lora-wise")
def cli() -> None:
    """LoRA-WiSE: generate LoRA fine-tunes at known dataset sizes, turn them into spectra, publish
    them as a Hugging Face dataset, and fit / evaluate dataset-size estimators (DSiRe)."""


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print every layer's singular values as JSON.")
@output_option
def spectra(path: str, as_json: bool) -> None:
    """Singular values of A, B and scale·B·A of every layer of a LoRA file.

    Computed exactly from the r×r Gram matrices of the factors (no dense d×k product), in the
    fixed layer order the benchmark and the estimators use.
    """
    from lora_wise import compute_spectra, read_lora

    result = compute_spectra(read_lora(path))
    if as_json:
        print_json(
            [
                {"layer": name, "a": result.a[i], "b": result.b[i], "ba": result.ba[i], "fro": result.fro[i]}
                for i, name in enumerate(result.layers)
            ]
        )
        return
    table = Table(title=f"{len(result.layers)} layers, width {result.width}")
    for column in ("layer", "‖ΔW‖_F", "σ₁(ΔW)", "σ₁(A)", "σ₁(B)"):
        table.add_column(column, justify="left" if column == "layer" else "right")
    for i, name in enumerate(result.layers):
        sigma = (result.fro[i], result.ba[i, 0], result.a[i, 0], result.b[i, 0])
        table.add_row(shown(name), *(f"{value:.4g}" for value in sigma))
    console().print(table)


def _register() -> None:
    from lora_wise.cli.bank import banks_command, fit_bank_command
    from lora_wise.cli.dataset import COMMANDS
    from lora_wise.cli.docs import docs
    from lora_wise.cli.evaluate import evaluate, norms
    from lora_wise.cli.generate import generate

    for command in (generate, *COMMANDS, evaluate, norms, fit_bank_command, banks_command, docs):
        cli.add_command(command)


_register()


def _register_leak() -> None:
    from lora_wise.cli.leak import leak

    cli.add_command(leak)


_register_leak()


def main() -> None:
    main_for(cli, "lora-wise")
