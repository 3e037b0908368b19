"""Regenerate the measured part of docs/leak.md from leak runs' evaluation.json and attack headers.

    python scripts/leak_report.py runs/leak-pilot --doc docs/leak.md      # one run
    python scripts/leak_report.py runs/leak-v2/* --doc docs/leak.md       # several: by defence, over seeds

Replaces the text between the ``<!-- leak-report:begin -->`` and ``<!-- leak-report:end -->`` markers
of the document; the rest of the document is left as written. One run: its identification table, the
attack's training summary, the loss diagnostic, the utility and the verdict against the issue's targets.
Several runs: grouped by their recipe's defence (and whether the victims trained with their own
seeds), each arm's top-1 and top-5 averaged over the group's seeds with a Student-t 95 % interval over
the per-seed top-1 (one seed: that run's Wilson interval) and the seeds' permutation p both as their
largest and combined by Fisher's method, a table of each seed's own figures, then a table of leak
against utility per group, its plot (``--plot``, by default ``leak/defences.png`` beside the document)
and the verdict for the undefended runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from lora_wise.factory.defences import parse_defence
from lora_wise.leak.encoder import load_encoder
from lora_wise.leak.identities import VENDORS
from lora_wise.leak.run import ATTACKS, ORACLE
from lora_wise.leak.victims import Recipe

BEGIN, END = "<!-- leak-report:begin -->", "<!-- leak-report:end -->"
DISPLAY = {"noto": "Noto", "twemoji": "Twemoji", "openmoji": "OpenMoji"}
SHARED = ("seed", "defence", "victim_seeds")  # the recipe fields runs of one report may differ in


class Arm(NamedTuple):
    """One arm over a group of runs (one run: its own values)."""

    top1: float  # mean over the seeds
    ci: tuple[float, float]  # t over the seeds' top-1; one seed: the run's Wilson interval
    top5: float
    p: float  # the largest permutation p among the seeds: every seed must reject
    p_fisher: float  # the seeds' p combined by Fisher's method: the null of no leak in any seed
    null_mean: float
    seeds: int


def t_interval(values: list[float]) -> tuple[float, float]:
    """Student-t 95 % interval of the mean of ``values`` (one value: that value, no width)."""
    from scipy.stats import t

    m, half = float(np.mean(values)), 0.0
    if len(values) > 1:
        half = float(t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))
    return m - half, m + half


def summarise(evs: list[dict]) -> dict[str, Arm]:
    return {arm: _arm([ev["arms"][arm] for ev in evs]) for arm in evs[0]["arms"]}


def _arm(rs: list[dict]) -> Arm:
    from scipy.stats import combine_pvalues

    top1, ps = [r["top1"] for r in rs], [r["p_permutation"] for r in rs]
    lo, hi = rs[0]["top1_ci"] if len(rs) == 1 else t_interval(top1)
    return Arm(
        float(np.mean(top1)),
        (max(0.0, lo), min(1.0, hi)),
        float(np.mean([r["top5"] for r in rs])),
        max(ps),
        ps[0] if len(ps) == 1 else float(combine_pvalues(ps, method="fisher").pvalue),
        float(np.mean([r["null_mean_top1"] for r in rs])),
        len(rs),
    )


def arm_table(summary: dict[str, Arm]) -> list[str]:
    s = next(iter(summary.values())).seeds
    if s == 1:
        cols = "top-1 | 95 % (Wilson) | top-5 | permutation p"
    else:
        cols = (
            f"top-1 (mean of {s} seeds) | 95 % (t, {s} seeds) | top-5 (mean) | permutation p (largest) "
            "| p, seeds combined (Fisher)"
        )
    lines = [f"| arm | {cols} | null mean top-1 |", "|---" * (6 + (s > 1)) + "|"]
    for arm, a in summary.items():
        fisher = f" {_p(a.p_fisher)} |" if s > 1 else ""
        lines.append(
            f"| {arm} | {a.top1:.2f} | {a.ci[0]:.2f}-{a.ci[1]:.2f} | {a.top5:.2f} | {a.p:.4f} |{fisher} "
            f"{a.null_mean:.2f} |"
        )
    return lines


def _p(p: float) -> str:
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"  # Fisher's combination of small p gets tinier still


def verdict(summary: dict[str, Arm], n: int) -> list[str]:
    a = summary["attack"]
    beaten = [k for k, r in summary.items() if k not in ("attack", ORACLE) and a.top1 <= r.top1]
    above = "yes" if not beaten else "NO, not above: " + ", ".join(beaten)
    p = f"p = {a.p:.4f}"
    if a.seeds > 1:  # the rule: every seed rejects; Fisher's tests the weaker null of no leak in any seed
        p = f"largest p of {a.seeds} seeds = {a.p:.4f}; combined by Fisher's method {_p(a.p_fisher)}"
    return [
        "",
        "Against the issue's targets:",
        "",
        f"- top-1 ≥ 5× chance ({5 / n:.2f}): {'met' if a.top1 >= 5 / n else 'NOT met'} "
        f"(attack {a.top1:.2f} = {a.top1 * n:.1f}× chance);",
        f"- permutation null rejected at p < 0.01 in every seed: {'yes' if a.p < 0.01 else 'NO'} ({p});",
        f"- above every baseline but the oracle: {above}.",
    ]


def utility_line(evs: list[dict]) -> str:
    if any("utility" not in ev for ev in evs):
        return "Utility: not measured (evaluated before it was; rerun `lora-wise leak evaluate`)."
    u = [ev["utility"] for ev in evs]
    mean = {k: float(np.mean([x[k] for x in u])) for k in ("victim_loss", "base_loss", "gain")}
    fidelity = float(np.mean([x["fidelity"]["top1"] for x in u]))
    over = "" if len(u) == 1 else f", means over {len(u)} seeds"
    return (
        f"Utility{over}: each victim's LoRA denoises its own {u[0]['views']} real views under its true "
        f"prompt at ε-MSE {mean['victim_loss']:.4f}, the base model the same views (same noise, "
        f"{u[0]['timesteps']} timesteps) at {mean['base_loss']:.4f}: gain 1 − victim/base "
        f"{mean['gain']:.3f} (mean over the victims); fidelity (the oracle's top-1) {fidelity:.2f}."
    )


def render(root: Path) -> str:
    """One run, as measured."""
    ev = json.loads((root / "evaluation.json").read_text())
    rec = ev["recipe"]
    lines = [
        f"Run: {ev['victims']} victims, {ev['shadows']} shadows, {_recipe_text(rec)}, seed {rec['seed']}"
        + (f", defence `{rec['defence']}`" if rec.get("defence", "none") != "none" else "")
        + (", each victim with its own seed" if rec.get("victim_seeds") else "")
        + f"; {_kn_text(ev)}.",
        "",
        *arm_table(summarise([ev])),
    ]
    v = ev["embedding_validation"]
    gallery, query = (DISPLAY[x] for x in rec.get("vendors") or VENDORS)  # runs before the choice: v1's
    lines += [
        "",
        f"The embedding on these victims' real views ({query} view vs {gallery}-derived views, "
        f"N = {ev['n']}): "
        f"top-1 {v['top1']:.2f}, top-5 {v['top5']:.2f} over {v['trials']} trials (chance {v['chance']:.2f}).",
        "",
    ]
    for name, file in ATTACKS.items():
        if (root / file).is_file():
            t = load_encoder(root / file)[1]["training"]
            lines.append(
                f"- `{name}`: {t['iterations']} iterations × batch {t['batch']} on {t['shadows']} shadows "
                f"({t['pairs']} snapshots), {t['seconds']:.0f} s; final denoising loss "
                f"{t['final_denoise_loss']:.4f}, prompt MSE {t['final_prompt_mse']:.4f}."
            )
    if spread := ev.get("conditioning_spread"):  # runs evaluated before it was measured lack it
        lines.append(
            f"- The attack's conditioning varies across the victims by {spread['attack']:.4f} (std per "
            f"entry, mean), their true prompts' by {spread['true prompt']:.4f}."
        )
    lines += _loss_lines(root)
    lines += ["", utility_line([ev])]
    return "\n".join(lines + verdict(summarise([ev]), ev["n"]))


def _recipe_text(rec: dict) -> str:
    return (
        f"backbone `{rec['backbone']}`, rank {rec['rank']}, {rec['steps']} steps, lr {rec['learning_rate']:g}"
    )


def _kn_text(ev: dict) -> str:
    g = ev.get("guidance", 1.0)  # runs evaluated before guidance existed had none
    cfg = f", classifier-free guidance {g:g}" if g != 1.0 else ""
    n = ev["n"]
    return f"K = {ev['k']} images per victim and arm{cfg}, N = {n} candidates (chance {1 / n:.2f})"


def _loss_lines(root: Path) -> list[str]:
    path = root / "loss_identification.json"
    if not path.is_file():
        return []
    li = json.loads(path.read_text())
    lines = [
        "",
        f"Diagnostic (`--loss-diagnostic`, not an attack): each victim's UNet picks the candidate whose "
        f"real views it denoises best ({li['victims']} victims, {li['timesteps']} timesteps, fixed noise).",
        "",
        "| conditioning | top-1, absolute loss | p | top-1, loss relative to the candidate's mean | p |",
        "|---|---|---|---|---|",
    ]
    for arm, r in li["arms"].items():
        a, rel = r["absolute"], r["relative"]
        lines.append(
            f"| {arm} | {a['top1']:.2f} ({a['top1_ci'][0]:.2f}-{a['top1_ci'][1]:.2f}) | "
            f"{a['p_permutation']:.4f} | {rel['top1']:.2f} ({rel['top1_ci'][0]:.2f}-{rel['top1_ci'][1]:.2f}) "
            f"| {rel['p_permutation']:.4f} |"
        )
    return lines


# ---- several runs: grouped by defence (and victim seeding), aggregated over seeds

UNDEFENDED = ("none", False)  # the group the verdict is for: no defence, the run's seed for every LoRA


def group_by_defence(roots: list[Path]) -> dict[tuple[str, bool], list[dict]]:
    """(defence, own victim seeds) -> its runs' evaluation.json (each with ``root``): none first, then
    flip, then by ε down, each before its own-victim-seeds runs."""
    groups: dict[tuple[str, bool], list[dict]] = {}
    for root in roots:
        ev = json.loads((root / "evaluation.json").read_text()) | {"root": str(root)}
        recipe = Recipe(**ev["recipe"])  # the recipe's own defaults for fields an older run lacks
        key = (recipe.defence, recipe.victim_seeds)
        groups.setdefault(key, []).append(ev)
    _check_comparable([ev for evs in groups.values() for ev in evs])
    for key, evs in groups.items():
        seeds = [ev["recipe"]["seed"] for ev in evs]
        if len(set(seeds)) < len(seeds):
            raise ValueError(f"{label(key, md=False)}: seed {max(seeds, key=seeds.count)} twice")
        evs.sort(key=lambda ev: ev["recipe"]["seed"])
    return dict(sorted(groups.items(), key=lambda kv: (*_defence_order(kv[0][0]), kv[0][1])))


def label(key: tuple[str, bool], md: bool = True) -> str:
    defence = f"`{key[0]}`" if md else key[0]
    return f"{defence}, own victim seeds" if key[1] else defence


def _defence_order(spec: str) -> tuple:
    d = parse_defence(spec)
    return ("dp_epsilon" in d, -d.get("dp_epsilon", 0.0), "augment" in d, spec)


def _check_comparable(evs: list[dict]) -> None:
    def key(ev: dict) -> dict:
        # through Recipe, so that a field newer than a run's recipe.json compares as its default
        rest = {k: v for k, v in Recipe(**ev["recipe"]).__dict__.items() if k not in SHARED}
        shown = {k: ev[k] for k in ("k", "n", "victims")} | {"guidance": ev.get("guidance", 1.0)}
        return rest | shown | {"arms": list(ev["arms"])}

    first = key(evs[0])
    for ev in evs[1:]:
        diff = sorted(k for k, v in key(ev).items() if first.get(k) != v)
        if diff:
            raise ValueError(f"{ev['root']} differs from {evs[0]['root']} in {', '.join(diff)}: report apart")


def render_many(roots: list[Path], plot: Path, doc_dir: Path) -> str:
    groups = group_by_defence(roots)
    ev0 = next(iter(groups.values()))[0]
    lines = [
        f"Runs: {len(roots)}, each {ev0['victims']} victims and {ev0['shadows']} shadows, "
        f"{_recipe_text(ev0['recipe'])}; {_kn_text(ev0)}. Intervals: Student t over the seeds' top-1.",
    ]
    for key, evs in groups.items():
        seeds = ", ".join(str(ev["recipe"]["seed"]) for ev in evs)
        one = "; one seed: the interval is its Wilson interval over the victims, not one over seeds"
        lines += [
            "",
            f"Defence {label(key)}, {_seeds(len(evs))} ({seeds}){one if len(evs) == 1 else ''}:",
            "",
        ]
        lines += [*arm_table(summarise(evs)), "", *seed_table(evs), "", utility_line(evs)]
    lines += ["", *defence_table(groups)]
    if write_plot(plot, groups, 1 / ev0["n"]):
        lines += ["", f"![leak against utility, per defence]({os.path.relpath(plot, doc_dir)})"]
    if UNDEFENDED in groups:
        lines += ["", "Undefended runs (`none`):", *verdict(summarise(groups[UNDEFENDED]), ev0["n"])]
    return "\n".join(lines)


def seed_table(evs: list[dict]) -> list[str]:
    """Per seed: the attack beside the oracle, the embedding's validation on that seed's victims, and
    the attack's conditioning spread (a collapsed encoder's is near 0, whatever the prompts' is)."""
    lines = [
        "| seed | attack top-1 (p) | oracle top-1 | embedding on the real views, top-1 "
        "| conditioning spread: attack / true prompts |",
        "|---|---|---|---|---|",
    ]
    for ev in evs:
        a, spread = ev["arms"]["attack"], ev.get("conditioning_spread")
        spread_text = f"{spread['attack']:.4f} / {spread['true prompt']:.4f}" if spread else "not recorded"
        lines.append(
            f"| {ev['recipe']['seed']} | {a['top1']:.2f} ({a['p_permutation']:.4f}) "
            f"| {ev['arms'][ORACLE]['top1']:.2f} | {ev['embedding_validation']['top1']:.2f} | {spread_text} |"
        )
    return lines


