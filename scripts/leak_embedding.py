"""Validate the leak's fixed image embedding on REAL views only, before any attack output is looked at.

    python scripts/leak_embedding.py --identities 50 --n 10 --trials 20
    python scripts/leak_embedding.py --identities 50 --n 10 --trials 20 --vendors noto,openmoji  # v2's

Query: an identity's second-vendor view (Twemoji, or OpenMoji with ``--vendors noto,openmoji``);
gallery: each candidate's Noto-derived views (the original and two mild variations); N candidates per
trial (the identity and N-1 others drawn at random). Also reports the colour histogram alone, to show
what the HOG half contributes.
"""

from __future__ import annotations

import argparse
import json
import sys

from lora_wise.leak import embedding as em
from lora_wise.leak.identities import VENDORS, build_identities, parse_vendors, view_images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument(
        "--vendors",
        type=parse_vendors,
        default=",".join(VENDORS),
        help=f"the identities' two vendors (default {','.join(VENDORS)}; tiny-sd-v2's: noto,openmoji)",
    )
    args = p.parse_args(argv)
    identities = build_identities(args.identities, seed=args.seed, vendors=args.vendors)
    views = [view_images(i) for i in identities]
    rows = {}
    for name, weight in (
        ("colour histogram + HOG (the embedding)", em.HOG_WEIGHT),
        ("colour histogram alone", 0.0),
    ):
        saved, em.HOG_WEIGHT = em.HOG_WEIGHT, weight
        try:
            r = em.validate_embedding(views, n=args.n, trials=args.trials, seed=args.seed)
        finally:
            em.HOG_WEIGHT = saved
        trials = len(r.ranks)
        rows[name] = {
            "top1": r.top(1),
            "top1_ci": em.wilson(r.top(1), trials),
            "top5": r.top(5),
            "chance": r.chance,
            "trials": trials,
        }
    out = {"identities": args.identities, "vendors": list(args.vendors), "n": args.n, "results": rows}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
