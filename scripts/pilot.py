"""Pilot one regime: train a small grid, then say whether its LoRAs remember their images and count them.

    python scripts/pilot.py GRID --out runs/pilot-NAME [--step 1200] [--skip-train] [--json]

GRID is a grid YAML or a preset (e.g. ``pilot-emoji-v1``): about 10 concepts x the medium sizes
(1, 10, ..., 50), one arm = one regime. Training goes through the factory (resumable: rerun the same
command after a kill; finished jobs are skipped). Then, per arm, from the snapshots:

- the memorisation gap per size at ``--step`` (median over concepts of the loss gained on the LoRA's own
  images minus that on unseen images of its concept, as a share of the base loss;
  ``scripts/memorisation_gap.py``);
- ‖ΔW‖ per size relative to the same concept's 1-image LoRA, and the cosine of the 10- and the
  50-image ΔW (median over concepts; ``scripts/lora_similarity.py``);
- DSiRe, Frobenius-NN and GDA accuracy under the 5/5 protocol (5 train / 5 test concepts, 10 repeats
  seeded 42, as ``lora-wise evaluate OUT --n-train 5``) at every stored step, plus DSiRe's accuracy on the
  models of more than one image only ("right on 1 image, chance on the rest" alone gives 33 %;
  chance on 10-50 images is 20 %).

The figures go to ``OUT/pilot.json`` and are printed as markdown rows for docs/regimes.md.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("dsire", "frobenius-nn", "gda")


def _script(name: str) -> dict:
    """A sibling script's functions (its ``main`` is not run)."""
    return runpy.run_path(str(HERE / f"{name}.py"))


def train(grid: str, out: Path, group_size: int) -> dict:
    from lora_wise.factory.grid import load_grid
    from lora_wise.factory.runner import make_plan, run_plan

    plan = make_plan(load_grid(grid), out, group_size)
    return run_plan(plan, "inprocess", 1).as_dict()


def gaps(out: Path, step: int, images: int, draws: int) -> dict[int, float]:
    """Median memorisation gap per dataset size."""
    import torch

    from lora_wise.factory.backbones import load_backbone
    from lora_wise.factory.snapshots import finished_snapshots

    gap = _script("memorisation_gap")["gap"]
    rows = []
    for path in finished_snapshots(out, step).values():
        name = json.loads(path.with_suffix(".json").read_text())["backbone"]
        torch.set_num_threads(1)
        rows.append(gap(load_backbone(name), path, images, draws))
    return {
        n: float(np.median([r["gap"] for r in rows if r["size"] == n]))
        for n in sorted({r["size"] for r in rows})
    }


def norms_and_cosine(out: Path, step: int) -> dict:
    """Median over concepts of ‖ΔW‖ ÷ the 1-image ‖ΔW‖ per size and of cos(ΔW at 10, at 50)."""
    from lora_wise.factory.snapshots import finished_snapshots

    sim = _script("lora_similarity")["similarity"](finished_snapshots(out, step))
    sizes = sim["concepts"][0]["sizes"]
    rel = {
        n: float(np.median([c["norm_to_smallest"][i] for c in sim["concepts"]])) for i, n in enumerate(sizes)
    }
    cos = [c["cosine_to_largest"][c["sizes"].index(10)] for c in sim["concepts"] if 10 in c["sizes"]]
    return {
        "norm_rel": rel,
        "cos_10_50": float(np.median(cos)) if cos and sizes[-1] == 50 else None,
        "same_size_other_concept": sim["same_size_other_concept"],
    }


def protocol(out: Path, n_train: int) -> dict[int, dict]:
    """Per stored step: accuracy (mean, std) of each method, and DSiRe's on the models of > 1 image."""
    from lora_wise import evaluation as ev

    table = ev.table_from_factory(out)
    res = {}
    for step in sorted(np.unique(table.step).tolist()):
        row = {}
        for r in ev.evaluate(table, METHODS, step=step, n_train=n_train):
            row[r.method] = [round(r.accuracy[0], 1), round(r.accuracy[1], 1)]
            truth, pred = r.extra["predictions"]
            if r.method == "dsire":
                row["dsire_mae"] = round(r.mae[0], 2)
                row["dsire_above_1"] = round(float((pred[truth > 1] == truth[truth > 1]).mean() * 100), 1)
        res[int(step)] = row
    return res


def markdown(name: str, step: int, result: dict) -> str:
    p = result["protocol"]
    steps = ", ".join(f"{s}: {v['dsire'][0]:.0f}" for s, v in p.items())
    at = p[step]
    gap = ", ".join(f"{v:.3f}" for v in result["gap"].values())
    rel = ", ".join(f"{v:.2f}" for n, v in result["norms"]["norm_rel"].items() if n != 1)
    cos = result["norms"]["cos_10_50"]
    cos = "n/a" if cos is None else f"{cos:.2f}"
    return (
        f"| {name} | {at['dsire'][0]:.0f} ± {at['dsire'][1]:.0f} | {at['frobenius-nn'][0]:.0f} ± "
        f"{at['frobenius-nn'][1]:.0f} | {at['gda'][0]:.0f} ± {at['gda'][1]:.0f} | "
        f"{at['dsire_above_1']:.0f} | "
        f"{gap} | {rel} | {cos} | {steps} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("grid", help="a grid YAML or a preset name (lora_wise/data/grids)")
    ap.add_argument("--out", type=Path, required=True, help="the arm's factory folder")
    ap.add_argument(
        "--step", type=int, default=None, help="step of the gap/norm figures (default: last stored)"
    )
    ap.add_argument("--n-train", type=int, default=5, help="training concepts per repeat (the rest test)")
    ap.add_argument("--images", type=int, default=16, help="images per set for the gap")
    ap.add_argument("--draws", type=int, default=16, help="noise draws per image for the gap")
    ap.add_argument("--group-size", type=int, default=60, help="LoRAs trained in one batched pass")
    ap.add_argument("--skip-train", action="store_true", help="only measure what is in --out")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    result: dict = {"grid": args.grid}
    if not args.skip_train:
        result["training"] = train(args.grid, args.out, args.group_size)
    result["protocol"] = protocol(args.out, args.n_train)
    step = args.step or max(result["protocol"])
    result["step"] = step
    result["gap"] = gaps(args.out, step, args.images, args.draws)
    result["norms"] = norms_and_cosine(args.out, step)
    (args.out / "pilot.json").write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        "| arm (step) | DSiRe | Frobenius-NN | GDA | DSiRe on >1 image | gap per size | ‖ΔW‖ ÷ 1 image "
        "| cos(10, 50) | DSiRe by step |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(markdown(f"{Path(args.grid).stem} ({step})", step, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
