"""``lora-wise generate``: train the LoRA-WiSE models of a grid, resumably, on any executor."""

from __future__ import annotations

import click
from rich.table import Table

from lora_wise.cli.tools import CONTEXT_SETTINGS, console, exit_codes_help, print_json, quiet_option, shown

EPILOG = (
    "\b\nExamples:\n"
    "  lora-wise generate mini --out runs/mini --dry-run          # what would run (600 models)\n"
    "  lora-wise generate mini --out runs/mini --workers 2        # 2 single-threaded processes\n"
    "  lora-wise generate mini --out runs/mini --limit 32         # only the next 32 jobs\n"
    "  lora-wise generate mini --out runs/mini --skip-built benchmark/mini-lora-wise  # the rest\n"
    "  lora-wise generate sd15-low --out /shared/lw --shard $SLURM_ARRAY_TASK_ID/8\n"
    "  lora-wise generate sd15-medium --out /shared/lw --ray auto  # one GPU per group\n"
    "\b\nPresets: mini, mini-diversity, sd15-low, sd15-medium, sd2-medium, sd15-high.\n"
    "A grid file looks like:\n"
    "  backbones: [tiny-sd]             # tiny-sd, sd15, sd2, sdxl, a Hub id or a folder\n"
    "  ranks: [8]\n"
    "  ranges: [low, medium]            # sizes 1-6 / 1,10,...,50 / high: 1,50,100,500,1000\n"
    "  micro_datasets: {pool: 50}       # or pool:*, [pool:face, pool:photo-*, folder:/data/cat],\n"
    '                                   # {glob: "${IMAGENET_ROOT}/n*", kind: imagenet, count: 50}\n'
    "  steps: 1400                      # optional; default: the paper's per range\n"
    "  snapshot_every: 100\n"
    + exit_codes_help(
        "ok (every planned job finished)", "some jobs failed (rerun the same command to retry them)"
    )
)


@click.command(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("grid")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Output folder: one folder per job (<range>-<backbone>-r<rank>/<micro-dataset>/n<size>).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Local processes, one torch thread each (1: train in this process). "
    "With --ray: CPUs of a local Ray.",
)
@click.option(
    "--group-size",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs trained together in one batched pass (default 32, the fastest measured on CPU).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Run only shard I of N (0-based), for batch schedulers; stable per job id.",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run groups on a Ray cluster: 'auto', 'ray://host:10001' or 'local'. Needs lora-wise[ray].",
)
@click.option(
    "--limit", type=click.IntRange(min=0), default=None, help="Train at most N unfinished jobs now."
)
@click.option(
    "--skip-built",
    "skip_built",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Also skip jobs whose model already has rows in this dataset folder (continue a benchmark "
    "whose earlier pieces were built and committed elsewhere; then build with --merge).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (jobs, already done, groups) and train nothing."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the plan (with --dry-run) or the run summary as JSON."
)
@quiet_option
@click.option(
    "--trainer",
    default=None,
    metavar="MODULE:FUNCTION",
    help="The group trainer to call (default lora_wise.factory.train:train_group).",
)
def generate(
    grid: str,
    out_dir: str,
    workers: int,
    group_size: int | None,
    shard: str | None,
    ray_address: str | None,
    limit: int | None,
    skip_built: str | None,
    dry_run: bool,
    as_json: bool,
    quiet: bool,
    trainer: str | None,
) -> int:
    """Train the LoRA fine-tunes of a benchmark GRID (a YAML file or a preset name) into --out.

    Every job is one LoRA of the paper's recipe at one dataset size; it writes a snapshot
    (step-SSSSS.safetensors + step-SSSSS.json sidecar) every snapshot_every steps and done.json
    last. Jobs with done.json are skipped, so rerunning the same command after a kill or a
    failure resumes where it stopped; no file is ever half-written (temp name, then rename).

    Unfinished jobs are grouped (same backbone, rank, steps, batch, learning rate) and each
    group is trained in one batched pass, in this process, in --workers local processes, as one
    --shard of a batch-scheduler array, or on a --ray cluster. A failed group is reported and
    the others go on.
    """
    from pathlib import Path

    from lora_wise.dataset.build import built_model_ids
    from lora_wise.executors import parse_shard
    from lora_wise.factory.grid import load_grid
    from lora_wise.factory.runner import DEFAULT_GROUP_SIZE, DEFAULT_TRAINER, make_plan, run_plan

    built = built_model_ids(skip_built) if skip_built else set()
    plan = make_plan(load_grid(grid), Path(out_dir), group_size or DEFAULT_GROUP_SIZE,
                     parse_shard(shard) if shard else None, limit, workers, skip=built)  # fmt: skip
    if dry_run:
        if as_json:
            print_json(plan.as_dict())
        else:
            _print_plan(plan)
        return 0
    executor = "ray" if ray_address else ("pool" if workers > 1 else "inprocess")
    progress = console(stderr=True, quiet=quiet or as_json)
    summary = run_plan(plan, executor, workers, ray_address, trainer or DEFAULT_TRAINER, console=progress)
    if as_json:
        print_json(summary.as_dict())
    else:
        _print_summary(summary)
    return 0 if summary.ok else 1


def _print_plan(plan) -> None:
    out = console()
    table = Table(
        title=f"plan for {shown(plan.out_dir)}"
        + (f" (shard {plan.shard[0]}/{plan.shard[1]})" if plan.shard else "")
    )
    for column in ("config", "jobs", "done", "to run"):
        table.add_column(column, justify="left" if column == "config" else "right")
    for name, row in plan.as_dict()["configs"].items():
        table.add_row(shown(name), str(row["jobs"]), str(row["done"]), str(row["to_run"]))
    out.print(table)
    out.print(
        f"{len(plan.todo)} jobs to train in {len(plan.groups)} groups, {plan.model_steps:,} model-steps."
    )


def _print_summary(summary) -> None:
    out = console()
    rate = summary.as_dict()["model_steps_per_s"]
    out.print(f"{len(summary.completed)} jobs completed, {len(summary.failed)} failed, "
              f"{summary.seconds:.0f} s, {rate} model-steps/s")  # fmt: skip
    for job_id, error in list(summary.failed.items())[:20]:
        out.print(f"[red]failed[/] {shown(job_id)}: {shown(error)}")
