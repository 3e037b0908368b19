"""Regenerate docs/results.md (tables + PNG plots) for the mini LoRA-WiSE v1 and v2, beside the paper.

    .venv/bin/python scripts/reproduce_tables.py \
        --benchmark v1=benchmark/mini-lora-wise --benchmark v2=benchmark/mini-lora-wise-v2 \
        --config low-tiny_sd-r8 --config medium-tiny_sd-r8 \
        --config low-tiny_sd_v2-r8 --config medium-tiny_sd_v2-r8 \
        --config medium-tiny_sd_v2-r4 --config medium-tiny_sd_v2-r16 --split-by-class v2

Each ``--benchmark LABEL=SOURCE`` is anything ``lora_wise.evaluation.load_table`` reads; each
``--config`` is read from the first benchmark that holds it. A config no benchmark holds is an
error, unless a shipped grid (``GRIDS``) plans it: it is then reported as not built yet, and a
config short of its grid is reported with its real counts, marked partial. The old form
``reproduce_tables.py SOURCE --config ...`` still works (SOURCE labelled by its folder name).

Every number is measured by the protocol in ``lora_wise/evaluation.py``; the paper's SD1.5
numbers (arXiv 2406.19395) are constants below, quoted for comparison only. The script writes
what it measures, whatever it is, plus diagnostics for explaining it (chance level, how strongly
the norm falls with size inside a concept, how much concepts differ): the prose conclusions are
for a human to write under the page's ``## Reading`` heading, which regenerating keeps.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lora_wise import evaluation as ev
from lora_wise.errors import LoraWiseError
from lora_wise.estimation.estimators import SizeInterval
from lora_wise.estimation.fitted import BASES
from lora_wise.paper import RANGES
from lora_wise.spectra.table import SpectraTable

# The paper's SD1.5 numbers as (MAE, MAPE %, accuracy %).
PAPER_TABLE2 = {  # rank 32
    "low": {"frobenius-nn": (0.43, 15.14, 65.29), "dsire": (0.36, 11.36, 69.30)},
    "medium": {"frobenius-nn": (1.56, 4.16, 85.33), "dsire": (1.48, 3.97, 86.10)},
    "high": {"frobenius-nn": (68.62, 9.25, 86.51), "dsire": (41.77, 5.96, 91.90)},
}
PAPER_TABLE4 = {  # DSiRe by rank
    ("low", 8): (0.43, 14.8, 66.0),
    ("low", 16): (0.42, 12.4, 67.7),
    ("low", 32): (0.36, 11.36, 69.30),
    ("medium", 16): (1.67, 4.32, 84.04),
    ("medium", 32): (1.48, 3.97, 86.10),
    ("medium", 64): (1.41, 3.90, 86.58),
}
PAPER_TABLE5 = {  # medium range, rank 32
    "nn-full-model": (7.33, 33.37, 48.61),
    "ridge": (8.05, 38.95, 37.09),
    "gda": (2.89, 7.87, 74.14),
    "average-vote": (3.57, 19.05, 64.62),
    "dsire": (1.48, 3.97, 86.10),
}
PAPER_TABLE8 = {  # medium range, rank 16, by snapshot step
    300: (2.43, 6.82, 77.90),
    400: (2.39, 6.72, 78.38),
    500: (2.05, 5.55, 81.33),
    600: (1.86, 4.59, 82.76),
    700: (1.89, 5.13, 82.00),
    800: (1.71, 4.59, 83.67),
    900: (1.60, 4.21, 85.14),
    1000: (1.62, 4.69, 85.10),
    1100: (1.58, 4.50, 84.48),
    1200: (1.48, 3.97, 86.10),
    1300: (1.46, 3.84, 86.29),
    1400: (1.40, 3.73, 86.76),
}
PAPER_TABLE9 = {
    "a": (1.9, 5.63, 82.52),
    "b": (1.57, 4.07, 84.90),
    "ba": (1.61, 4.22, 85.00),
    "a+b+ba": (1.48, 3.97, 86.10),
}

#: The headline methods, in the order config_section reads them: the paper's two and our continuous estimate.
HEADLINE = ("frobenius-nn", "dsire", "interval")
NOMINAL_COVERAGE = SizeInterval().coverage * 100
#: The shipped grids the mini benchmarks are built from: what a complete config holds.
GRIDS = ("mini", "mini-v2", "mini-v2-ranks", "mini-v2-flip", "mini-v2-dp10")
#: Where the human-written part of the page starts; from this line on, regenerating keeps the old file's.
READING = "## Reading"
READING_PLACEHOLDER = (
    "<!-- Written by a person, not by the script: what the figures above mean. "
    "scripts/reproduce_tables.py keeps this section (from its heading to the end of the file) "
    "when it regenerates the page. -->"
)


def range_of(table: SpectraTable) -> str | None:
    sizes = set(np.unique(table.size).tolist())
    return next((name for name, values in RANGES.items() if sizes <= set(values)), None)


def _pm(pair) -> str:
    return f"{pair[0]:.2f} ± {pair[1]:.2f}"


def _paper(triple) -> str:
    return " / ".join(f"{x:g}" for x in triple) if triple else "—"


def results_table(rows, paper: dict, label=lambda r: r.method, head="Method") -> list[str]:
    out = [f"| {head} | MAE ↓ | MAPE (%) ↓ | Acc (%) ↑ | paper MAE / MAPE / Acc |", "|---|---|---|---|---|"]
    for r in rows:
        key = label(r)
        out.append(f"| {key} | {_pm(r.mae)} | {_pm(r.mape)} | {_pm(r.accuracy)} | {_paper(paper.get(key))} |")
    return out


def diagnostics(table: SpectraTable) -> list[str]:
    """What explains the numbers: chance, the size effect inside concepts, the concept confound."""
    t = ev.norm_trend(table)
    rel = ", ".join(
        f"{r['size']}: {r['relative_to_smallest']:.3f}" for r in t["sizes"] if r["relative_to_smallest"]
    )
    lines = [
        f"- chance accuracy: {100 / len(t['sizes']):.1f} % ({len(t['sizes'])} sizes)",
        f"- Spearman(size, ‖ΔW‖) inside each concept: median {t['spearman_median']:.2f} "
        f"over {t['concepts']} concepts "
        f"({t['concepts_falling'] / max(t['concepts'], 1) * 100:.0f} % negative)",
        f"- ‖ΔW‖ relative to the same concept at the smallest size (median): {rel}",
        f"- spread of log‖ΔW‖ between concepts (sd of concept means): "
        f"{t['log_norm_sd_between_concepts']:.3f}; "
        f"between sizes (range of size means): {t['log_norm_range_between_sizes']:.3f}",
    ]
    if t["concept_known_accuracy"] is not None:
        lines.append(
            f"- if the concept were known (its smallest-size LoRA as the yardstick), ‖ΔW‖ alone would size "
            f"{t['concept_known_accuracy'] * 100:.1f} % of the larger-size LoRAs right "
            f"(chance {100 / (len(t['sizes']) - 1):.1f} %)"
        )
    return lines


#: Concept families of the offline pool (10 concepts each), each evaluated on its own.
FAMILIES = {
    "photos": "pool:photo-*",
    **{f"digits, {c}": f"pool:digit-?-{c}" for c in ("ink", "moss", "rose", "sun")},
}


def families(table: SpectraTable, repeats: int) -> list[str]:
    """Is one kind of concept easier to size than another? Each family alone, half its concepts training."""
    rows = []
    for label, pattern in FAMILIES.items():
        try:
            sub = ev.select_micro_datasets(table, [pattern])
        except LoraWiseError:
            continue  # not a table of the offline pool
        n = len(np.unique(sub.micro_dataset))
        fro, dsire = ev.evaluate(sub, ("frobenius-nn", "dsire"), n_train=max(1, n // 2), repeats=repeats)
        t = ev.norm_trend(sub)
        known = t["concept_known_accuracy"]
        rows.append(
            f"| {label} (`{pattern}`) | {n} | {_pm(fro.accuracy)} | {_pm(dsire.accuracy)} | "
            f"{t['sizes'][-1]['relative_to_smallest'] or float('nan'):.2f} | "
            f"{t['log_norm_sd_between_concepts']:.3f} | {'-' if known is None else f'{known * 100:.0f} %'} |"
        )
    if not rows:
        return []
    return [
        "### Concept families (each evaluated alone, half its concepts for training)",
        "",
        "| family | concepts | Frobenius-NN acc (%) | DSiRe acc (%) | ‖ΔW‖ at the largest size ÷ smallest | "
        "sd of log‖ΔW‖ between concepts | sized by ‖ΔW‖, concept known |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def config_header(name: str, table: SpectraTable, about: list[str]) -> list[str]:
    """The section's heading, the table's real counts and where it comes from (``about``)."""
    return [
        f"## {name}",
        "",
        f"{len(table)} snapshots, {len(np.unique(table.micro_dataset))} micro-datasets, "
        f"sizes {np.unique(table.size).tolist()}, steps {np.unique(table.step).tolist()}, "
        f"range {range_of(table) or '?'}",
        "",
        *about,
    ]


def config_section(
    name: str, table: SpectraTable, out: Path, repeats: int, main: list[ev.MethodResult], about: list[str]
) -> list[str]:
    """Every table of one config; ``main``: its headline results (``HEADLINE``), measured once
    for this section and the summary."""
    rng = range_of(table)
    lines = config_header(name, table, about)
    rank = int(np.unique(table.rank)[0])
    paper = dict(PAPER_TABLE2.get(rng, {}))
    lines += [
        f"### Frobenius-NN vs DSiRe (paper Table 2: SD1.5 rank 32; Table 4 DSiRe rank {rank}: "
        f"{_paper(PAPER_TABLE4.get((rng, rank)))})",
        "",
    ]
    lines += results_table(main, paper) + [
        "",
        "Notes: " + "; ".join(main[0].notes or ["paper protocol"]),
        f"Interval coverage (nominal {NOMINAL_COVERAGE:g} %): {main[2].extra['interval_coverage']}",
        "",
    ]
    lines += ["### Choice of classifier (paper Table 5, medium range)", ""]
    lines += results_table(
        ev.evaluate(table, ev.ALL_METHODS[:-1], config=name, repeats=repeats), PAPER_TABLE5
    ) + [""]
    lines += ["### Matrix kinds (paper Table 9)", ""]
    lines += results_table(
        ev.ablate_kinds(table, repeats=repeats), PAPER_TABLE9, label=lambda r: r.method[len("dsire[") : -1]
    ) + [""]
    if len(np.unique(table.step)) > 1:
        rows = ev.by_condition(table, "step", ("dsire",), repeats=repeats)
        lines += ["### Training steps (paper Table 8: medium range, rank 16)", ""]
        lines += results_table(rows, PAPER_TABLE8, label=lambda r: r.extra["step"], head="Step") + [""]
    curve = ev.ablate_n_train(table, repeats=repeats)
    lines += ["### Training micro-datasets (paper Fig. 5: about 80 % from one)", ""]
    lines += results_table(
        curve, {}, label=lambda r: r.extra["n_train_micro_datasets"], head="Train micro-datasets"
    )
    png = ev.plot_confusion(main[1], out / f"confusion-{name}.png")
    lines += [
        "",
        f"![DSiRe confusion, {name}]({png.relative_to(out.parent)})" if png else "(no matplotlib: no plot)",
        "",
    ]
    lines += (
        beyond(table, repeats)
        + families(table, repeats)
        + ["### Diagnostics", ""]
        + diagnostics(table)
        + [""]
    )
    return lines


def beyond(table: SpectraTable, repeats: int) -> list[str]:
    lines = [
        "### Sizes never seen (fit without one size, estimate it)",
        "",
        "Continuous estimate with `base=pooled` (the default), `base=ridge` and `base=votes` (choose the "
        "bank's with `lora-wise fit-bank --base`).",
        "",
        "| held-out size | base | DSiRe MAE | continuous MAE | median estimate | coverage (80 %) "
        "| median width |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = np.unique(ev.select_step(table, None)[0].size)
    for size in sizes[1:-1]:
        for base in BASES:
            r = ev.held_out_size(table, int(size), repeats=repeats, base=base)
            lines.append(
                f"| {size} | {base} | {r['dsire_mae']['mean']:.2f} | {r['interval_mae']['mean']:.2f} | "
                f"{r['interval_median']['mean']:.1f} | {r['coverage']['mean']:.0f} % | "
                f"{r['width']['mean']:.1f} |"
            )
    steps = np.unique(table.step)
    if len(steps) > 1:
        fit, test = ev.default_step(table), int(steps.min())
        r = ev.cross_condition(table, "step", fit, test, repeats=repeats)
        lines += [
            "",
            f"### Cross-condition: fit at step {fit}, test at step {test}",
            "",
            "| test at | Acc (%) | mean applicability |",
            "|---|---|---|",
            f"| step {fit} (in) | {_pm((r['in']['accuracy']['mean'], r['in']['accuracy']['std']))} | "
            f"{r['in']['applicability']['mean']:.3f} |",
            f"| step {test} (cross) | "
            f"{_pm((r['cross']['accuracy']['mean'], r['cross']['accuracy']['std']))} | "
            f"{r['cross']['applicability']['mean']:.3f} |",
        ]
    return lines + [""]


# --------------------------------------------------------------------------- benchmarks and configs


@dataclass(frozen=True)
class Plan:
    """What a shipped grid trains for one config."""

    grid: str
    micro_datasets: int
    models: int


@functools.cache
def plans() -> dict[str, Plan]:
    """Config -> its plan in ``GRIDS`` (expanding a grid reads names only, no images)."""
    from lora_wise.factory.grid import load_grid

    out: dict[str, Plan] = {}
    for grid in GRIDS:
        jobs: dict[str, list] = {}
        for job in load_grid(grid):
            jobs.setdefault(job.config_name, []).append(job)
        out |= {c: Plan(grid, len({j.micro_dataset for j in js}), len(js)) for c, js in jobs.items()}
    return out


@dataclass
class Config:
    """One requested config: the benchmark that holds it and its table, or why none does."""

    name: str
    benchmark: str = ""
    source: str = ""
    table: SpectraTable | None = None
    missing: str = ""  # the loaders' reasons, when no benchmark holds it

    def partial(self) -> str | None:
        """'partial: N of 50 micro-datasets (...)' while a built config is short of its grid."""
        plan = plans().get(self.name)
        if plan is None or self.table is None:
            return None
        models = len(set(zip(self.table.micro_dataset.tolist(), self.table.size.tolist(), strict=True)))
        if models >= plan.models:
            return None
        return (
            f"partial: {len(np.unique(self.table.micro_dataset))} of {plan.micro_datasets} micro-datasets "
            f"({models} of {plan.models} models of grid `{plan.grid}`)"
        )

    def about(self) -> list[str]:
        partial = self.partial()
        return [f"From {self.benchmark} (`{self.source}`).", *([f"**{partial}**"] if partial else []), ""]


def find_config(name: str, benchmarks: dict[str, str]) -> Config:
    """The first benchmark that holds ``name``. None holding it is an error unless a shipped grid
    plans it: a benchmark still being trained lands in pieces, and its page says what is missing."""
    reasons = []
    for label, source in benchmarks.items():
        try:
            return Config(name, label, source, ev.load_table(source, name))
        except LoraWiseError as exc:
            reasons.append(f"{label}: {exc}")
    if name not in plans():
        raise LoraWiseError(f"config {name!r} is in none of the benchmarks ({'; '.join(reasons)})")
    return Config(name, missing="; ".join(reasons))


@dataclass
class Measured:
    """A config's section and, when it could be evaluated, its headline results for the summary."""

    config: Config
    section: list[str]
    main: list[ev.MethodResult] | None = None
    by_class: list[ev.MethodResult] | str | None = None  # split by class, or why not; None: not asked


