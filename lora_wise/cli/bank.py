"""``lora-wise fit-bank`` and ``lora-wise banks``: make the reference banks the scanner estimates with."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.table import Table

from lora_wise._text import shown
from lora_wise.cli.tools import CONTEXT_SETTINGS, EXIT_CODES_HELP, console, print_json
from lora_wise.spectra.table import SpectraTable

#: ~7.4 MB per step for 600 rank-8 tiny-sd models: a few steps keep a packaged bank small.
DEFAULT_STEPS = "300,600,900,1200"
FIT_EPILOG = (
    "\b\nExamples:\n"
    "  lora-wise fit-bank benchmark/mini-lora-wise --config low-tiny_sd-r8 --config medium-tiny_sd-r8\n"
    "  lora-wise import-upstream MoSalama98/LoRA-WiSE --config medium_32 --out runs/dataset\n"
    "  lora-wise fit-bank runs/dataset --config medium-sd15-r32 --steps 1200  # SD1.5 bank for lora-scan\n\n"
    + EXIT_CODES_HELP
)


def recipe_from_factory(source: Path) -> dict:
    """The training recipe the factory recorded in its sidecars (first snapshot found)."""
    from lora_wise.factory.snapshots import iter_snapshots

    for snap in iter_snapshots(source):
        job = snap.sidecar.job.to_dict()
        keys = (
            "learning_rate",
            "batch_size",
            "steps",
            "snapshot_every",
            "target_modules",
            "seed",
            "resolution",
        )
        return {**{k: job[k] for k in keys if k in job}, **snap.sidecar.recipe}
    return {}


@click.command("fit-bank", epilog=FIT_EPILOG, context_settings=CONTEXT_SETTINGS)
@click.argument("source")
@click.option(
    "--config",
    "configs",
    multiple=True,
    help="Config(s) to pool into one bank (one backbone and rank); repeat the flag.",
)
@click.option(
    "--steps",
    default=DEFAULT_STEPS,
    show_default=True,
    help="Snapshot steps to keep, comma-separated, or 'all'.",
)
@click.option("--kinds", default="a,b,ba", show_default=True, help="Matrix kinds the voters use.")
@click.option(
    "--base",
    type=click.Choice(["pooled", "ridge", "votes"]),
    default="pooled",
    show_default=True,
    help="Continuous estimate: one ridge on all layers' log spectra (strength by cross-validation), "
    "a per-layer log-log ridge, or the mean of the 1-NN votes.",
)
@click.option(
    "--hold-out",
    multiple=True,
    metavar="MICRO_DATASET",
    help="Leave this micro-dataset out (e.g. the one a demo LoRA comes from); repeatable.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder to write <backbone>-r<rank>.safetensors into (default: the user's bank folder, "
    "$LORA_WISE_BANKS or ~/.cache/lora-wise/banks, which lora-scan searches first).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=0),
    default=10,
    show_default=True,
    help="Repeats of the paper's protocol run on the bank's own table (0: skip the self-check).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the bank's summary and self-check as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="No progress lines on stderr.")
def fit_bank_command(source, configs, steps, kinds, base, hold_out, out, repeats, as_json, quiet) -> None:
    """Fit a reference bank (DSiRe + continuous estimate + applicability) and save it as safetensors.

    SOURCE is read as by `lora-wise evaluate` (a LoRA-WiSE dataset folder or Hub repo id, or a
    factory output folder). The bank is read back and checked, then the paper's protocol runs on its
    own table at every kept step, so you see what accuracy to expect from it.
    """
    from lora_wise.estimation.bank import fit_bank, load_bank_file, save_bank, user_banks_dir
    from lora_wise.evaluation import load_table, self_check

    say = _progress(quiet)
    say(f"reading spectra from {source}")
    table = SpectraTable.concat([load_table(source, c) for c in (configs or [None])])
    if hold_out:  # a demo LoRA must be one the bank has never seen
        table = table.subset(~np.isin(table.micro_dataset, hold_out))
    recipe = recipe_from_factory(Path(source)) if Path(source).is_dir() else {}
    recipe |= {"configs": list(configs), "held_out": list(hold_out)}
    bank = fit_bank(
        table,
        recipe=recipe,
        steps=None if steps == "all" else _ints(steps, "--steps"),
        kinds=tuple(_csv(kinds)),
        params={"base": base, "coverage": 0.8, "tie": "median"},
        created_by="lora-wise fit-bank",
        progress=lambda s: say(f"fitting the estimators at step {s}"),
    )
    if repeats:  # fit_bank rounds to float32 already, so this is the saved bank's own accuracy
        bank.header.self_check = self_check(
            bank, repeats, progress=lambda s: say(f"self-check at step {s}: the protocol, {repeats} repeats")
        )
    path = save_bank(bank, Path(out or user_banks_dir()) / f"{bank.name}.safetensors")
    say(f"wrote {path}; reading it back")
    loaded = load_bank_file(path)
    summary = {
        "path": str(path),
        "name": loaded.name,
        "snapshots": len(loaded.table),
        "steps": loaded.steps,
        "sizes": loaded.header.sizes,
        "bytes": path.stat().st_size,
        "self_check": loaded.header.self_check or [],
    }
    if as_json:
        print_json(summary)
    else:
        _render_fit(summary)


def _progress(quiet: bool) -> Callable[[str], None]:
    """One line per stage on stderr, with the seconds since the start (nothing with ``--quiet``)."""
    start, err = time.perf_counter(), console(stderr=True)

    def say(text: str) -> None:
        if not quiet:
            err.print(f"[dim]{time.perf_counter() - start:6.1f}s[/] {shown(text)}", highlight=False)

    return say


def _render_fit(summary: dict) -> None:
    console = Console()
    console.print(
        f"[bold]{summary['path']}[/]: {summary['snapshots']} reference snapshots, steps {summary['steps']}, "
        f"sizes {summary['sizes']}, {summary['bytes'] / 1e6:.1f} MB"
    )
    if not summary["self_check"]:
        return
    table = Table(title="Self-check: the paper's protocol on the bank's own table")
    for h in ("step", "method", "MAE", "Acc (%)", "notes"):
        table.add_column(h, justify="left" if h in ("method", "notes") else "right")
    for r in summary["self_check"]:
        table.add_row(
            str(r["step"]),
            r["method"],
            f"{r['mae']['mean']:.2f} ± {r['mae']['std']:.2f}",
            f"{r['accuracy']['mean']:.1f} ± {r['accuracy']['std']:.1f}",
            "; ".join(r.get("notes", [])),
        )
    console.print(table)


@click.command("banks", epilog=EXIT_CODES_HELP, context_settings=CONTEXT_SETTINGS)
@click.option("--bank-dir", type=click.Path(file_okay=False), default=None, help="Only this folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def banks_command(bank_dir, as_json) -> None:
    """List the reference banks lora-scan can use: the user's folder first, then the packaged ones."""
    from lora_wise.estimation.bank import available_banks, bank_dirs

    found = available_banks(bank_dir)
    if as_json:
        print_json(found)
        return
    table = Table(
        title="Reference banks", caption="searched: " + ", ".join(str(d) for d in bank_dirs(bank_dir))
    )
    for h in ("name", "backbone", "rank", "steps", "sizes", "path"):
        table.add_column(h)
    for b in found:
        table.add_row(
            b["name"],
            b["backbone"],
            str(b["rank"]),
            ",".join(map(str, b["steps"])),
            ",".join(map(str, b["sizes"])),
            b["path"],
        )
    Console().print(table)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _ints(value: str, hint: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value)]
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers", param_hint=hint) from None
