"""Does a LoRA remember its own images? Denoising loss on its training images against unseen ones.

For each snapshot of a factory folder at ``--step``: the backbone's denoising MSE with the LoRA
merged in and without it, on up to ``--images`` of the images the LoRA was trained on (its
sidecar's ``image_ids``) and as many images of the same micro-dataset it never saw, with the same
noise, VAE samples and timesteps for every set. What the LoRA gained on its own images beyond
what it gained on unseen ones (as a share of the base loss) is the memorisation gap. If a
backbone stops memorising after a few images, its weights cannot count the images beyond that.

    .venv/bin/python scripts/memorisation_gap.py runs/diversity [--step 1200]
        [--micro-datasets 'pool:face'] [--images 16] [--draws 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from lora_wise import read_lora
from lora_wise.factory.backbones import DiffusionBackbone, load_backbone
from lora_wise.factory.micro_datasets import open_micro_dataset
from lora_wise.factory.snapshots import finished_snapshots


@contextmanager
def merged(bb: DiffusionBackbone, lora_path: Path):
    """The UNet with scale·B·A added to each targeted weight, restored afterwards."""
    modules = dict(bb.unet.named_modules())
    saved = {}
    for name, layer in read_lora(lora_path).layers.items():
        module = modules[name.removeprefix("unet.")]
        saved[module] = module.weight.data.clone()
        module.weight.data += torch.from_numpy(layer.scale * layer.up @ layer.down).to(module.weight.dtype)
    try:
        yield bb
    finally:
        for module, weight in saved.items():
            module.weight.data = weight


@torch.no_grad()
def denoising_loss(bb: DiffusionBackbone, pixels: torch.Tensor, prompt: str, draws: int) -> float:
    """Mean MSE of the noise prediction over ``draws`` seeded draws per image (seed 0: the same
    draws for every set and model)."""
    mean, std = bb.encode_images(pixels)
    embeds, _ = bb.encode_prompt(prompt)
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for _ in range(draws):
        z = (mean + std * torch.randn(mean.shape, generator=gen)) * bb.scaling_factor
        eps = torch.randn(mean.shape, generator=gen)
        t = torch.randint(0, bb.scheduler.config.num_train_timesteps, (len(mean),), generator=gen)
        pred = bb.unet(bb.scheduler.add_noise(z, eps, t), t, embeds.expand(len(mean), -1, -1)).sample
        total += float((pred.float() - eps).pow(2).mean())
    return total / draws


def gap(bb: DiffusionBackbone, lora: Path, images: int, draws: int) -> dict:
    meta = json.loads(lora.with_suffix(".json").read_text())
    md = open_micro_dataset(meta["micro_dataset"])
    trained = list(meta["image_ids"])
    unseen = [i for i in md.ids if i not in set(trained)]
    k = min(images, len(trained), len(unseen))
    sets = {"train": trained[:k], "unseen": unseen[:k]}
    pixels = {name: torch.from_numpy(md.load(ids, bb.resolution)) for name, ids in sets.items()}
    base = {name: denoising_loss(bb, p, md.instance_prompt, draws) for name, p in pixels.items()}
    with merged(bb, lora):
        tuned = {name: denoising_loss(bb, p, md.instance_prompt, draws) for name, p in pixels.items()}
    gain = {name: (base[name] - tuned[name]) / base[name] for name in sets}
    return {"micro_dataset": meta["micro_dataset"], "size": meta["dataset_size"], "images": k,
            "gain_train": gain["train"], "gain_unseen": gain["unseen"],
            "gap": gain["train"] - gain["unseen"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a `lora-wise generate` output folder")
    parser.add_argument("--config", default=None)
    parser.add_argument("--step", type=int, default=1200)
    parser.add_argument("--micro-datasets", action="append", default=[], metavar="GLOB")
    parser.add_argument("--images", type=int, default=16, help="images per set (train, unseen)")
    parser.add_argument("--draws", type=int, default=16, help="noise draws per image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    files = finished_snapshots(args.folder, args.step, args.config, args.micro_datasets)
    if not files:
        print(f"error: no snapshot at step {args.step} in {args.folder}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    backbones: dict[str, DiffusionBackbone] = {}
    rows = []
    for path in files.values():
        name = json.loads(path.with_suffix(".json").read_text())["backbone"]
        bb = backbones.setdefault(name, load_backbone(name))
        rows.append(gap(bb, path, args.images, args.draws))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"loss gained by the LoRA (share of the base model's loss), step {args.step}")
    print(
        f"{'micro-dataset':<22} {'size':>4} {'images':>6} {'on its images':>14} {'on unseen':>10} {'gap':>7}"
    )
    for r in rows:
        print(
            f"{r['micro_dataset']:<22} {r['size']:>4} {r['images']:>6} {r['gain_train']:>14.3f} "
            f"{r['gain_unseen']:>10.3f} {r['gap']:>7.3f}"
        )
    sizes = sorted({r["size"] for r in rows})
    print(
        "median gap by size: "
        + ", ".join(f"{n}: {np.median([r['gap'] for r in rows if r['size'] == n]):.3f}" for n in sizes)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