def defence_table(groups: dict[tuple[str, bool], list[dict]]) -> list[str]:
    lines = [
        "| defence | seeds | attack top-1 (mean, 95 %) | oracle top-1 (fidelity) | denoising gain (utility) "
        "| DP accounting |",
        "|---|---|---|---|---|---|",
    ]
    for key, evs in groups.items():
        s = summarise(evs)
        a, o = s["attack"], s[ORACLE]
        lines.append(
            f"| {label(key)} | {len(evs)} | {a.top1:.2f} ({a.ci[0]:.2f}-{a.ci[1]:.2f}) | {o.top1:.2f} "
            f"| {_gain_text(_gain(evs), len(evs))} | {dp_text(evs[0])} |"
        )
    if any(len(evs) == 1 for evs in groups.values()):
        lines += [
            "",
            "(A defence with one seed: its interval is that run's Wilson interval over the victims.)",
        ]
    return lines


def _gain_text(g: tuple[float, float, float] | None, seeds: int) -> str:
    if g is None:
        return "not measured"
    return f"{g[0]:.3f}" + (f" ({g[1]:.3f} to {g[2]:.3f})" if seeds > 1 else "")


def _seeds(n: int) -> str:
    return f"{n} seed" + ("s" if n > 1 else "")


def _gain(evs: list[dict]) -> tuple[float, float, float] | None:
    if any("utility" not in ev for ev in evs):
        return None
    g = [ev["utility"]["gain"] for ev in evs]
    return (float(np.mean(g)), *t_interval(g))