def measure(config: Config, figures: Path, repeats: int, by_class: bool) -> Measured:
    name, table = config.name, config.table
    if table is None:
        plan = plans()[name]
        why = (
            f"Not built yet: planned by grid `{plan.grid}` ({plan.micro_datasets} micro-datasets, "
            f"{plan.models} models); no benchmark holds it ({config.missing})."
        )
        return Measured(config, [f"## {name}", "", why, ""])
    try:
        main = ev.evaluate(table, HEADLINE, config=name, repeats=repeats)
        section = config_section(name, table, figures, repeats, main, config.about())
    except LoraWiseError as exc:  # a config built in pieces may not hold enough for the protocol yet
        return Measured(config, config_header(name, table, config.about()) + [f"Cannot evaluate: {exc}", ""])
    return Measured(config, section, main, class_split(table, name, repeats) if by_class else None)


def class_split(table: SpectraTable, name: str, repeats: int) -> list[ev.MethodResult] | str:
    """The headline methods under the protocol split by class noun, or why it cannot be run."""
    try:
        return ev.evaluate(table, HEADLINE, config=name, repeats=repeats, groups=ev.class_groups(table))
    except LoraWiseError as exc:  # micro-datasets whose names resolve to no known concept, say
        return str(exc)


# --------------------------------------------------------------------------- the summary


