"""Regenerate the measured part of docs/leak.md from a leak run's evaluation.json and attack headers.

    python scripts/leak_report.py runs/leak-pilot --doc docs/leak.md

Replaces the text between the ``<!-- leak-report:begin -->`` and ``<!-- leak-report:end -->`` markers
of the document with the identification table, the attack's training summary and the verdict
against the issue's targets; the rest of the document is left as written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lora_wise.leak.encoder import load_encoder
from lora_wise.leak.identities import VENDORS
from lora_wise.leak.run import ATTACKS

BEGIN, END = "<!-- leak-report:begin -->", "<!-- leak-report:end -->"
ORACLE = "oracle (true prompt)"
DISPLAY = {"noto": "Noto", "twemoji": "Twemoji", "openmoji": "OpenMoji"}


def render(root: Path) -> str:
    ev = json.loads((root / "evaluation.json").read_text())
    rec, arms = ev["recipe"], ev["arms"]
    lines = [
        f"Run: {ev['victims']} victims, {ev['shadows']} shadows, backbone `{rec['backbone']}`, "
        f"rank {rec['rank']}, "
        f"{rec['steps']} steps, lr {rec['learning_rate']:g}, seed {rec['seed']}"
        + (f", defence `{rec['defence']}`" if rec.get("defence", "none") != "none" else "")
        + "; "
        f"K = {ev['k']} images per victim "
        f"and arm, N = {ev['n']} candidates (chance {1 / ev['n']:.2f}).",
        "",
        "| arm | top-1 | 95 % (Wilson) | top-5 | permutation p | null mean top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for arm, r in arms.items():
        lo, hi = r["top1_ci"]
        lines.append(
            f"| {arm} | {r['top1']:.2f} | {lo:.2f}-{hi:.2f} | {r['top5']:.2f} | {r['p_permutation']:.4f} "
            f"| {r['null_mean_top1']:.2f} |"
        )
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
    lines += _loss_lines(root)
    a = arms["attack"]
    others = {k: r["top1"] for k, r in arms.items() if k not in ("attack", ORACLE)}
    beaten = [k for k, t in others.items() if a["top1"] <= t]
    above = "yes" if not beaten else "NO, not above: " + ", ".join(beaten)
    lines += [
        "",
        "Against the issue's targets:",
        "",
        f"- top-1 ≥ 5× chance ({5 / ev['n']:.2f}): {'met' if a['top1'] >= 5 / ev['n'] else 'NOT met'} "
        f"(attack {a['top1']:.2f} = {a['top1'] * ev['n']:.1f}× chance);",
        f"- permutation null rejected at p < 0.01: {'yes' if a['p_permutation'] < 0.01 else 'NO'} "
        f"(p = {a['p_permutation']:.4f});",
        f"- above every baseline but the oracle: {above}.",
    ]
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--doc", type=Path, default=Path("docs/leak.md"))
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        print(f"{args.doc}: no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    args.doc.write_text(f"{head}{BEGIN}\n{render(args.root)}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
