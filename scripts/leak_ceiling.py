"""The leak's ceiling for a victim recipe, before any attack is trained: how well does each LoRA's own
UNet, under its TRUE prompt (the oracle arm of ``lora-wise leak evaluate``), make pictures that the fixed
embedding identifies among N candidates? No attack can do better through the conditioning, so this picks
a leak regime (learning rate, steps, guidance) the way scripts/pilot.py picks a benchmark's.

    python scripts/leak_ceiling.py runs/leak-v2/none-s0 --identities 40
    python scripts/leak_ceiling.py runs/leak-lr1e-3 --identities 20 --guidance 1,3,7
    python scripts/leak_ceiling.py runs/leak-v2/none-s0 --identities 10 --png docs/leak/ceiling-v2.png

It reads the first ``--identities`` identities of the run whose LoRA has its final snapshot (victims and
shadows alike: nothing here is trained on them) and prints, per guidance, top-1/top-5 of the true prompt,
of the class prompt without the trigger and of the base model under the true prompt, with permutation p,
and the LoRAs' utility (their denoising gain over the base model on their own views, as ``leak evaluate``
measures it). A run's first n identities are those of every run of the same seed with n or more (the
draw and the tokens are prefixes of one seeded sequence), so a defence's run of 40 identities compares
pair for pair with the first 40 of an undefended run of 250.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def ceiling(
    root: Path, identities: int, k: int, n: int, guidance: float, permutations: int, png: Path | None = None
) -> dict:
    from lora_wise.factory.backbones import load_backbone
    from lora_wise.leak import embedding as em
    from lora_wise.leak.identities import view_images
    from lora_wise.leak.run import generate_arm, open_run, score, utility
    from lora_wise.leak.victims import load_snapshot, steps_of

    run = open_run(root)
    bb = load_backbone(run.recipe.backbone)
    final = run.recipe.steps
    done = [i for i in run.identities if final in steps_of(run.root, run.jobs[i.key])][:identities]
    if len(done) < n:
        raise SystemExit(f"{root}: {len(done)} identities trained to step {final}, fewer than N = {n}")
    loras = [load_snapshot(run.root, run.jobs[i.key], final) for i in done]
    galleries = [em.embed(view_images(i)) for i in done]
    true = [bb.encode_prompt(i.prompt)[0][0] for i in done]
    arms = {  # arm -> (own LoRA or the base model, conditioning per identity)
        "true prompt (oracle)": (1, true),
        "class prompt, no trigger": (1, [bb.encode_prompt(done[0].class_prompt)[0][0]] * len(done)),
        "base model, true prompt": (0, true),
    }
    out = {}
    for arm, (own, cond) in arms.items():
        images = generate_arm(bb, loras, run.scale, own, cond, k, seed=0, guidance=guidance)
        r = score([em.embed(x) for x in images], galleries, n, permutations, 0)
        out[arm] = {key: r[key] for key in ("top1", "top5", "chance", "p_permutation")}
        if png is not None and arm == "true prompt (oracle)":
            write_rows(png, [view_images(i)[0] for i in done[:8]], images[:8])
    gain = utility(bb, done, loras, run.scale, torch.stack(true), seed=0)  # what the defence costs
    return {"root": str(root), "recipe": run.recipe.__dict__, "identities": len(done), "k": k, "n": n,
            "guidance": guidance, "arms": out, "utility_gain": gain["gain"]}  # fmt: skip


def write_rows(path: Path, real: list, images) -> None:
    """One row per identity: a real view | its LoRA's pictures under the true prompt."""
    import numpy as np
    from PIL import Image

    gap = np.full((64, 8, 3), 255, np.uint8)
    rows = [np.concatenate([r, gap, *imgs], axis=1) for r, imgs in zip(real, images, strict=True)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--identities", type=int, default=40)
    p.add_argument("--k", type=int, default=4, help="images per identity and arm")
    p.add_argument("--n", type=int, default=10, help="candidates per trial")
    p.add_argument("--guidance", default="1", help="comma-separated classifier-free guidance scales")
    p.add_argument("--permutations", type=int, default=500)
    p.add_argument("--png", type=Path, default=None, help="the oracle's pictures of the first 8 identities")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for g in (float(x) for x in args.guidance.split(",")):
        r = ceiling(args.root, args.identities, args.k, args.n, g, args.permutations, args.png)
        if args.json:
            print(json.dumps(r))
            continue
        rec = r["recipe"]
        print(f"{args.root}: lr {rec['learning_rate']:g}, {rec['steps']} steps, {r['identities']} "
              f"identities, K = {r['k']}, N = {r['n']}, guidance {g:g}")  # fmt: skip
        print(f"  utility: denoising gain over the base model {r['utility_gain']:.3f}")
        for arm, a in r["arms"].items():
            print(f"  {arm:26s} top-1 {a['top1']:.2f}  top-5 {a['top5']:.2f}  (chance {a['chance']:.2f})  "
                  f"p {a['p_permutation']:.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