def _acc_mae(r: ev.MethodResult) -> str:
    return f"{_pm(r.accuracy)} / {r.mae[0]:.2f}"


def _paper_acc_mae(triple) -> str:
    return f"{triple[2]:g} / {triple[0]:g}" if triple else "—"


def summary_row(config: Config, results: list[ev.MethodResult], split: str) -> str:
    table, _ = ev.select_step(config.table, None)
    rng, rank = range_of(table), int(np.unique(table.rank)[0])
    by = {r.method: r for r in results}
    paper = PAPER_TABLE2.get(rng, {})
    cover = by["interval"].extra["interval_coverage"]
    notes = [n for n in (config.partial(), *by["dsire"].notes) if n]
    cells = [
        rng or "?",
        config.benchmark,
        f"`{config.name}`",
        split,
        str(len(np.unique(table.micro_dataset))),
        f"{100 / len(np.unique(table.size)):.1f}",
        *(_acc_mae(by[m]) for m in ("dsire", "frobenius-nn", "interval")),
        f"{cover['mean']:.2f} ± {cover['std']:.2f}",
        _paper_acc_mae(paper.get("dsire")),
        _paper_acc_mae(paper.get("frobenius-nn")),
        _paper_acc_mae(PAPER_TABLE4.get((rng, rank))),
        "; ".join(notes),
    ]
    return "| " + " | ".join(cells) + " |"


