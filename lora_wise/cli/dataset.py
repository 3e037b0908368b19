"""``lora-wise build``, ``publish`` and ``import-upstream``: the LoRA-WiSE dataset, as thin click layers.

Each command calls one library function (:func:`lora_wise.dataset.build.build_dataset`,
:func:`lora_wise.dataset.hub.publish`, :func:`lora_wise.dataset.upstream.import_upstream`) and renders its
result;
typed errors become exit code 2 through :func:`lora_wise.cli.tools.run`.
"""

from __future__ import annotations

from contextlib import contextmanager

import click
from rich.table import Table

from lora_wise.cli.tools import CONTEXT_SETTINGS, EXIT_CODES_HELP, console, print_json, quiet_option, shown


def _steps(ctx, param, values: tuple[str, ...]) -> list[int] | None:
    """``--steps 1200 --steps 1400`` or ``--steps 1200,1400``."""
    try:
        steps = [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"steps are integers: {exc}") from exc
    return steps or None


def _configs_table(configs: dict[str, dict], title: str) -> Table:
    from lora_wise.dataset.card import human_bytes

    table = Table(title=shown(title))
    for column in ("config", "split", "rows", "models", "micro-datasets", "size"):
        table.add_column(column, justify="left" if column in ("config", "split") else "right")
    for name, entry in configs.items():
        for split, s in entry["splits"].items():
            table.add_row(
                shown(name),
                shown(split),
                str(s["rows"]),
                str(s["models"]),
                str(s["micro_datasets"]),
                human_bytes(s["bytes"]),
            )
    return table


