"""Train the identities' DreamBooth-LoRAs (victims and shadows) of a leak run; resumable.

    python scripts/leak_pilot.py runs/leak-pilot --identities 50 --steps 400 --lr 1e-3
    python scripts/leak_pilot.py runs/leak-v2 --backbone tiny-sd-v2 --identities 250 --lr 3e-4 --workers 2
    python scripts/leak_pilot.py runs/leak-dp10 --identities 50 --steps 400 --lr 1e-3 --defence dp:10

``--defence`` (none, flip, dp:EPS, or a mix such as ``flip,dp:10``) trains victims and shadows under
that defence; give each defence its own folder (a folder's recipe.json holds one, and a folder resumes
only under the recipe it was started with). ``--victim-seeds`` trains every victim with its own seed
(LoRA init, noise, timesteps, DP noise) instead of the run's, which the shadows keep: the victims' noise
is then independent of the attacker's shadows', as a real victim's would be.
``--vendors`` (e.g. ``noto,openmoji``) picks the identities' two artwork vendors; by default the
backbone's: ``noto,twemoji`` on tiny-sd, ``noto,openmoji`` on tiny-sd-v2 (pre-trained on Twemoji).

Writes ``<out>/identities.json``, ``<out>/identities/<key>/`` (the views) and ``<out>/loras/``
(factory snapshots). Run it again to resume after a kill: finished groups are skipped.
Then ``lora-wise leak train <out>`` and ``lora-wise leak evaluate <out>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from lora_wise.factory.defences import parse_defence
from lora_wise.leak.identities import parse_vendors
from lora_wise.leak.run import create_run
from lora_wise.leak.victims import Recipe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--identities", type=int, default=50)
    p.add_argument("--seed", type=int, default=0, help="identity draw/split and training seed")
    p.add_argument("--backbone", default="tiny-sd")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--snapshot-every", type=int, default=None)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--group-size", type=int, default=25)
    p.add_argument("--workers", type=int, default=1, help="training processes, one torch thread each")
    p.add_argument(
        "--defence",
        type=_arg_type(parse_defence, keep_spec=True),  # recipe.json keeps the spec
        default="none",
        help="none (default), flip, dp:EPS (dp:inf: clipping only) or a mix such as flip,dp:10",
    )
    p.add_argument(
        "--vendors",
        type=_arg_type(parse_vendors),
        default=None,
        help="the identities' two artwork vendors, e.g. noto,openmoji (default: the backbone's)",
    )
    p.add_argument(
        "--victim-seeds",
        action="store_true",
        help="train each victim with its own seed (from --seed and its key); the shadows keep --seed",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # docs/factory.md: the tiny UNet is fastest single-threaded
    recipe = Recipe(
        backbone=args.backbone,
        steps=args.steps,
        snapshot_every=args.snapshot_every or max(1, args.steps // 4),
        learning_rate=args.lr,
        seed=args.seed,
        group_size=args.group_size,
        defence=args.defence,
        vendors=args.vendors,
        victim_seeds=args.victim_seeds,
    )
    t0 = time.time()
    run = create_run(args.out, args.identities, recipe, seed=args.seed, workers=args.workers)
    print(f"{len(run.jobs)} LoRAs x {recipe.steps} steps in {time.time() - t0:.0f} s", flush=True)
    return 0


def _arg_type(parse, keep_spec: bool = False):
    """An argparse type from a parser that raises ValueError: its message becomes the usage error."""

    def convert(spec: str):
        try:
            parsed = parse(spec)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return spec if keep_spec else parsed

    return convert


if __name__ == "__main__":
    sys.exit(main())