def summary(measured: list[Measured], benchmarks: list[str]) -> list[str]:
    """One row per config (range × benchmark, the rank arms too when asked for), ranges first;
    a second row split by class where asked for."""
    ranges = list(RANGES)

    def order(m: Measured):
        rng = range_of(m.config.table) if m.main else None
        bench = benchmarks.index(m.config.benchmark) if m.config.benchmark else len(benchmarks)
        return (ranges.index(rng) if rng in ranges else len(ranges), bench)

    rows, notes = [], []
    for m in sorted(measured, key=order):
        c = m.config
        if m.main is None:
            notes.append(
                f"- `{c.name}`: {'not built yet' if c.table is None else 'cannot evaluate'} (its section)"
            )
            continue
        rows.append(summary_row(c, m.main, "micro-dataset"))
        if isinstance(m.by_class, str):
            notes.append(f"- {c.benchmark} `{c.name}`: no row split by class: {m.by_class}")
        elif m.by_class:
            rows.append(summary_row(c, m.by_class, "class"))
    return [
        "## Summary",
        "",
        "At the evaluated step; accuracy (%) as mean ± std over repeats / MAE (mean). `interval` is our "
        "continuous estimate (accuracy of its nearest known size); its coverage is that of its nominal "
        f"{NOMINAL_COVERAGE:g} % interval. Paper: SD1.5, rank 32 (Table 2), and DSiRe at the config's "
        "rank (Table 4). Split by class: no class noun on both sides of a split (one subject in two "
        "styles, or cut in parts, would otherwise help itself across it).",
        "",
        "| range | benchmark | config | split by | micro-datasets | chance acc (%) | DSiRe acc / MAE "
        "| Frobenius-NN acc / MAE | interval acc / MAE | interval coverage (%) | paper DSiRe acc / MAE "
        "| paper Frobenius-NN acc / MAE | paper DSiRe at this rank | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *notes,
        *([""] if notes else []),
    ]


