"""How alike are the LoRAs of a factory run? Cosines between whole weight updates ΔW.

For each micro-dataset and size: the cosine between that LoRA and the largest-size one, and its norm
relative to the smallest-size one; overall: the mean cosine of LoRAs of one concept at different \
sizes, and of LoRAs of
different concepts at one size. If a concept's LoRA barely turns as its dataset grows while every
LoRA shares a large common part, the weights hold little that a size estimator could use.

⟨B₁A₁, B₂A₂⟩_F = tr((B₁ᵀB₂)(A₂A₁ᵀ)) per layer, from r×r products: ΔW is never formed, so this
runs on SD1.5-sized LoRAs too. Reads the factory's snapshots (safetensors + JSON sidecar) only.

    .venv/bin/python scripts/lora_similarity.py runs/mini --config medium-tiny_sd-r8 [--step 1200]
        [--micro-datasets 'pool:photo-*'] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from lora_wise import read_lora
from lora_wise.factory.snapshots import finished_snapshots
from lora_wise.lora.weights import LoraWeights


def inner(x: LoraWeights, y: LoraWeights) -> float:
    """⟨ΔW_x, ΔW_y⟩_F summed over the low-rank layers both hold."""
    total = 0.0
    for name, lx in x.layers.items():
        ly = y.layers.get(name)
        if ly is None or not (lx.low_rank and ly.low_rank):
            continue
        bb = lx.up.T.astype(np.float64) @ ly.up.astype(np.float64)
        aa = ly.down.astype(np.float64) @ lx.down.T.astype(np.float64)
        total += lx.scale * ly.scale * float(np.trace(bb @ aa))
    return total


def similarity(files: dict[tuple[str, int], Path]) -> dict:
    keys = sorted(files)
    weights = {k: read_lora(files[k]) for k in keys}
    gram = {
        (a, b): inner(weights[a], weights[b]) for a, b in itertools.combinations_with_replacement(keys, 2)
    }

    def cos(a, b):
        ab = gram.get((a, b), gram.get((b, a)))
        return ab / np.sqrt(gram[(a, a)] * gram[(b, b)])

    concepts = sorted({c for c, _ in keys})
    rows = []
    for c in concepts:
        sizes = sorted(n for cc, n in keys if cc == c)
        small, large = (c, sizes[0]), (c, sizes[-1])
        rows.append({"micro_dataset": c, "sizes": sizes,
                     "cosine_to_largest": [cos((c, n), large) for n in sizes],
                     "norm_to_smallest": [float(np.sqrt(gram[((c, n), (c, n))] / gram[(small, small)]))
                                          for n in sizes]})  # fmt: skip
    same_concept = [cos(a, b) for a, b in itertools.combinations(keys, 2) if a[0] == b[0]]
    same_size = [cos(a, b) for a, b in itertools.combinations(keys, 2) if a[1] == b[1]]
    return {"models": len(keys), "concepts": rows,
            "same_concept_other_size": float(np.mean(same_concept)) if same_concept else None,
            "same_size_other_concept": float(np.mean(same_size)) if same_size else None}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a `lora-wise generate` output folder")
    parser.add_argument("--config", default=None, help="e.g. medium-tiny_sd-r8 (default: every config)")
    parser.add_argument("--step", type=int, default=1200)
    parser.add_argument("--micro-datasets", action="append", default=[], metavar="GLOB")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    files = finished_snapshots(args.folder, args.step, args.config, args.micro_datasets)
    if len(files) < 2:
        print(f"error: fewer than two snapshots at step {args.step} in {args.folder}", file=sys.stderr)
        return 2
    result = similarity(files)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{result['models']} LoRAs at step {args.step}; "
        "per size: cos(ΔW, the largest size's ΔW) / ‖ΔW‖ ÷ smallest size's"
    )
    for r in result["concepts"]:
        cells = "  ".join(
            f"{n}: {c:.2f}/{m:.2f}"
            for n, c, m in zip(r["sizes"], r["cosine_to_largest"], r["norm_to_smallest"], strict=True)
        )
        print(f"{r['micro_dataset']:<22} {cells}")
    for key in ("same_concept_other_size", "same_size_other_concept"):
        if result[key] is not None:
            print(f"mean cosine, {key.replace('_', ' ')}: {result[key]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