def dp_text(ev: dict) -> str:
    """The DP accounting of a run's victims, from its evaluation (or a victim's sidecar)."""
    dp = _defence_record(ev).get("dp")
    if dp is None:
        return "no DP"
    if not dp["noise_multiplier"]:
        return f"ε = ∞: clipping to C = {dp['clip_norm']:g}, no noise, no guarantee"
    return (
        f"ε = {dp['epsilon']:g}, δ = {dp['delta']:g}, σ = {dp['noise_multiplier']:.2f}, "
        f"C = {dp['clip_norm']:g}, q = {dp['sample_rate']:.2f}, {dp['steps']} steps "
        f"({dp['accountant']}, {dp['unit']})"
    )


def _defence_record(ev: dict) -> dict:
    if "defence_record" in ev:
        return ev["defence_record"]
    steps = ev["recipe"]["steps"]
    for sidecar in sorted(Path(ev["root"]).glob(f"loras/**/step-{steps:05d}.json")):
        recipe = json.loads(sidecar.read_text())["recipe"]
        return {k: recipe[k] for k in ("augment", "dp") if k in recipe}
    return {}


def write_plot(path: Path, groups: dict[tuple[str, bool], list[dict]], chance: float) -> bool:
    """Leak (attack top-1, 95 %) against utility (denoising gain) per defence; False if no utility."""
    from matplotlib.figure import Figure

    points = [(label(key, md=False), _gain(evs), summarise(evs)["attack"]) for key, evs in groups.items()]
    points = [(d, g, a) for d, g, a in points if g is not None]
    if not points:
        return False
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for name, (g, glo, ghi), a in points:
        text = f"{name} ({_seeds(a.seeds)})"
        ax.errorbar(g, a.top1, xerr=[[g - glo], [ghi - g]], yerr=[[a.top1 - a.ci[0]], [a.ci[1] - a.top1]],
                    fmt="o", capsize=3, label=text)  # fmt: skip
    ax.axhline(chance, ls="--", color="grey", label=f"chance (1/{round(1 / chance)})")
    ax.set_xlabel("utility: victim LoRA's denoising gain over the base (1 − victim/base)")
    ax.set_ylabel("leak: attack top-1 (95 %)")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=min([0.0] + [g[1] for _, g, _ in points]) - 0.005)  # from no gain: DP's is about 0
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("roots", type=Path, nargs="+")
    p.add_argument("--doc", type=Path, default=Path("docs/leak.md"))
    p.add_argument("--plot", type=Path, default=None, help="the defences' PNG (default: leak/defences.png)")
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        print(f"{args.doc}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    if len(args.roots) == 1:
        body = render(args.roots[0])
    else:
        plot = args.plot or args.doc.parent / "leak" / "defences.png"
        try:
            body = render_many(args.roots, plot, args.doc.parent)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    head, rest = text.split(BEGIN, 1)
    args.doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
