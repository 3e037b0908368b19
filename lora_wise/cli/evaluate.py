"""``lora-wise evaluate``: the paper's protocol on a spectra table, as a table like its Table 2."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from lora_wise.cli.tools import CONTEXT_SETTINGS, EXIT_CODES_HELP, output_option, print_json

EPILOG = (
    "\b\nExamples:\n"
    "  lora-wise evaluate runs/mini --config medium-tiny_sd-r8            # Frobenius-NN vs DSiRe\n"
    "  lora-wise evaluate runs/mini --methods all --markdown              # paper Table 5\n"
    "  lora-wise evaluate runs/mini --ablation kinds                      # paper Table 9\n"
    "  lora-wise evaluate runs/mini --by step                             # paper Table 8\n"
    "  lora-wise evaluate runs/mini --cross 1200:300                      # what applicability is for\n"
    "  lora-wise evaluate runs/mini --held-out-size 30                    # sizes never seen\n"
    "  lora-wise evaluate runs/mini --micro-datasets 'pool:photo-*' --n-train 5   # one concept family\n\n"
    + EXIT_CODES_HELP
)


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _methods(value: str) -> list[str]:
    from lora_wise.evaluation import ALL_METHODS

    names = list(ALL_METHODS) if value == "all" else _csv(value) or []
    bad = [m for m in names if m not in ALL_METHODS]
    if bad or not names:
        raise click.BadParameter(
            f"unknown {bad}; choose from {', '.join(ALL_METHODS)} or 'all'", param_hint="--methods"
        )
    return names


def _pm(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"


def _render(results, as_markdown: bool, key: str | None) -> None:
    head = ["Method", "Config"] + ([key] if key else []) + ["MAE ↓", "MAPE (%) ↓", "Acc (%) ↑"]
    rows = []
    for r in results:
        extra = [str(r.extra.get(key, ""))] if key else []
        rows.append([r.method, r.config] + extra + [_pm(r.mae), _pm(r.mape), _pm(r.accuracy)])
    # a note that only restates the row's own --by value ("step 300") belongs to that row, not the caption
    notes = sorted({n for r in results for n in r.notes if not (key and n.startswith(f"{key} "))})
    caption = (
        f"{results[0].repeats} repeats, {results[0].n_train} train / {results[0].n_test} test micro-datasets"
    )
    if as_markdown:
        click.echo("| " + " | ".join(head) + " |")
        click.echo("|" + "---|" * len(head))
        for row in rows:
            click.echo("| " + " | ".join(row) + " |")
        click.echo(f"\n{caption}" + "".join(f"; {n}" for n in notes))
        return
    table = Table(title="Dataset size recovery", caption="; ".join([caption, *notes]))
    for h in head:
        table.add_column(h, justify="left" if h in ("Method", "Config") else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


micro_datasets_option = click.option(
    "--micro-datasets",
    "micro_datasets",
    multiple=True,
    metavar="GLOB",
    help="Only these micro-datasets (glob, repeatable), e.g. 'pool:photo-*'.",
)


@click.command(context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("source")
@click.option(
    "--config",
    default=None,
    help="Dataset config, e.g. medium-tiny_sd-r8 (needed when SOURCE holds several).",
)
@click.option(
    "--methods",
    default="frobenius-nn,dsire",
    show_default=True,
    help="Comma-separated: frobenius-nn, dsire, nn-full-model, ridge, gda, average-vote, interval; or 'all'.",
)
@click.option(
    "--step", type=int, default=None, help="Snapshot step to evaluate (nearest stored; default: the last)."
)
@click.option("--kinds", default=None, help="Matrix kinds for the spectral methods, e.g. 'a,b,ba' or 'ba'.")
@micro_datasets_option
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True)
@click.option(
    "--n-train",
    type=click.IntRange(min=1),
    default=None,
    help="Training micro-datasets per repeat (default: the paper's 15 of 50, scaled).",
)
@click.option(
    "--seed", type=int, default=42, show_default=True, help="random.seed of the splits (the paper's 42)."
)
@click.option(
    "--split-by",
    type=click.Choice(["micro-dataset", "class"]),
    default="micro-dataset",
    show_default=True,
    help="class: split by the micro-datasets' class nouns, so that no class (e.g. 'flag', drawn in two "
    "styles or cut in parts) has micro-datasets on both sides; counts then refer to classes.",
)
@click.option(
    "--ablation",
    type=click.Choice(["kinds", "n-train"]),
    default=None,
    help="kinds: paper Table 9 (DSiRe on A, B, BA, all); n-train: Fig. 5 (1, 2, 5, 10, 15 micro-datasets).",
)
@click.option(
    "--by", type=click.Choice(["rank", "step"]), default=None, help="Run the protocol at each rank / step."
)
@click.option(
    "--confusion",
    "confusion_png",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the confusion matrix of the last method (summed over repeats) as a PNG.",
)
@click.option(
    "--cross",
    default=None,
    metavar="FIT:TEST",
    help="Fit at one step, test at another (e.g. 1200:300): accuracy and applicability in and across.",
)
@click.option(
    "--held-out-size",
    type=int,
    default=None,
    help="Fit without this size and estimate it: DSiRe vs the continuous estimate and its interval.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a list of {method, config, mae, mape, accuracy} objects."
)
@click.option("--markdown", "as_markdown", is_flag=True, help="Print a markdown table.")
@output_option
def evaluate(
    source,
    config,
    methods,
    step,
    kinds,
    micro_datasets,
    repeats,
    n_train,
    seed,
    split_by,
    ablation,
    by,
    confusion_png,
    cross,
    held_out_size,
    as_json,
    as_markdown,
) -> None:
    """Evaluate dataset-size estimators on SOURCE with the paper's protocol.

    SOURCE is a LoRA-WiSE dataset folder or Hub repo id (`lora-wise build`, `import-upstream`),
    or a factory output folder (`lora-wise generate`). Split by micro-dataset, 15 train / 35 test
    of 50 (scaled when fewer), 10 repeats seeded 42; MAE, MAPE and accuracy as mean ± std.
    """
    from lora_wise import evaluation as ev
    from lora_wise.spectra.table import KINDS

    names, kind_list = _methods(methods), _csv(kinds)
    if kind_list is not None and (not kind_list or not set(kind_list) <= set(KINDS)):
        raise click.BadParameter(f"{kinds!r}: choose from {', '.join(KINDS)}", param_hint="--kinds")
    table = ev.load_table(source, config, micro_datasets)
    config_name = config or source.rstrip("/").rsplit("/", 1)[-1]
    common = {"repeats": repeats, "n_train": n_train, "seed": seed}
    if split_by == "class":
        common["groups"] = ev.class_groups(table)
    if cross or held_out_size is not None:
        if cross:
            try:
                fit_step, test_step = (int(x) for x in cross.split(":"))
            except ValueError:
                raise click.BadParameter(
                    "expected FIT:TEST steps, e.g. 1200:300", param_hint="--cross"
                ) from None
            report = ev.cross_condition(table, "step", fit_step, test_step, **common)
        else:
            report = ev.held_out_size(table, held_out_size, **common)
        if as_json:
            print_json(report)
        else:
            Console().print_json(data=report)
        return
    key = None
    if ablation == "kinds":
        results = ev.ablate_kinds(table, step=step, config=config_name, **common)
    elif ablation == "n-train":
        results = ev.ablate_n_train(table, step=step, config=config_name, repeats=repeats, seed=seed)
        key = "n_train_micro_datasets"
    elif by:
        results = ev.by_condition(table, by, names, kinds=kind_list, config=config_name, **common)
        key = by
    else:
        results = ev.evaluate(table, names, config=config_name, kinds=kind_list, step=step, **common)
    if confusion_png:
        written = ev.plot_confusion(results[-1], confusion_png)
        click.echo(
            f"confusion matrix: {written}" if written else "matplotlib is not installed: no confusion plot",
            err=True,
        )
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        _render(results, as_markdown, key)


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog="\b\nExamples:\n"
    "  lora-wise norms benchmark/mini-lora-wise --config medium-tiny_sd-r8\n"
    "  lora-wise norms benchmark/mini-lora-wise --config low-tiny_sd-r8 --step 300 --json\n\n"
    + EXIT_CODES_HELP,
)
@click.argument("source")
@click.option(
    "--config",
    default=None,
    help="Dataset config, e.g. medium-tiny_sd-r8 (needed when SOURCE holds several).",
)
@click.option("--step", type=int, default=None, help="Snapshot step (nearest stored; default: the last).")
@micro_datasets_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object.")
def norms(source, config, step, micro_datasets, as_json) -> None:
    """Does the LoRA's norm fall with dataset size? The paper's Fig. 2, as a table.

    For every size: the median ‖ΔW‖ over all layers, its quartiles, and the median ratio to the
    same micro-dataset's model at the smallest size (a concept's own norm level varies a lot, so
    the within-concept ratio is the fair view). Below: Spearman(size, ‖ΔW‖) inside each concept.
    SOURCE is read as by `lora-wise evaluate`.
    """
    from lora_wise import evaluation as ev

    trend = ev.norm_trend(ev.load_table(source, config, micro_datasets), step)
    if as_json:
        print_json(trend)
        return
    caption = (
        f"Spearman(size, ‖ΔW‖) inside a concept: median {trend['spearman_median']:.2f}, falling in "
        f"{trend['concepts_falling']} of {trend['concepts']} concepts. sd of log‖ΔW‖ between concepts "
        f"{trend['log_norm_sd_between_concepts']:.3f} vs range between sizes "
        f"{trend['log_norm_range_between_sizes']:.3f}"
        + _known(trend["concept_known_accuracy"])
        + (f". {trend['note']}" if trend["note"] else "")
    )
    table = Table(title=f"‖ΔW‖ by dataset size, step {trend['step']}", caption=caption)
    for h in ("size", "models", "median ‖ΔW‖", "quartiles", "× smallest size (same concept)"):
        table.add_column(h, justify="right")
    for r in trend["sizes"]:
        rel = r["relative_to_smallest"]
        table.add_row(
            str(r["size"]),
            str(r["models"]),
            f"{r['norm_median']:.4g}",
            f"{r['norm_q25']:.4g}-{r['norm_q75']:.4g}",
            "" if rel is None else f"{rel:.3f}",
        )
    Console().print(table)


def _known(accuracy: float | None) -> str:
    return (
        ""
        if accuracy is None
        else f". Sized by ‖ΔW‖ alone with the concept known: {accuracy * 100:.0f} % right"
    )