# --------------------------------------------------------------------------- across ranks and defences


RANKED = re.compile(r"(?P<head>.+)-r(?P<rank>\d+)(?P<tail>-.+)?")
DEFENDED = re.compile(r"(?P<head>.+-r\d+)(?P<defence>(?:-flip)?(?:-dp[0-9a-z]+)?)")


def by_rank(name: str) -> tuple[str, int] | None:
    """``medium-tiny_sd_v2-r8`` -> (``medium-tiny_sd_v2-r*``, 8)."""
    m = RANKED.fullmatch(name)
    return (f"{m['head']}-r*{m['tail'] or ''}", int(m["rank"])) if m else None


def by_defence(name: str) -> tuple[str, str] | None:
    """``medium-tiny_sd_v2-r8-flip`` -> (``medium-tiny_sd_v2-r8``, ``flip``); undefended: ``none``."""
    m = DEFENDED.fullmatch(name)
    return (m["head"], m["defence"].lstrip("-") or "none") if m else None


#: The conditions a family of configs may differ in: the axis' name -> config name -> (family, value).
AXES = {"rank": by_rank, "defence": by_defence}


def condition_families(configs: list[Config], axis: str) -> dict[str, dict[str, Any]]:
    """Requested configs that differ only along ``axis``: family -> config -> value. Ranks: every config
    of a family together, two or more. Defences: each defended config with its undefended twin, so that
    each pair is compared on the concepts those two share (defence arms may cover fewer concepts)."""
    out: dict[str, dict[str, Any]] = {}
    for c in configs:
        if parsed := AXES[axis](c.name):
            out.setdefault(parsed[0], {})[c.name] = parsed[1]
    if axis == "rank":
        return {family: values for family, values in out.items() if len(values) > 1}
    return {
        name: {head: "none", name: value}
        for head, values in out.items()
        if head in values
        for name, value in values.items()
        if value != "none"
    }