@contextmanager
def _progress_bar(disable: bool):
    """A rich bar per config, fed by a ``progress(config, done, total)`` callback (build, import)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console(stderr=True), disable=disable, transient=True)  # fmt: skip
    tasks: dict[str, int] = {}

    def update(config: str, done: int, total: int) -> None:
        if config not in tasks:
            tasks[config] = bar.add_task(config, total=total)
        bar.update(tasks[config], completed=done)

    with bar:
        yield update


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog="\b\nExample:\n  lora-wise build runs/factory runs/dataset --steps 1200\n\n" + EXIT_CODES_HELP,
)
@click.argument("factory_dir", type=click.Path(file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--weights", is_flag=True, help="Also write <config>-weights configs holding the safetensors files."
)
@click.option(
    "--steps",
    multiple=True,
    callback=_steps,
    help="Snapshot steps to include (repeat or comma-separate); default all.",
)
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Storage precision of the spectra (computed in float64 either way).")  # fmt: skip
@click.option(
    "--merge",
    is_flag=True,
    help="Keep the rows OUT_DIR already holds for models FACTORY_DIR lacks (a benchmark built in pieces).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entries as JSON.")
@quiet_option
def build(factory_dir: str, out_dir: str, weights: bool, steps: list[int] | None, precision: str, merge: bool,
          as_json: bool, quiet: bool) -> None:  # fmt: skip
    """Turn the factory's output folder into a LoRA-WiSE dataset folder.

    One config per (range, backbone, rank), parquet shards under data/<config>/, train/test split
    by micro-dataset (the paper's 15/50, seed 42), the manifest lora_wise.json and the dataset card
    README.md rendered with the real counts. Streams one snapshot at a time.

    With --merge, models already in OUT_DIR that FACTORY_DIR does not hold are kept (and the
    union re-split), so a benchmark generated over several sessions or machines, each with its
    own factory folder, grows in place: see `lora-wise generate --skip-built`.
    """
    from lora_wise.dataset.build import build_dataset

    with _progress_bar(disable=as_json or quiet) as progress:
        summary = build_dataset(factory_dir, out_dir, weights=weights, steps=steps, precision=precision,
                                progress=progress, merge=merge)  # fmt: skip
    if as_json:
        print_json({"out_dir": str(summary.out_dir), "configs": summary.configs, "notes": summary.notes})
        return
    out = console()
    out.print(_configs_table(summary.configs, f"LoRA-WiSE dataset in {summary.out_dir}"))
    for note in summary.notes:
        out.print(f"[yellow]note:[/] {shown(note)}")


IMPORT_EPILOG = (
    "\b\nExamples:\n"
    "  lora-wise import-upstream MoSalama98/LoRA-WiSE --config medium_32 --out runs/dataset\n"
    "  lora-wise import-upstream ./LoRA-WiSE --config low_8 --out runs/dataset  # a local copy\n\n"
    + EXIT_CODES_HELP
)


@click.command(context_settings=CONTEXT_SETTINGS, name="import-upstream", epilog=IMPORT_EPILOG)
@click.argument("source")
@click.option(
    "--config",
    "config",
    required=True,
    help="Upstream config: low_8, low_16, low_32, medium_16, medium_32, medium_32_2, high_32.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Dataset folder to write into."
)
@click.option("--revision", default=None, help="Hub revision of the release (default: main).")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest entry as JSON.")
@quiet_option
def import_upstream(source: str, config: str, out_dir: str, revision: str | None, precision: str,
                    as_json: bool, quiet: bool) -> None:  # fmt: skip
    """Convert the published LoRA-WiSE release (Hub repo id or local folder of parquet) into our schema.

    Streams row group by row group, one layer's columns at a time (bounded memory whatever the
    file size), reshapes A to (rank, -1) and B to (-1, rank), computes spectra, writes the config
    (e.g. medium_32 -> medium-sd15-r32) at the paper's evaluated step.
    """
    from lora_wise.dataset.upstream import import_upstream as run_import
    from lora_wise.dataset.upstream import our_config

    with _progress_bar(disable=as_json or quiet) as progress:
        entry = run_import(source, config, out_dir, precision=precision, revision=revision, progress=progress)
    if as_json:
        print_json({our_config(config): entry})
        return
    console().print(_configs_table({our_config(config): entry}, f"imported {source} {config} into {out_dir}"))


PUBLISH_EPILOG = (
    "\b\nExamples:\n  lora-wise publish runs/dataset --repo-id user/lora-wise --dry-run\n"
    "  HF_TOKEN=hf_... lora-wise publish runs/dataset --repo-id user/lora-wise\n\n" + EXIT_CODES_HELP
)


@click.command(context_settings=CONTEXT_SETTINGS, epilog=PUBLISH_EPILOG)
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--repo-id", required=True, help="Hub dataset repo, user/name (created if missing).")
@click.option(
    "--dry-run", is_flag=True, help="List what would go up (and what would be removed); send nothing."
)
@click.option("--private", is_flag=True, help="Create the repo private (ignored if it exists).")
@click.option(
    "--token",
    default=None,
    envvar="HF_TOKEN",
    show_envvar=True,
    help="Hub token; default: HF_TOKEN or `hf auth login`.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@quiet_option
def publish(folder: str, repo_id: str, dry_run: bool, private: bool, token: str | None, as_json: bool,
            quiet: bool) -> None:  # fmt: skip
    """Upload a dataset folder to the Hub, sending only new or changed files.

    Compares local sha256 / git blob ids with the remote tree first; an unchanged folder makes no
    commit. Stale shards under data/ on the remote are removed in the same commit.
    """
    from lora_wise.dataset.card import human_bytes
    from lora_wise.dataset.hub import publish as run_publish

    if quiet or as_json:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the upload bars
    plan = run_publish(folder, repo_id, token=token, dry_run=dry_run, private=private)
    if as_json:
        print_json({"repo_id": plan.repo_id, "repo_exists": plan.repo_exists, "dry_run": plan.dry_run,
                    "uploads": [f.__dict__ for f in plan.uploads], "deletions": plan.deletions,
                    "unchanged": len(plan.unchanged), "commit_url": plan.commit_url})  # fmt: skip
        return
    out = console()
    verb = "would upload" if dry_run else "uploaded"
    for f in plan.uploads:
        out.print(f"{verb} {shown(f.path)} ({human_bytes(f.size)}, {f.reason})")
    for path in plan.deletions:
        out.print(f"{'would remove' if dry_run else 'removed'} {shown(path)}")
    if not plan.changes:
        out.print(f"{shown(repo_id)} is up to date ({len(plan.unchanged)} files unchanged); nothing sent")
        return
    created = "" if plan.repo_exists else (" (repo would be created)" if dry_run else " (repo created)")
    out.print(
        f"{len(plan.uploads)} file(s), {human_bytes(plan.upload_bytes)}; {len(plan.deletions)} removal(s); "
        f"{len(plan.unchanged)} unchanged{created}"
        + (f"\n{shown(plan.commit_url)}" if plan.commit_url else "")
    )


#: What ``lora_wise.cli.app`` registers on the ``lora-wise`` group.
COMMANDS = (build, publish, import_upstream)
