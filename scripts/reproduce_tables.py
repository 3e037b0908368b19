"""Regenerate docs/results.md (tables + PNG plots) for the mini LoRA-WiSE, beside the paper's numbers.

    .venv/bin/python scripts/reproduce_tables.py runs/mini --config low-tiny_sd-r8 --config medium-tiny_sd-r8

SOURCE is anything ``lora_wise.evaluation.load_table`` reads. Every number is measured by the
protocol in ``lora_wise/evaluation.py``; the paper's SD1.5 numbers (arXiv 2406.19395) are
constants below, quoted for comparison only. The script writes what it measures, whatever it is,
plus diagnostics for explaining it (chance level, how strongly the norm falls with size inside a
concept, how much concepts differ): the prose conclusions are for a human to write underneath.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lora_wise import evaluation as ev
from lora_wise.errors import LoraWiseError
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


def config_section(name: str, table: SpectraTable, out: Path, repeats: int) -> list[str]:
    rng = range_of(table)
    lines = [
        f"## {name}",
        "",
        f"{len(table)} snapshots, {len(np.unique(table.micro_dataset))} micro-datasets, "
        f"sizes {np.unique(table.size).tolist()}, steps {np.unique(table.step).tolist()}, range {rng or '?'}",
        "",
    ]
    rank = int(np.unique(table.rank)[0])
    main = ev.evaluate(table, ("frobenius-nn", "dsire", "interval"), config=name, repeats=repeats)
    paper = dict(PAPER_TABLE2.get(rng, {}))
    lines += [
        f"### Frobenius-NN vs DSiRe (paper Table 2: SD1.5 rank 32; Table 4 DSiRe rank {rank}: "
        f"{_paper(PAPER_TABLE4.get((rng, rank)))})",
        "",
    ]
    lines += results_table(main, paper) + [
        "",
        "Notes: " + "; ".join(main[0].notes or ["paper protocol"]),
        f"Interval coverage (nominal 80 %): {main[2].extra['interval_coverage']}",
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
        "Continuous estimate with `base=ridge` (the default) and `base=votes` (choose the bank's with "
        "`lora-wise fit-bank --base`).",
        "",
        "| held-out size | base | DSiRe MAE | continuous MAE | median estimate | coverage (80 %) "
        "| median width |",
        "|---|---|---|---|---|---|---|",
    ]
    sizes = np.unique(ev.select_step(table, None)[0].size)
    for size in sizes[1:-1]:
        for base in ("ridge", "votes"):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("source")
    parser.add_argument(
        "--config", action="append", required=True, help="config(s) to report; repeat the flag"
    )
    parser.add_argument("--out", default="docs/results.md")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    out = Path(args.out)
    figures = out.parent / "results"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Results on the mini LoRA-WiSE",
        "",
        f"Generated by `scripts/reproduce_tables.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from "
        f"`{args.source}`; protocol: split by micro-dataset, 15/35 of 50 (scaled when fewer), "
        f"{args.repeats} repeats seeded 42, mean ± std. Paper numbers: SD1.5 (arXiv 2406.19395).",
        "",
    ]
    try:
        for config in args.config:
            lines += config_section(config, ev.load_table(args.source, config), figures, args.repeats)
    except LoraWiseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out} and {figures}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