def shared_union(tables: list[SpectraTable]) -> SpectraTable:
    """The tables pooled (narrower ranks padded to the widest) on the micro-datasets all of them
    hold, at the evaluated step."""
    shared = sorted(set.intersection(*(set(t.micro_dataset.tolist()) for t in tables)))
    if not shared:
        raise LoraWiseError("the configs share no micro-dataset")
    width, layers = max(t.width for t in tables), tables[0].layers
    parts = [t.subset(np.isin(t.micro_dataset, shared)).align(layers).widen(width) for t in tables]
    return ev.select_step(SpectraTable.concat(parts), None)[0]


CROSS_ABOUT = {
    "rank": "DSiRe fitted at one rank, tested on held-out concepts at every other (paper Table 4's "
    "question turned around: does a bank of one rank answer for another, and does applicability say so?).",
    "defence": "DSiRe fitted on one training recipe, tested on held-out concepts of each. Fitted and "
    "tested on defended LoRAs (Acc in, fit = the defence) is the paper's Table 6 (SD1.5, medium range: "
    "horizontal flip drops DSiRe from 86.1 % to 59.7 %; the paper has no DP-SGD arm); fitted on "
    "undefended references and tested on defended LoRAs (fit none, Acc cross) is what an auditor's "
    "bank meets.",
}


def cross_section(axis: str, family: str, values: dict[str, Any], configs: list[Config], repeats: int):
    """The ``axis`` family's table: fitted at each value, tested at each other, in and across."""
    lines = [f"## Cross-{axis}: `{family}`", "", CROSS_ABOUT[axis], ""]
    members = [c for c in configs if c.name in values]
    built = [c for c in members if c.table is not None]
    missing = [f"`{c.name}`" for c in members if c.table is None]
    if len(built) < 2:
        return lines + [f"Not built yet: {', '.join(missing)} (needs two {axis} values built).", ""]
    try:
        table = shared_union([c.table for c in built])
        labels = np.array([values[m.split("/", 1)[0]] for m in table.model_id.tolist()])
        found = sorted(set(labels.tolist()), key=str)
        reports = [
            ev.cross_condition(table, axis, f, t, repeats=repeats, labels=labels)
            for f in found
            for t in found
            if f != t
        ]
    except LoraWiseError as exc:
        return lines + [f"Cannot evaluate: {exc}", ""]
    names = ", ".join(f"`{c.name}`" for c in built)
    lines += [
        f"{names} on the {len(np.unique(table.micro_dataset))} micro-datasets they share, "
        f"step {int(table.step[0])}; {'; '.join(reports[0]['notes'] or ['paper protocol'])}.",
        *([f"Not built yet: {', '.join(missing)}."] if missing else []),
        "",
    ]
    return lines + cross_table(axis, reports) + [""]


def cross_table(axis: str, reports: list[dict]) -> list[str]:
    lines = [
        f"| fit {axis} | test {axis} | Acc in (%) | Acc cross (%) | MAE in | MAE cross | applicability in "
        "| applicability cross |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        cell = {k: {m: _pm((v["mean"], v["std"])) for m, v in r[k].items()} for k in ("in", "cross")}
        lines.append(
            f"| {r['fit']} | {r['test']} | {cell['in']['accuracy']} | {cell['cross']['accuracy']} | "
            f"{cell['in']['mae']} | {cell['cross']['mae']} | {r['in']['applicability']['mean']:.3f} | "
            f"{r['cross']['applicability']['mean']:.3f} |"
        )
    return lines


# --------------------------------------------------------------------------- the page


def kept_reading(out: Path) -> list[str]:
    """The human-written end of the page (its ``## Reading`` heading on), or a fresh, empty one."""
    lines = out.read_text().splitlines() if out.is_file() else []
    at = next((i for i, line in enumerate(lines) if line.rstrip() == READING), None)
    return lines[at:] if at is not None else [READING, "", READING_PLACEHOLDER]


def _benchmark(text: str) -> tuple[str, str]:
    """``LABEL=SOURCE``; a bare SOURCE is labelled by its last path component."""
    label, sep, source = text.partition("=")
    if not sep:
        label, source = Path(text.rstrip("/")).name or text, text
    if not label or not source:
        raise argparse.ArgumentTypeError(f"expected LABEL=SOURCE, got {text!r}")
    return label, source


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source", nargs="?", type=_benchmark, help="one benchmark (the old form)")
    parser.add_argument(
        "--benchmark",
        action="append",
        type=_benchmark,
        default=[],
        metavar="LABEL=SOURCE",
        help="a benchmark to read configs from; repeat the flag",
    )
    parser.add_argument(
        "--config", action="append", required=True, help="config(s) to report; repeat the flag"
    )
    parser.add_argument(
        "--split-by-class",
        action="append",
        default=[],
        metavar="LABEL",
        help="benchmark(s) whose summary also gets rows split by class; repeat the flag",
    )
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    args.benchmarks = ([args.source] if args.source else []) + args.benchmark
    labels = [label for label, _ in args.benchmarks]
    if not labels:
        parser.error("give a benchmark: SOURCE, or --benchmark LABEL=SOURCE")
    if len(set(labels)) < len(labels):
        parser.error(f"benchmark labels must differ: {', '.join(labels)}")
    if unknown := sorted(set(args.split_by_class) - set(labels)):
        parser.error(f"--split-by-class names no benchmark: {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    benchmarks = dict(args.benchmarks)
    out = Path(args.out)
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    try:
        configs = [find_config(name, benchmarks) for name in args.config]
        measured = [measure(c, figures, args.repeats, c.benchmark in args.split_by_class) for c in configs]
    except LoraWiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    sources = ", ".join(f"{label} = `{source}`" for label, source in benchmarks.items())
    lines = [
        "# Results on the mini LoRA-WiSE",
        "",
        f"Generated by `scripts/reproduce_tables.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        f"{sources}; protocol: split by micro-dataset, 15/35 of 50 (scaled when fewer), "
        f"{args.repeats} repeats seeded 42, mean ± std. Paper numbers: SD1.5 (arXiv 2406.19395).",
        "",
        *summary(measured, list(benchmarks)),
        *(line for m in measured for line in m.section),
        *(
            line
            for axis in AXES
            for family, values in condition_families(configs, axis).items()
            for line in cross_section(axis, family, values, configs, args.repeats)
        ),
    ]
    out.write_text("\n".join(lines + kept_reading(out)) + "\n")
    print(f"wrote {out} and {figures}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
